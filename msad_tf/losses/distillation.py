"""Distillation losses between a teacher pyramid and a student pyramid, selectable by name.

Every loss is a ``keras.layers.Layer`` called as

    loss_layer(teacher_features, student_features, *, teacher_outputs=None,
               student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None)

teacher_features / student_features: lists over levels of [B, h_i, w_i, C] maps. The teacher is
always wrapped in ``tf.stop_gradient``. teacher_outputs / student_outputs: lists over levels of
head output dicts (cls_logits [B, h, w, K], box_reg [B, h, w, 4], centerness [B, h, w]); only
``output_kd`` reads them. boxes [B, N, 4] ([ymin, xmin, ymax, xmax] in the pixel frame of the
teacher's high-resolution input, zero padded), classes [B, N] (-1 padding), strides (teacher
level strides in that frame) and image_shape ((H, W) of that frame) are read by ``fgfi`` and
``msad_l1_fg`` only.

Level pairing (``aligned``, MSAD paper 3.3 and Table 3a):
  aligned=True: student level i (P'_{s-m}) has the spatial size of teacher level i (P_s) and is
    compared with it directly (a static size mismatch is an error).
  aligned=False ("not aligned"): the student reads the normal P3..P7 of its low-resolution input,
    so its maps are k times smaller; teacher maps (and teacher logits) are resized to the
    student's size with ``tf.image.resize(method=resize_method)`` before the loss ("bilinear" by
    default; "area" is average pooling for integer ratios).

Normalisation (tf.distribute): every loss is computed on the local batch. Quantities that are
batch means divide the LOCAL sum by the GLOBAL count (batch size, number of mask locations), the
global count being the all-reduced sum of the local counts over the replicas in sync
(``msad_tf.losses.fcos.global_sum``). Summing the per-replica values over the replicas, which is
what tf.distribute does with the gradients, therefore gives the loss of the global batch, and a
single-device call gives exactly the plain formula. Losses are returned unweighted by the
caller's gamma (L_S = gamma * L_KD + (1 - gamma) * L_det is applied by the Distiller).

Layers with trainable weights (adapters, non-local blocks) set ``training_only = True``: they
exist only to compute the loss, are built in ``__init__`` so that their variables exist before
the first train step, and are never part of an exported model.

This module holds the base class ``DistillationLoss``, the helpers the loss families share, the
registry ``DISTILLATION_LOSSES`` and ``build_distillation_loss``. Each family lives in its own
module and adds its classes to the registry with ``@register(name)``:

  ``msad_tf.losses.feature_kd``  msad_l1, msad_l1_norm, msad_l1_fg, mse (feature L1 / MSE)
  ``msad_tf.losses.output_kd``   output_kd (Hinton KD on the classification logits)
  ``msad_tf.losses.fgfi``        fgfi (fine-grained feature imitation)
  ``msad_tf.losses.podnet``      podnet (pooled outputs distillation, spatial)
  ``msad_tf.losses.skd``         skd, skd_paper (structured knowledge distillation)

They are imported, in this order, at the end of this module, and ``msad_tf/losses/__init__.py``
imports this module, so the registry holds every loss in this order whichever module of the
package is imported first.
"""
from __future__ import annotations

import inspect

import keras
import numpy as np
import tensorflow as tf

from msad_tf.losses.fcos import global_sum

_PACKAGE = "msad_tf"


def global_counts(*values):
    """[len(values)] float32 sums over the replicas in sync of per-replica scalar counts.

    One all-reduce for all counts, so every replica issues the same collectives in the same order.
    """
    local = tf.stack([tf.cast(v, tf.float32) for v in values])
    return global_sum(local)


def _safe_sqrt(x):
    """sqrt(x) for x >= 0, with gradient 0 (not NaN) where x == 0."""
    positive = x > 0
    return tf.where(positive, tf.sqrt(tf.where(positive, x, tf.ones_like(x))), tf.zeros_like(x))


def _spatial_size(x):
    shape = tf.shape(x)
    return shape[1], shape[2]


def _identity_kernel(kernel_size: int, in_channels: int, out_channels: int):
    """[k, k, in, out] kernel that copies channel c to channel c at the centre tap."""
    kernel = np.zeros((kernel_size, kernel_size, in_channels, out_channels), np.float32)
    centre = kernel_size // 2
    kernel[centre, centre] = np.eye(in_channels, out_channels, dtype=np.float32)
    return kernel


