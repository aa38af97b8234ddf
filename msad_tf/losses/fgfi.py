"""Fine-grained feature imitation (FGFI; Wang, Yuan, Zhang and Feng, CVPR 2019; MSAD Table 3a "FGFI").

  ``fgfi``  ``FGFILoss``: the adapted student features imitate the teacher's inside the gt-box
            mask only (``msad_tf.losses.distillation.box_mask``), with one 3x3 conv adapter per
            level (or one shared), a training-only weight of the loss layer.

Reads teacher_features / student_features (lists over levels of [B, h_i, w_i, C] maps, paired by
``DistillationLoss.pair_maps``), boxes [B, N, 4] and classes [B, N] in the teacher frame, and the
teacher strides or image_shape (H, W) of that frame. Returns a scalar per replica
(msad_tf.losses.distillation describes the call convention and the tf.distribute normalisation).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from msad_tf.losses.distillation import (
    _PACKAGE,
    DistillationLoss,
    _built_conv,
    _spatial_size,
    box_mask,
    global_counts,
    register,
)


@register("fgfi")
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
