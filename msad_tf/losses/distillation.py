"""Distillation losses between a teacher pyramid and a student pyramid, selectable by name.

Every loss is a ``keras.layers.Layer`` called as

    loss_layer(teacher_features, student_features, *, teacher_outputs=None,
               student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None)

teacher_features / student_features: lists over levels of [B, h_i, w_i, C] maps. The teacher is
always wrapped in ``tf.stop_gradient``. teacher_outputs / student_outputs: lists over levels of
head output dicts (cls_logits [B, h, w, K], box_reg [B, h, w, 4], centerness [B, h, w]); only
``output_kd`` reads them. boxes [B, N, 4] ([ymin, xmin, ymax, xmax] in the pixel frame of the
teacher's high-resolution input, zero padded), classes [B, N] (-1 padding), strides (teacher
level strides in that frame) and image_shape ((H, W) of that frame) are read by ``fgfi`` only.

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


def _sum_of_level_means(pairs, student_features, elementwise):
    """sum over levels of sum(elementwise(T - S)) / (B_global * h * w * C) -> scalar."""
    (batch,) = tf.unstack(global_counts(tf.shape(student_features[0])[0]))
    total = 0.0
    for t, s in pairs:
        shape = tf.shape(s)
        count = batch * tf.cast(shape[1] * shape[2] * shape[3], tf.float32)
        total += tf.reduce_sum(elementwise(t - s)) / count
    return total


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MSADL1Loss(DistillationLoss):
    """Cross feature-level distillation, MSAD paper eq. (7) with the authors' reduction:

        L_KD = tau * sum_s mean_{B, h, w, C} |P^T_s - P^S_{s-m}|

    Per level the absolute difference is summed over the local batch and divided by
    B_global * h * w * C. ``tau`` (paper 3.0) is applied here; gamma is applied by the caller.
    """

    def __init__(self, channels, num_levels, tau: float = 3.0, **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        self.tau = float(tau)

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        pairs = self.pair_maps(teacher_features, student_features)
        return self.tau * _sum_of_level_means(pairs, student_features, tf.abs)

    def get_config(self):
        config = super().get_config()
        config.update(tau=self.tau)
        return config


def _standardize_channels(x, epsilon=1e-5):
    """[B, h, w, C] -> each location's C values shifted to mean 0 and scaled to std 1."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NormalizedL1Loss(MSADL1Loss):
    """``msad_l1`` on features standardised per location over channels (a KD candidate when
    the plain L1 does not help, docs/RESULTS.md): teacher and student maps are each shifted and
    scaled to mean 0, std 1 over C at every cell, so the student imitates the pattern across
    channels, not the teacher's feature scale:

        L_KD = tau * sum_s mean_{B, h, w, C} |z(P^T_s) - z(P^S_{s-m})|,  z = (x - mu_C) / sigma_C
    """

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        return super().call([_standardize_channels(t) for t in teacher_features],
                            [_standardize_channels(s) for s in student_features])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ForegroundL1Loss(MSADL1Loss):
    """``msad_l1`` with foreground and background cells weighted equally (a KD candidate): per
    level, with M the cells whose centre lies in a gt box (``box_mask``, teacher strides),

        L_KD = tau * sum_s [ 0.5 * sum(M |T - S|) / (N_fg C) + 0.5 * sum((1 - M) |T - S|) / (N_bg C) ]

    N_fg, N_bg are the global numbers of foreground and background cells (all replicas); a level
    without foreground cells contributes its background half only. On sparse images the plain
    mean is dominated by background cells; this gives objects half of the term.
    """

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        if boxes is None or strides is None:
            raise ValueError(f"{self.name}: msad_l1_fg needs gt boxes and the teacher strides")
        pairs = self.pair_maps(teacher_features, student_features)
        total = 0.0
        for (t, s), stride in zip(pairs, strides):
            h, w = _spatial_size(t)
            mask = box_mask(boxes, classes, h, w, stride, stride)[..., None]
            diff = tf.reduce_sum(tf.abs(t - s), axis=-1, keepdims=True)
            n_fg, n_all = tf.unstack(global_counts(tf.reduce_sum(mask), tf.cast(tf.size(mask), tf.float32)))
            channels = tf.cast(tf.shape(t)[-1], tf.float32)
            fg_term = tf.math.divide_no_nan(tf.reduce_sum(mask * diff), n_fg * channels)
            bg_term = tf.math.divide_no_nan(tf.reduce_sum((1.0 - mask) * diff), (n_all - n_fg) * channels)
            total += tf.where(n_fg > 0, 0.5 * fg_term + 0.5 * bg_term, bg_term)
        return self.tau * total


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MSELoss(DistillationLoss):
    """Plain feature imitation: L = weight * sum_s mean_{B, h, w, C} (P^T_s - P^S_s)^2.

    Same reduction as ``msad_l1`` (local sum / (B_global * h * w * C) per level).
    """

    def __init__(self, channels, num_levels, weight: float = 1.0, **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        self.weight = float(weight)

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        pairs = self.pair_maps(teacher_features, student_features)
        return self.weight * _sum_of_level_means(pairs, student_features, tf.square)

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class OutputKDLoss(DistillationLoss):
    """Output-level KD (Hinton et al. 2015; MSAD Table 3a "KD") on the classification logits.

    The detector classifies with one sigmoid per class, so the soft targets are per location and
    class: with p = sigmoid(z / T),

        L = weight * T^2 * sum_s mean_{B, h, w, K} BCE(p^T, p^S)
          = weight * T^2 * sum_s mean -(p^T log p^S + (1 - p^T) log(1 - p^S)).

    BCE with soft targets differs from the binary KL divergence by the teacher's entropy only, so
    both have the same gradient. Default T = 1.0 (the MSAD paper gives no temperature; T = 1 is
    the plain soft-label BCE, and T^2 keeps the gradient scale when T is raised). Reduction: local
    sum / (B_global * h * w * K) per level. Logits are paired like features (resized when not
    aligned).
    """

    needs_outputs = True

    def __init__(self, channels, num_levels, temperature: float = 1.0, weight: float = 1.0, **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        self.temperature = float(temperature)
        self.weight = float(weight)

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        if teacher_outputs is None or student_outputs is None:
            raise ValueError(f"{self.name}: output_kd needs teacher_outputs and student_outputs")
        t_logits = [level["cls_logits"] for level in teacher_outputs]
        s_logits = [level["cls_logits"] for level in student_outputs]
        if self.num_classes is not None:
            for logits in t_logits + s_logits:
                if logits.shape[-1] is not None and logits.shape[-1] != self.num_classes:
                    raise ValueError(
                        f"{self.name}: built for {self.num_classes} classes, got logits with "
                        f"{logits.shape[-1]}"
                    )
        pairs = self.pair_maps(t_logits, s_logits, what="cls_logits")
        (batch,) = tf.unstack(global_counts(tf.shape(s_logits[0])[0]))
        temp = self.temperature
        total = 0.0
        for t, s in pairs:
            bce = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(t / temp), logits=s / temp)
            shape = tf.shape(s)
            count = batch * tf.cast(shape[1] * shape[2] * shape[3], tf.float32)
            total += tf.reduce_sum(bce) / count
        return self.weight * temp**2 * total

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, weight=self.weight)
        return config


