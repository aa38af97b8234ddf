"""Pooled outputs distillation, spatial variant (PODNet; Douillard et al., ECCV 2020; MSAD Table 3a "PODNet").

  ``podnet``  ``PODNetLoss``: per-sample L2 distance between the POD-spatial poolings
              (``pod_spatial``: [B, h, w, C] -> [B, (h + w) * C], L2-normalised) of teacher and
              student maps.

Reads teacher_features / student_features only: lists over levels of [B, h_i, w_i, C] maps, paired
by ``DistillationLoss.pair_maps``. Returns a scalar per replica (msad_tf.losses.distillation
describes the call convention and the tf.distribute normalisation).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from msad_tf.losses.distillation import _PACKAGE, DistillationLoss, _safe_sqrt, global_counts, register


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


@register("podnet")
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