def _built_conv(filters, kernel_size, in_channels, adapter_init, name):
    """Conv2D adapter built for ``in_channels``; ``adapter_init='identity'`` starts it as the identity."""
    identity = adapter_init == "identity"
    layer = keras.layers.Conv2D(
        filters,
        kernel_size,
        padding="same",
        kernel_initializer="zeros" if identity else adapter_init,
        name=name,
        dtype="float32",
    )
    layer.build((None, None, None, in_channels))
    if identity:
        layer.kernel.assign(_identity_kernel(kernel_size, in_channels, filters))
    return layer


def _built_dense(units, in_units, adapter_init, name):
    identity = adapter_init == "identity"
    layer = keras.layers.Dense(
        units, kernel_initializer="zeros" if identity else adapter_init, name=name, dtype="float32"
    )
    layer.build((None, in_units))
    if identity:
        layer.kernel.assign(np.eye(in_units, units, dtype=np.float32))
    return layer


def box_mask(boxes, classes, height, width, stride_y, stride_x, expand: float = 1.0):
    """FGFI imitation mask for anchor-free detectors: cells whose centre lies in a gt box.

    Shared by ``fgfi`` (its imitation mask) and ``msad_l1_fg`` (its foreground cells).

    Args:
      boxes: [B, N, 4] [ymin, xmin, ymax, xmax] in the teacher frame, zero padded.
      classes: [B, N] (-1 padding) or None (then only boxes of positive area are valid).
      height, width: map size h, w.
      stride_y, stride_x: cell size of this map in the teacher frame.
      expand: boxes are scaled by this factor about their centre before the test.
    Returns:
      [B, h, w] float32, 1 where the cell centre (i * stride + floor(stride / 2), the FCOS
      location convention) satisfies ymin <= y <= ymax and xmin <= x <= xmax for a valid box.
    """
    boxes = tf.cast(boxes, tf.float32)
    stride_y = tf.cast(stride_y, tf.float32)
    stride_x = tf.cast(stride_x, tf.float32)
    ys = tf.range(tf.cast(height, tf.float32)) * stride_y + tf.floor(stride_y / 2.0)
    xs = tf.range(tf.cast(width, tf.float32)) * stride_x + tf.floor(stride_x / 2.0)
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    cy, cx = (ymin + ymax) / 2.0, (xmin + xmax) / 2.0
    half_h, half_w = (ymax - ymin) * expand / 2.0, (xmax - xmin) * expand / 2.0
    valid = (ymax > ymin) & (xmax > xmin)
    if classes is not None:
        valid &= classes >= 0
    in_y = (ys[None, None, :] >= (cy - half_h)[..., None]) & (ys[None, None, :] <= (cy + half_h)[..., None])
    in_x = (xs[None, None, :] >= (cx - half_w)[..., None]) & (xs[None, None, :] <= (cx + half_w)[..., None])
    inside = in_y[:, :, :, None] & in_x[:, :, None, :] & valid[:, :, None, None]
    return tf.cast(tf.reduce_any(inside, axis=1), tf.float32)


def _sum_of_level_means(pairs, per_element):
    """sum over levels of sum(per_element(T, S)) / (B_global * h * w * D) -> scalar.

    pairs: (teacher, student) [B, h, w, D] maps of each level (``DistillationLoss.pair_maps``);
    per_element(t, s) -> [B, h, w, D]. The local sum of each level is divided by the global number
    of its elements (msad_l1, mse, output_kd).
    """
    (batch,) = tf.unstack(global_counts(tf.shape(pairs[0][1])[0]))
    total = 0.0
    for t, s in pairs:
        shape = tf.shape(s)
        count = batch * tf.cast(shape[1] * shape[2] * shape[3], tf.float32)
        total += tf.reduce_sum(per_element(t, s)) / count
    return total


