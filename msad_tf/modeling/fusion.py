"""Crossing feature-level fusion (C-FF, paper section 3.2) and the ablation variants of Table 2.

For an aligned pair of pyramid maps, P_s from the high-resolution input and P'_{s-m} from its
stride-k subsample (same spatial size), C-FF predicts input-dependent fusion scores

    P^p_s = GAP([P_s, P'_{s-m}])                       [B, 2C]        (eq. 3)
    h_s   = softmax(FC_2(ReLU(FC_{2C/r}(P^p_s))))      [B, 2]
    P^T_s = h_s{0} * P_s + h_s{1} * P'_{s-m}           [B, h, w, C]   (eq. 4)

with bias-free FC layers (authors' code). Variants (``mode``):

  cff      the module above (softmax: the two resolutions compete, weights sum to 1).
  sigmoid  SE-style: sigmoid instead of softmax, each weight in (0, 1) independently.
  channel  channel-wise C-FF: the second FC has 2C outputs, softmax over the pair for each
           channel; weights [B, 2, C].
  sc_sum   static: separately convolved maps summed, conv3x3(P_s) + conv3x3'(P'_{s-m}).
  cc       static: conv3x3 on the concatenation [P_s, P'_{s-m}] -> C channels.

The static variants have no input-dependent weights; they report constant equal weights
(0.5, 0.5) of shape [B, 2], so every mode returns a (fused, weights) pair whose
``weights[:, 1]`` is "the share of the low-resolution branch".
"""
from __future__ import annotations

import keras
from keras import ops

FUSION_MODES = ("cff", "sigmoid", "channel", "sc_sum", "cc")
DYNAMIC_MODES = ("cff", "sigmoid", "channel")


