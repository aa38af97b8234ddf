"""Distiller: a low-resolution student trained from a frozen multi-scale teacher (paper 3.3).

The student sees only the stride-k subsample x' = x[:, ::k, ::k, :] of the padded high-res
batch and reads the aligned levels P(3-m)'..P(7-m)' (``aligned=True``), so each student level
has the spatial size of the teacher level it imitates:

    L_S = gamma * ramp(step) * L_KD(P^T_s, P^S_{s-m}) + det_weight * L_det(x')

``det_weight`` is 1.0 in the authors' code (the paper's eq. 8 writes 1 - gamma). ``ramp`` rises
linearly from 0 to 1 over ``kd_warmup_steps`` (authors' code: 500 of 90k). L_det uses the
same high-res-frame targets as the teacher's branches. With ``aligned=False`` the student reads
the normal P3..P7 of x' (maps k times smaller), is trained on targets rescaled to its frame, and
the loss resizes the teacher maps (paper Table 3a, "not aligned").

Only the student (and the distillation loss's training-only adapters) are trained; the teacher
runs forward without gradient, its BatchNorm in inference mode unless ``teacher_bn_training``
(then the teacher's BatchNorm normalises with batch statistics and updates its moving averages,
as in the authors' code; its trainable weights still never change). A student with another FPN
width is compared through 1x1 adapters (training only).
"""
from __future__ import annotations

import keras
import tensorflow as tf

from msad_tf.keras_private import nested_layers
from msad_tf.modeling.detector import Detector


class StudentInitError(ValueError):
    """The student cannot be paired with (or initialised from) the teacher."""


def check_compatible(teacher: Detector, student: Detector) -> None:
    """Raise StudentInitError when the student's pyramid cannot be aligned with the teacher's."""
    if teacher.arch != student.arch:
        raise StudentInitError(
            f"teacher is model.arch '{teacher.arch}', student '{student.arch}': distil a "
            "student of the teacher's detector"
        )
    if teacher.num_classes != student.num_classes:
        raise StudentInitError(
            f"teacher predicts {teacher.num_classes} classes, student {student.num_classes}: "
            "the dataset's categories do not match the teacher run"
        )
    if teacher.pyramid != student.pyramid:
        raise StudentInitError(
            f"teacher pyramid {teacher.pyramid} differs from the student's {student.pyramid}: "
            "head levels and k must match for aligned distillation"
        )


def initialize_student(student: Detector, teacher: Detector) -> dict[str, int]:
    """Copy teacher weights into the student where names and shapes agree.

    Backbone, FPN and head are copied part by part (layer by layer, by name). With the same
    architecture everything is copied; with a different backbone (e.g. ResNet-101 teacher ->
    ResNet-50 student, or another width) the backbone keeps its own initialisation and only the
    FPN/head layers whose shapes match are copied. Returns counts of copied and skipped layers.
    """
    check_compatible(teacher, student)
    counts = {"copied": 0, "skipped": 0}
    same_backbone = (
        teacher.model_config.backbone == student.model_config.backbone
        and teacher.model_config.width == student.model_config.width
    )
    pairs = [(student.fpn, teacher.fpn), (student.head, teacher.head)]
    if same_backbone:
        pairs.insert(0, (student.backbone, teacher.backbone))
    for s_part, t_part in pairs:
        t_layers = {layer.name: layer for layer in _weighted_sublayers(t_part)}
        for layer in _weighted_sublayers(s_part):
            source = t_layers.get(layer.name)
            if source is not None and [w.shape for w in source.weights] == [w.shape for w in layer.weights]:
                layer.set_weights(source.get_weights())
                counts["copied"] += 1
            else:
                counts["skipped"] += 1
    if hasattr(student.head, "scales") and student.head.scales.shape == teacher.head.scales.shape:
        student.head.scales.assign(teacher.head.scales)
    if counts["copied"] == 0:
        raise StudentInitError("no student layer matches the teacher: use train.student_init=none")
    return counts


def _weighted_sublayers(part):
    if isinstance(part, keras.Model):
        return [layer for layer in part.layers if layer.weights]
    return [layer for layer in nested_layers(part) if layer.weights and not nested_layers(layer)]