class DistillationLoss(keras.layers.Layer):
    """Base class: level pairing, teacher stop-gradient and the common call signature.

    Args:
      channels: C of the teacher maps (student maps are adapted to C before the call).
      num_levels: number of pyramid levels compared.
      aligned: pair level i with level i at the same size (True) or resize the teacher (False).
      resize_method: ``tf.image.resize`` method for ``aligned=False``.
      num_classes: K of the head outputs (checked by ``output_kd``).
    """

    training_only = False
    needs_outputs = False

    def __init__(
        self,
        channels: int,
        num_levels: int,
        aligned: bool = True,
        resize_method: str = "bilinear",
        num_classes: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.num_levels = int(num_levels)
        self.aligned = bool(aligned)
        self.resize_method = resize_method
        self.num_classes = None if num_classes is None else int(num_classes)
        self.built = True

    def _check_levels(self, teacher, student, what="features"):
        if len(teacher) != self.num_levels or len(student) != self.num_levels:
            raise ValueError(
                f"{self.name}: expected {self.num_levels} levels of {what}, got "
                f"{len(teacher)} (teacher) and {len(student)} (student)"
            )

    def pair_maps(self, teacher, student, what="features"):
        """Lists of [B, h, w, D] maps -> list of (teacher, student) float32 pairs of equal size.

        The teacher is stop-gradient; with ``aligned=False`` it is resized to the student's size.
        """
        self._check_levels(teacher, student, what)
        pairs = []
        for level, (t, s) in enumerate(zip(teacher, student)):
            t = tf.stop_gradient(tf.cast(t, tf.float32))
            s = tf.cast(s, tf.float32)
            t_hw, s_hw = t.shape[1:3], s.shape[1:3]
            static = t_hw.is_fully_defined() and s_hw.is_fully_defined()
            if self.aligned:
                if static and t_hw != s_hw:
                    raise ValueError(
                        f"{self.name}: level {level} teacher {what} are {tuple(t_hw)}, student "
                        f"{tuple(s_hw)}; aligned distillation needs equal sizes (use aligned=False "
                        "to resize the teacher)"
                    )
            elif not (static and t_hw == s_hw):
                t = tf.image.resize(t, _spatial_size(s), method=self.resize_method)
            pairs.append((t, s))
        return pairs

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            num_levels=self.num_levels,
            aligned=self.aligned,
            resize_method=self.resize_method,
            num_classes=self.num_classes,
        )
        return config


DISTILLATION_LOSSES: dict[str, type[DistillationLoss]] = {}
"""Loss classes by config name, in the order of registration (``register``): the family modules
imported at the end of this module, each in the order of its class definitions."""


def register(name: str):
    """Class decorator: adds a ``DistillationLoss`` subclass to ``DISTILLATION_LOSSES`` as ``name``."""

    def add(cls):
        if not issubclass(cls, DistillationLoss):
            raise TypeError(f"{cls.__name__} is not a DistillationLoss")
        if name in DISTILLATION_LOSSES:
            raise ValueError(
                f"distillation loss {name!r} is registered twice: {DISTILLATION_LOSSES[name].__name__}, "
                f"{cls.__name__}"
            )
        DISTILLATION_LOSSES[name] = cls
        return cls

    return add


def build_distillation_loss(name: str, channels: int, num_levels: int, num_classes: int | None = None,
                            aligned: bool = True, **options) -> DistillationLoss:
    """Distillation loss layer by config name (``DISTILLATION_LOSSES``).

    ``options`` are the loss's own keyword arguments (e.g. tau for msad_l1, temperature for
    output_kd and skd); unknown names and options raise ValueError listing the valid ones.
    """
    if name not in DISTILLATION_LOSSES:
        raise ValueError(
            f"unknown distillation loss {name!r}; valid: {', '.join(sorted(DISTILLATION_LOSSES))}"
        )
    cls = DISTILLATION_LOSSES[name]
    accepted = set()
    for klass in (cls, DistillationLoss):
        accepted |= {
            p.name for p in inspect.signature(klass.__init__).parameters.values()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        }
    accepted -= {"self", "channels", "num_levels", "num_classes", "aligned"}
    accepted |= {"name"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"distillation loss {name!r} has no option(s) {unknown}; valid: {', '.join(sorted(accepted))}"
        )
    return cls(channels, num_levels, num_classes=num_classes, aligned=aligned, **options)


# The loss families register themselves on import; the order of these imports is the registry's order.
from msad_tf.losses import feature_kd, output_kd, fgfi, podnet, skd  # noqa: E402,F401
