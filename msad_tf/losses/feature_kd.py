"""Feature-imitation losses: MSAD's cross feature-level L1, two candidate fixes of it, and MSE.

  ``msad_l1``       ``MSADL1Loss``, MSAD (Multi-Scale Aligned Distillation) paper eq. (7): tau times
                    the mean absolute difference between teacher level P_s and student level
                    P'_{s-m}, with the authors' per-level reduction.
  ``msad_l1_norm``  ``NormalizedL1Loss``, ``msad_l1`` on maps standardised over channels at every
                    cell (a KD candidate of this project, docs/RESULTS.md).
  ``msad_l1_fg``    ``ForegroundL1Loss``, ``msad_l1`` with foreground (cells inside gt boxes) and
                    background weighted equally (a KD candidate of this project).
  ``mse``           ``MSELoss``, plain feature imitation (mean squared difference; MSAD Table 3a).

All read teacher_features / student_features: lists over levels of [B, h_i, w_i, C] maps, paired
by ``DistillationLoss.pair_maps``. ``msad_l1_fg`` also reads boxes [B, N, 4], classes [B, N] and
the teacher strides (``box_mask``). Each returns a scalar per replica (msad_tf.losses.distillation
describes the call convention and the tf.distribute normalisation).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from msad_tf.losses.distillation import (
    _PACKAGE,
    DistillationLoss,
    _spatial_size,
    _sum_of_level_means,
    box_mask,
    global_counts,
    register,
)


@register("msad_l1")
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
        return self.tau * _sum_of_level_means(pairs, lambda t, s: tf.abs(t - s))

    def get_config(self):
        config = super().get_config()
        config.update(tau=self.tau)
        return config


def _standardize_channels(x, epsilon=1e-5):
    """[B, h, w, C] -> each location's C values shifted to mean 0 and scaled to std 1."""
    mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
    return (x - mean) * tf.math.rsqrt(variance + epsilon)


@register("msad_l1_norm")
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


@register("msad_l1_fg")
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


@register("mse")
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
        return self.weight * _sum_of_level_means(pairs, lambda t, s: tf.square(t - s))

    def get_config(self):
        config = super().get_config()
        config.update(weight=self.weight)
        return config
