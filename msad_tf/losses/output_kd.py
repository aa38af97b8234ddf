"""Output-level knowledge distillation (Hinton, Vinyals and Dean 2015; MSAD Table 3a "KD").

  ``output_kd``  ``OutputKDLoss``: soft-label binary cross-entropy between the teacher's and the
                 student's per-class sigmoid probabilities, at temperature T.

Reads teacher_outputs / student_outputs only: lists over levels of head output dicts, of which it
uses cls_logits [B, h_i, w_i, K] (paired like features by ``DistillationLoss.pair_maps``); the
feature maps are ignored. Returns a scalar per replica (msad_tf.losses.distillation describes the
call convention and the tf.distribute normalisation).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from msad_tf.losses.distillation import _PACKAGE, DistillationLoss, _sum_of_level_means, register


@register("output_kd")
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
        temp = self.temperature

        def soft_bce(t, s):
            return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.sigmoid(t / temp), logits=s / temp)

        return self.weight * temp**2 * _sum_of_level_means(pairs, soft_bce)

    def get_config(self):
        config = super().get_config()
        config.update(temperature=self.temperature, weight=self.weight)
        return config