class Distiller(keras.Model):
    """Cross feature-level distillation of a low-resolution student.

    Args:
      teacher: trained Detector or multi-scale fusion teacher (frozen here).
      student: Detector of the teacher's arch whose ``inference_shift`` is the pyramid shift m when aligned.
      distill_loss: a ``DistillationLoss`` (``msad_tf.losses.distillation.build_distillation_loss``;
        its adapters are trained with the student and discarded after training).
      gamma: weight of L_KD.
      det_weight: weight of the detection loss (None: 1 - gamma, the paper's eq. 8).
      kd_warmup_steps: linear ramp of the KD term (0: off).
      teacher_target: ``fused`` (C-FF pyramid, needs a MultiScaleTeacher), ``high`` (teacher
        P3..P7 on x) or ``low`` (teacher P(3-m)'..P(7-m)' on x').
      teacher_bn_training: run the teacher's BatchNorm in training mode (authors' code).
      aligned: student reads the shifted levels (True) or the normal P3..P7 of x' (False).
      student_input: ``low`` (the student sees x', MSAD) or ``high`` (the student sees x itself
        and reads P3..P7: same-resolution distillation, e.g. a larger teacher into a smaller
        student; ``aligned`` is then moot).
    """

    def __init__(self, teacher, student, distill_loss, gamma=0.2, kd_warmup_steps=0,
                 teacher_target="fused", teacher_bn_training=False, aligned=True, det_weight=None,
                 student_input="low", **kwargs):
        super().__init__(**kwargs)
        check_compatible(teacher, student)
        if teacher_target == "fused" and not hasattr(teacher, "fused_features"):
            raise StudentInitError(
                "teacher_target 'fused' needs a multi-scale fusion teacher (train.mode teacher); "
                "use teacher_target high or low for this teacher"
            )
        self.teacher = teacher
        self.teacher.trainable = bool(teacher_bn_training)
        self.student = student
        self.distill_loss = distill_loss
        self.gamma = float(gamma)
        self.det_weight = 1.0 - self.gamma if det_weight is None else float(det_weight)
        self.kd_warmup_steps = int(kd_warmup_steps)
        self.teacher_target = teacher_target
        self.teacher_bn_training = bool(teacher_bn_training)
        if student_input not in ("low", "high"):
            raise ValueError(f"student_input '{student_input}': choose low or high")
        self.student_input = student_input
        self.aligned = bool(aligned) or student_input == "high"
        self.student_shift = student.pyramid.shift if aligned and student_input == "low" else 0
        self.needs_outputs = bool(getattr(distill_loss, "needs_outputs", False))
        self.runs_teacher = self.gamma != 0.0
        t_channels = teacher.model_config.fpn_channels
        self.channel_adapters = None
        if student.model_config.fpn_channels != t_channels:
            self.channel_adapters = [
                keras.layers.Conv2D(t_channels, 1, name=f"adapt_p{level}")
                for level in student.pyramid.levels(self.student_shift)
            ]
        for adapter in self.channel_adapters or []:
            adapter.build((None, None, None, student.model_config.fpn_channels))
        self.built = True
        self.kd_log_names = tuple(getattr(self.distill_loss, "log_names", ()))
        names = ["loss", "loss_kd", "loss_det"] + [f"det_{p}" for p in student.loss_parts] + list(self.kd_log_names)
        self.loss_trackers = {name: keras.metrics.Mean(name=name) for name in names}

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def teacher_features(self, images):
        """Teacher pyramid for the high-res batch [B, H, W, 3]: 5 maps aligned with the student's."""
        t, training = self.teacher, self.teacher_bn_training
        if self.teacher_target == "high":
            return t.pyramid_features(images, 0, training)
        if self.teacher_target == "low":
            return t.pyramid_features(t.pyramid.subsample(images), t.pyramid.shift, training)
        return t.fused_features(images, training=training)

    def kd_ramp(self):
        if self.kd_warmup_steps <= 0:
            return 1.0
        step = tf.cast(self.optimizer.iterations, tf.float32)
        return tf.minimum(step / float(self.kd_warmup_steps), 1.0)

    def compute_losses(self, data, training=True):
        """dict of per-replica scalars: loss, loss_kd (unweighted), loss_det, det_<part>, and the
        distillation loss's own per-level terms (its ``log_names``, e.g. SKD's) when it has them.
        With gamma 0 (the no-KD control) the teacher is not run and loss_kd and those terms are
        0: its term would weigh 0 in the loss, so the student's update is the same."""
        images, boxes, classes = data["images"], data["boxes"], data["classes"]
        student = self.student
        seen = images if self.student_input == "high" else student.pyramid.subsample(images)
        student_feats = student.pyramid_features(seen, self.student_shift, training)
        student_outputs = student.head_outputs(student_feats)
        scale = 1.0 if self.aligned else float(student.pyramid.k)
        targets = student.targets(boxes, classes, student_outputs, scale=scale)
        det = student.branch_loss(student_outputs, targets)
        if self.runs_teacher:
            kd, kd_logs = self._distillation_term(images, boxes, classes, student_feats, student_outputs)
        else:
            kd = tf.zeros_like(det["total"])
            kd_logs = {name: kd for name in self.kd_log_names}
        losses = {"loss_kd": kd, "loss_det": det["total"], **kd_logs}
        for part in student.loss_parts:
            losses[f"det_{part}"] = det[part]
        losses["loss"] = self.gamma * self.kd_ramp() * kd + self.det_weight * det["total"]
        return losses

    def _distillation_term(self, images, boxes, classes, student_feats, student_outputs):
        """(L_KD, its per-level logs) of the student's maps against the teacher's on ``images``."""
        teacher_feats = [tf.stop_gradient(f) for f in self.teacher_features(images)]
        teacher_outputs = None
        if self.needs_outputs:
            teacher_outputs = [
                {k: tf.stop_gradient(v) for k, v in level.items()}
                for level in self.teacher.head_outputs(teacher_feats)
            ]
        if self.channel_adapters is not None:
            student_feats = [adapt(f) for adapt, f in zip(self.channel_adapters, student_feats)]
        extra = {"return_logs": True} if self.kd_log_names else {}
        kd = self.distill_loss(
            teacher_feats,
            student_feats,
            teacher_outputs=teacher_outputs,
            student_outputs=student_outputs,
            boxes=boxes,
            classes=classes,
            strides=list(self.teacher.pyramid.strides(0)),
            **extra,
        )
        return kd if self.kd_log_names else (kd, {})

    def trainable_student_variables(self):
        """Student weights plus the training-only adapters (teacher weights never)."""
        variables = self.student.trainable_variables + self.distill_loss.trainable_variables
        for adapter in self.channel_adapters or []:
            variables += adapter.trainable_variables
        return variables

    def train_step(self, data):
        variables = self.trainable_student_variables()
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True)
            scaled = self.optimizer.scale_loss(losses["loss"])
        gradients = tape.gradient(scaled, variables)
        used = [(g, v) for g, v in zip(gradients, variables) if g is not None]
        self.optimizer.apply([g for g, _ in used], [v for _, v in used])
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name] * replicas)
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}

    def call(self, images, training=False):
        return self.student(images, training=training)
