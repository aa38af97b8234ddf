"""Feature pyramid network producing any contiguous range of P1..P7."""
from __future__ import annotations

import keras
from keras import ops


def _repeat_twice(x, axis: int):
    """``ops.repeat(x, 2, axis)`` (each element next to its copy) without a Tile op.

    ``tf.repeat`` tiles, and TensorFlow's gradient of Tile transposes an int32 shape tensor
    (``transpose(stack([multiples, input_shape]))``). With dynamic spatial sizes that Transpose
    survives constant folding; oneDNN's graph rewrite (MklLayoutRewritePass) then finds int32,
    which ``_MklTranspose`` does not take, and logs once per process, at the first train step of
    every run, ``E0000 ... util.cc:131] oneDNN supports DT_INT32 only on platforms with AVX-512.
    Falling back to the default Eigen-based implementation`` (ERROR severity, so
    TF_CPP_MIN_LOG_LEVEL=2 shows it; misleading too: the op simply runs in Eigen, with or without
    AVX-512). Broadcasting a new size-2 axis and merging it gives the same values, and its
    gradient (a reduce_sum over that axis, as in Tile's gradient) the same sums in the same
    order: bit-identical outputs and gradients (tests/test_modeling.py), no int32 Transpose
    (tests/test_quiet_logs.py checks a CLI run's stderr).
    """
    shape = ops.shape(x)
    doubled = ops.broadcast_to(ops.expand_dims(x, axis + 1), (*shape[: axis + 1], 2, *shape[axis + 1 :]))
    return ops.reshape(doubled, (*shape[:axis], -1, *shape[axis + 1 :]))


def _upsample_to(x, like):
    """Nearest 2x upsampling of x [B, h, w, C], cropped to the spatial size of ``like``."""
    up = _repeat_twice(_repeat_twice(x, 1), 2)
    shape = ops.shape(like)
    return up[:, : shape[1], : shape[2], :]


def fpn_initializer(name: str) -> keras.initializers.Initializer:
    """Kernel initializer of the FPN convs (biases start at zero).

    ``c2_xavier``: Detectron2's c2_xavier_fill = kaiming_uniform(a=1), uniform in
    +-sqrt(3 / fan_in) (Keras LecunUniform). ``he_uniform``: +-sqrt(6 / fan_in).
    """
    if name == "c2_xavier":
        return keras.initializers.LecunUniform()
    if name == "he_uniform":
        return keras.initializers.HeUniform()
    raise ValueError(f"unknown FPN init '{name}': choose c2_xavier or he_uniform")


class FeaturePyramid(keras.layers.Layer):
    """FPN over C1..C5 with P6 = conv3x3/2(C5) and P7 = conv3x3/2(ReLU(P6)).

    Builds lateral (1x1) and output (3x3) convs for levels ``min_level``..5. ``call`` computes
    only the levels it is asked for: a high-resolution pass reading P3..P7 never computes P2.

    Args:
      channels: output channels of every level.
      min_level: lowest level that can be requested (2 for k = 2, 1 for k = 4).
      in_channels: channels of C1..C5, used to build all weights up front.
      init: kernel initializer name (``fpn_initializer``).
    """

    def __init__(self, channels: int = 256, min_level: int = 2, in_channels=None, init: str = "c2_xavier",
                 **kwargs):
        super().__init__(**kwargs)
        if not 1 <= min_level <= 5:
            raise ValueError(f"min_level {min_level} must be in 1..5")
        self.channels = channels
        self.min_level = min_level
        self.in_channels = tuple(in_channels) if in_channels is not None else None
        self.init = init
        init = fpn_initializer(init)
        self.lateral = {
            level: keras.layers.Conv2D(channels, 1, kernel_initializer=init, name=f"lateral_p{level}")
            for level in range(min_level, 6)
        }
        self.output_conv = {
            level: keras.layers.Conv2D(
                channels, 3, padding="same", kernel_initializer=init, name=f"output_p{level}"
            )
            for level in range(min_level, 6)
        }
        # P6 and P7 compute in float32 under every policy (see ``_to_compute_dtype``)
        self.p6 = keras.layers.Conv2D(
            channels, 3, strides=2, padding="same", kernel_initializer=init, name="p6", dtype="float32"
        )
        self.p7 = keras.layers.Conv2D(
            channels, 3, strides=2, padding="same", kernel_initializer=init, name="p7", dtype="float32"
        )

    def build(self, input_shape=None):
        if self.in_channels is not None:
            for level in range(self.min_level, 6):
                self.lateral[level].build((None, None, None, self.in_channels[level - 1]))
                self.output_conv[level].build((None, None, None, self.channels))
            self.p6.build((None, None, None, self.in_channels[4]))
            self.p7.build((None, None, None, self.channels))
        self.built = True

    def call(self, features, levels):
        """features: [C1..C5] -> list of P_l [B, ceil(H / 2^l), ceil(W / 2^l), channels] for ``levels``."""
        levels = tuple(levels)
        low, high = min(levels), max(levels)
        if low < self.min_level:
            raise ValueError(f"level P{low} requested, but this FPN was built from P{self.min_level}")
        if levels != tuple(range(low, high + 1)):
            raise ValueError(f"levels {levels} must be contiguous")
        outputs = {}
        inner = None
        for level in range(5, low - 1, -1):
            lateral = self.lateral[level](features[level - 1])
            inner = lateral if inner is None else lateral + _upsample_to(inner, lateral)
            if level <= high:
                outputs[level] = self.output_conv[level](inner)
        if high >= 6:
            p6 = self.p6(features[4])
            outputs[6] = self._to_compute_dtype(p6)
            if high >= 7:
                outputs[7] = self._to_compute_dtype(self.p7(ops.relu(p6)))
        return [outputs[level] for level in levels]

    def _to_compute_dtype(self, output):
        """The output of the float32 P6 / P7 conv in this layer's compute dtype.

        The P6 and P7 convs (3x3, stride 2, SAME) read the coarsest maps: P7 reads a 1x1 P6 for
        inputs of at most 64 px (the low branch of vanilla multi-scale training at 128 px), P6 a
        1x1 C5 at most 32 px. For an input narrower than the stride, oneDNN's bfloat16 weight
        gradient of a SAME conv (TensorFlow 2.21 CPU, ``brgconv_bwd_w`` on AVX512-BF16 and AMX)
        returns garbage in some of the kernel taps that see only padding: 1e10..1e36 or NaN, in some
        calls and not in others. mixed_bfloat16 training diverged within ten steps from it.
        The float32 kernel is right; these two convs run on a few pixels, so float32 costs
        little, and under a float32 policy nothing changes (tests/test_mixed_precision.py).
        """
        return output if output.dtype == self.compute_dtype else ops.cast(output, self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels, min_level=self.min_level, in_channels=self.in_channels, init=self.init
        )
        return config