class CrossFeatureFusion(keras.layers.Layer):
    """Fusion of one aligned pair of pyramid maps.

    Args:
      mode: one of ``FUSION_MODES`` (see module docstring).
      reduction: channel compression ratio r; the hidden FC has max(2C // r, 1) units.
      channels: C, if known at construction (lets ``build()`` run without input shapes).
    Call:
      inputs: (P_s [B, h, w, C] from the high-res input, P'_{s-m} [B, h, w, C] from the
        low-res input).
    Returns:
      (fused [B, h, w, C], weights): weights [B, 2] for cff/sigmoid/sc_sum/cc (index 0: P_s,
      index 1: P'_{s-m}), [B, 2, C] for channel.
    """

    def __init__(self, mode: str = "cff", reduction: int = 16, channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode '{mode}': choose one of {', '.join(FUSION_MODES)}")
        if reduction < 1:
            raise ValueError(f"fusion reduction {reduction} must be >= 1")
        self.mode = mode
        self.reduction = int(reduction)
        self.channels = None if channels is None else int(channels)

    @property
    def input_dependent(self) -> bool:
        """Whether the weights depend on the input (cff, sigmoid, channel)."""
        return self.mode in DYNAMIC_MODES

    def build(self, input_shape=None):
        channels = self.channels
        if channels is None:
            if input_shape is None:
                raise ValueError("CrossFeatureFusion needs `channels` or input shapes to build")
            channels = int(input_shape[0][-1])
            self.channels = channels
        pair = (None, None, None, channels)
        if self.input_dependent:
            hidden = max(2 * channels // self.reduction, 1)
            outputs = 2 * channels if self.mode == "channel" else 2
            self.fc1 = keras.layers.Dense(hidden, use_bias=False, name="fc1")
            self.fc2 = keras.layers.Dense(outputs, use_bias=False, name="fc2")
            self.fc1.build((None, 2 * channels))
            self.fc2.build((None, hidden))
        elif self.mode == "sc_sum":
            self.conv_high = keras.layers.Conv2D(channels, 3, padding="same", name="conv_high")
            self.conv_low = keras.layers.Conv2D(channels, 3, padding="same", name="conv_low")
            self.conv_high.build(pair)
            self.conv_low.build(pair)
        else:
            self.conv = keras.layers.Conv2D(channels, 3, padding="same", name="conv")
            self.conv.build((None, None, None, 2 * channels))
        self.built = True

    def fusion_scores(self, high, low):
        """MLP H on the pooled pair: [B, 2] (cff, sigmoid) or [B, 2, C] (channel)."""
        pooled = ops.concatenate([ops.mean(high, axis=(1, 2)), ops.mean(low, axis=(1, 2))], axis=-1)
        logits = self.fc2(ops.relu(self.fc1(pooled)))
        if self.mode == "sigmoid":
            return ops.sigmoid(logits)
        if self.mode == "channel":
            logits = ops.reshape(logits, (-1, 2, self.channels))
            return ops.softmax(logits, axis=1)
        return ops.softmax(logits, axis=-1)

    def call(self, inputs):
        high, low = inputs
        if self.input_dependent:
            weights = self.fusion_scores(high, low)
            if self.mode == "channel":
                h0, h1 = weights[:, 0, None, None, :], weights[:, 1, None, None, :]
            else:
                h0, h1 = weights[:, 0, None, None, None], weights[:, 1, None, None, None]
            return h0 * high + h1 * low, weights
        if self.mode == "sc_sum":
            fused = self.conv_high(high) + self.conv_low(low)
        else:
            fused = self.conv(ops.concatenate([high, low], axis=-1))
        weights = ops.full((ops.shape(high)[0], 2), 0.5, dtype=fused.dtype)
        return fused, weights

    def compute_output_spec(self, inputs):
        high = inputs[0]
        batch = high.shape[0]
        shape = (batch, 2, high.shape[-1]) if self.mode == "channel" else (batch, 2)
        return (
            keras.KerasTensor(high.shape, dtype=self.compute_dtype),
            keras.KerasTensor(shape, dtype=self.compute_dtype),
        )

    def get_config(self):
        config = super().get_config()
        config.update(mode=self.mode, reduction=self.reduction, channels=self.channels)
        return config


class PyramidFusion(keras.layers.Layer):
    """C-FF (or a variant) over all aligned pyramid levels.

    ``shared=True`` (default, as in the authors' code) applies ONE ``CrossFeatureFusion`` to
    every level; ``shared=False`` gives each level its own module.

    Args:
      mode, reduction: as in ``CrossFeatureFusion``.
      shared: one module for all levels, or one per level.
      num_levels: number of aligned pairs (5 for P3..P7).
      channels: C of every level (lets ``build()`` run without input shapes).
    Call:
      inputs: (high, low), each a list of num_levels maps; high[i] = P_s [B, h_i, w_i, C],
        low[i] = P'_{s-m} of the same size.
    Returns:
      (fused, weights): lists over levels of P^T_s [B, h_i, w_i, C] and of the weights of that
      level ([B, 2], or [B, 2, C] for mode channel).
    """

    def __init__(
        self,
        mode: str = "cff",
        reduction: int = 16,
        shared: bool = True,
        num_levels: int = 5,
        channels: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.mode = mode
        self.reduction = int(reduction)
        self.shared = bool(shared)
        self.num_levels = int(num_levels)
        self.channels = None if channels is None else int(channels)
        count = 1 if self.shared else self.num_levels
        self.fusion_modules = [
            CrossFeatureFusion(
                mode, reduction, channels, name=mode if self.shared else f"{mode}_{i}"
            )
            for i in range(count)
        ]

    def module_for(self, level: int) -> CrossFeatureFusion:
        """The module fusing pair ``level`` (0-based index into the level list)."""
        return self.fusion_modules[0 if self.shared else level]

    def build(self, input_shape=None):
        channels = self.channels
        if channels is None:
            if input_shape is None:
                raise ValueError("PyramidFusion needs `channels` or input shapes to build")
            channels = int(input_shape[0][0][-1])
            self.channels = channels
        pair = [(None, None, None, channels)] * 2
        for module in self.fusion_modules:
            if not module.built:
                module.build(pair)
        self.built = True

    def call(self, inputs):
        high, low = inputs
        if len(high) != self.num_levels or len(low) != self.num_levels:
            raise ValueError(
                f"PyramidFusion built for {self.num_levels} levels, got {len(high)} high and "
                f"{len(low)} low maps"
            )
        fused, weights = [], []
        for i, (p_high, p_low) in enumerate(zip(high, low)):
            out, w = self.module_for(i)((p_high, p_low))
            fused.append(out)
            weights.append(w)
        return fused, weights

    def compute_output_spec(self, inputs):
        high, low = inputs
        specs = [
            self.module_for(i).compute_output_spec(pair) for i, pair in enumerate(zip(high, low))
        ]
        return [s[0] for s in specs], [s[1] for s in specs]

    def get_config(self):
        config = super().get_config()
        config.update(
            mode=self.mode,
            reduction=self.reduction,
            shared=self.shared,
            num_levels=self.num_levels,
            channels=self.channels,
        )
        return config