def box_mask(boxes, classes, height, width, stride_y, stride_x, expand: float = 1.0):
    """FGFI imitation mask for anchor-free detectors: cells whose centre lies in a gt box.

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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FGFILoss(DistillationLoss):
    """Fine-grained feature imitation (Wang et al., CVPR 2019; MSAD Table 3a "FGFI").

    A 3x3 conv adapter (one per level, since FPN levels carry objects of different scales; or one
    shared by all levels with ``shared_adapter=True``) maps the student features, which imitate
    the teacher inside the gt mask I (``box_mask``) only:

        L = weight * 0.5 * sum_s sum_{b, i, j, c} I_bij (P^T_s - adapt_s(P^S_s))^2 / (N_p * C)

    N_p = number of mask locations over all levels and the GLOBAL batch (at least 1). The FGFI
    paper divides by N_p only and keeps the 1/2; the extra 1/C makes the value a per-element mean
    (the paper's loss / C). Mask: the anchor-IoU mask of the paper is replaced by "cell centre
    inside a (optionally ``box_expand``-scaled) gt box", the common simplification for
    anchor-free detectors. Cell centres are taken in the teacher frame; when not aligned the
    student grid's cell size there is stride * h_T / h_S.

    Strides come from ``strides`` (teacher levels, teacher frame) or, failing that, from
    ``image_shape`` / teacher map size.
    """

    training_only = True

    def __init__(self, channels, num_levels, weight: float = 1.0, box_expand: float = 1.0,
                 shared_adapter: bool = False, adapter_init: str = "identity", **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        self.weight = float(weight)
        self.box_expand = float(box_expand)
        self.shared_adapter = bool(shared_adapter)
        self.adapter_init = adapter_init
        count = 1 if self.shared_adapter else self.num_levels
        self.adapters = [
            _built_conv(self.channels, 3, self.channels, adapter_init, f"fgfi_adapter_{i}")
            for i in range(count)
        ]

    def adapter(self, level: int):
        return self.adapters[0 if self.shared_adapter else level]

    def _strides(self, teacher_features, strides, image_shape):
        if strides is not None:
            if len(strides) != self.num_levels:
                raise ValueError(f"{self.name}: {len(strides)} strides for {self.num_levels} levels")
            return [(tf.cast(s, tf.float32), tf.cast(s, tf.float32)) for s in strides]
        if image_shape is None:
            raise ValueError(f"{self.name}: fgfi needs strides (teacher levels) or image_shape")
        height, width = tf.cast(image_shape[0], tf.float32), tf.cast(image_shape[1], tf.float32)
        result = []
        for t in teacher_features:
            h, w = _spatial_size(t)
            result.append((height / tf.cast(h, tf.float32), width / tf.cast(w, tf.float32)))
        return result

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        if boxes is None:
            raise ValueError(f"{self.name}: fgfi needs gt boxes for its imitation mask")
        pairs = self.pair_maps(teacher_features, student_features)
        level_strides = self._strides(teacher_features, strides, image_shape)
        local_sum = 0.0
        local_count = 0.0
        for level, ((t, s), (stride_y, stride_x)) in enumerate(zip(pairs, level_strides)):
            t_h, t_w = _spatial_size(teacher_features[level])
            h, w = _spatial_size(s)
            cell_y = stride_y * tf.cast(t_h, tf.float32) / tf.cast(h, tf.float32)
            cell_x = stride_x * tf.cast(t_w, tf.float32) / tf.cast(w, tf.float32)
            mask = box_mask(boxes, classes, h, w, cell_y, cell_x, self.box_expand)
            diff = tf.square(t - self.adapter(level)(s))
            local_sum += tf.reduce_sum(diff * mask[..., None])
            local_count += tf.reduce_sum(mask)
        (num_mask,) = tf.unstack(global_counts(local_count))
        return self.weight * 0.5 * local_sum / (tf.maximum(num_mask, 1.0) * float(self.channels))

    def get_config(self):
        config = super().get_config()
        config.update(
            weight=self.weight,
            box_expand=self.box_expand,
            shared_adapter=self.shared_adapter,
            adapter_init=self.adapter_init,
        )
        return config


def pod_spatial(features):
    """PODNet spatial pooling (POD-spatial, Douillard et al., ECCV 2020).

    [B, h, w, C] -> [B, (h + w) * C]: squared features summed over width ([B, h, C]) and over
    height ([B, w, C]), concatenated along the spatial axis, flattened and L2-normalised per sample.
    """
    squared = tf.square(features)
    along_h = tf.reduce_sum(squared, axis=2)
    along_w = tf.reduce_sum(squared, axis=1)
    batch = tf.shape(features)[0]
    pooled = tf.reshape(tf.concat([along_h, along_w], axis=1), [batch, -1])
    return tf.math.l2_normalize(pooled, axis=1)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PODNetLoss(DistillationLoss):
    """Pooled outputs distillation, spatial variant (PODNet; MSAD Table 3a "PODNet"):

        L = weight * sum_s (1 / B) sum_b || pod(P^T_s)_b - pod(P^S_s)_b ||_2

    with ``pod_spatial``. The per-sample Frobenius norms are summed over the local batch and
    divided by the global batch size.
    """

    def __init__(self, channels, num_levels, weight: float = 1.0, **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        self.weight = float(weight)

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        pairs = self.pair_maps(teacher_features, student_features)
        (batch,) = tf.unstack(global_counts(tf.shape(student_features[0])[0]))
        total = 0.0
        for t, s in pairs:
            sq = tf.reduce_sum(tf.square(pod_spatial(t) - pod_spatial(s)), axis=1)
            total += tf.reduce_sum(_safe_sqrt(sq)) / batch
        return self.weight * total

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight)
        return config


DISTILLATION_LOSSES = {
    "msad_l1": MSADL1Loss,
    "msad_l1_norm": NormalizedL1Loss,
    "msad_l1_fg": ForegroundL1Loss,
    "mse": MSELoss,
    "output_kd": OutputKDLoss,
    "fgfi": FGFILoss,
    "podnet": PODNetLoss,
}
"""Loss classes by config name. ``skd`` and ``skd_paper`` are added by ``msad_tf.losses.skd``,
imported at the end of this module."""


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


from msad_tf.losses import skd as _skd  # registers skd and skd_paper

_SKD_NAMES = frozenset({
    "SKDLoss", "SKDPaperLoss", "NonLocalBlock", "attention_masks", "spatial_attention", "channel_attention",
})


def __getattr__(name):
    """The SKD names, which live in ``msad_tf.losses.skd``, stay importable from here."""
    if name in _SKD_NAMES:
        return getattr(_skd, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
