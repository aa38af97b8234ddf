"""FCOS target assignment and detection loss.

Targets are computed once per batch, in TensorFlow, from padded ground truth and the spatial
sizes of the levels. Any pyramid whose levels have those sizes can be trained against them:
the high-resolution P3..P7 and the aligned low-resolution P2'..P6' share one assignment.

Normalisation (the one place it is decided): the focal and centerness losses are divided by
the GLOBAL number of positive locations, the GIoU loss by the GLOBAL sum of centerness targets,
both all-reduced over replicas and divided by ``num_replicas_in_sync``. Per-replica losses are
then divided by the replica count, so summing gradients over replicas (what tf.distribute does)
gives the single-device gradient of the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from msad_tf.modeling.boxes import giou_loss_ltrb, pyramid_locations

_INF = 1e8


@dataclass(frozen=True)
class FCOSTargetSpec:
    """Assignment settings in the pixel frame of the targets (the high-resolution frame).

    size_ranges: (lo, hi] of max(l, t, r, b) per level; center_radius: centre sampling radius
    in strides.
    """

    strides: tuple[int, ...]
    size_ranges: tuple[tuple[float, float], ...]
    center_radius: float = 1.5


def assign_targets(boxes, classes, sizes, spec: FCOSTargetSpec):
    """FCOS assignment for a batch.

    Args:
      boxes: [B, N, 4] float32 [ymin, xmin, ymax, xmax] in the target frame, zero-padded.
      classes: [B, N] int32 contiguous class ids, -1 for padding.
      sizes: list of (h_i, w_i) per level.
      spec: strides (in the target frame), size ranges and centre radius.
    Returns dict:
      labels [B, L] int32 (class id or -1 for background),
      box_targets [B, L, 4] (l, t, r, b) / stride,
      centerness [B, L] float32 (0 at negatives).
    """
    locations, strides, levels = pyramid_locations(sizes, spec.strides)
    ranges = tf.constant(spec.size_ranges, tf.float32)
    lo = tf.gather(ranges[:, 0], levels)[None, :, None]
    hi = tf.gather(ranges[:, 1], levels)[None, :, None]

    y = locations[None, :, 0, None]
    x = locations[None, :, 1, None]
    ymin, xmin, ymax, xmax = [boxes[:, None, :, i] for i in range(4)]
    left, top, right, bottom = x - xmin, y - ymin, xmax - x, ymax - y

    radius = strides[None, :, None] * spec.center_radius
    cy, cx = (ymin + ymax) / 2.0, (xmin + xmax) / 2.0
    in_center = (
        (x > tf.maximum(cx - radius, xmin))
        & (x < tf.minimum(cx + radius, xmax))
        & (y > tf.maximum(cy - radius, ymin))
        & (y < tf.minimum(cy + radius, ymax))
    )
    max_reg = tf.maximum(tf.maximum(left, top), tf.maximum(right, bottom))
    in_range = (max_reg >= lo) & (max_reg <= hi)
    valid = (classes >= 0)[:, None, :]
    area = ((ymax - ymin) * (xmax - xmin)) * tf.ones_like(max_reg)
    candidate = in_center & in_range & valid
    area = tf.where(candidate, area, _INF)
    best = tf.argmin(area, axis=-1, output_type=tf.int32)
    positive = tf.reduce_min(area, axis=-1) < _INF

    labels = tf.where(positive, tf.gather(classes, best, batch_dims=1), -1)
    box = tf.gather(boxes, best, batch_dims=1)
    y, x = locations[None, :, 0], locations[None, :, 1]
    matched = tf.stack([x - box[..., 1], y - box[..., 0], box[..., 3] - x, box[..., 2] - y], axis=-1)
    box_targets = matched / strides[None, :, None]
    lr = tf.stack([matched[..., 0], matched[..., 2]], -1)
    tb = tf.stack([matched[..., 1], matched[..., 3]], -1)
    ctr = tf.sqrt(
        tf.maximum(
            tf.reduce_min(lr, -1) / tf.maximum(tf.reduce_max(lr, -1), 1e-6)
            * tf.reduce_min(tb, -1)
            / tf.maximum(tf.reduce_max(tb, -1), 1e-6),
            0.0,
        )
    )
    positive_f = tf.cast(positive, tf.float32)
    return {
        "labels": labels,
        "box_targets": box_targets * positive_f[..., None],
        "centerness": ctr * positive_f,
    }


def flatten_outputs(outputs):
    """Per-level head outputs -> cls_logits [B, L, C], box_reg [B, L, 4], centerness [B, L]."""
    batch = tf.shape(outputs[0]["cls_logits"])[0]

    def cat(key, depth):
        parts = []
        for level in outputs:
            t = tf.cast(level[key], tf.float32)
            parts.append(tf.reshape(t, [batch, -1] + ([depth] if depth else [])))
        return tf.concat(parts, axis=1)

    num_classes = outputs[0]["cls_logits"].shape[-1]
    return {
        "cls_logits": cat("cls_logits", num_classes),
        "box_reg": cat("box_reg", 4),
        "centerness": cat("centerness", None),
    }


def level_sizes(outputs):
    """Spatial sizes (h_i, w_i) of per-level head outputs."""
    return [(tf.shape(o["centerness"])[1], tf.shape(o["centerness"])[2]) for o in outputs]


def sigmoid_focal_loss(logits, targets, alpha: float = 0.25, gamma: float = 2.0):
    """Elementwise sigmoid focal loss (RetinaNet): [...] -> [...] (not reduced)."""
    p = tf.sigmoid(logits)
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=targets, logits=logits)
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * ce * (1 - p_t) ** gamma


def global_sum(value):
    """Sum of a per-replica scalar over all replicas in sync (identity with one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def num_replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def fcos_losses(outputs, targets, alpha: float = 0.25, gamma: float = 2.0):
    """FCOS loss of one branch against shared targets.

    Args:
      outputs: per-level head outputs (list of dicts) or their ``flatten_outputs``.
      targets: ``assign_targets`` result with the same number of locations.
    Returns dict of per-replica scalars cls, box, ctr, total, scaled so that the sum over
    replicas is the loss of the global batch.
    """
    flat = flatten_outputs(outputs) if isinstance(outputs, (list, tuple)) else outputs
    labels = targets["labels"]
    positive = labels >= 0
    positive_f = tf.cast(positive, tf.float32)
    replicas = float(num_replicas())

    num_pos = tf.maximum(global_sum(tf.reduce_sum(positive_f)) / replicas, 1.0)
    ctr_sum = tf.maximum(global_sum(tf.reduce_sum(targets["centerness"])) / replicas, 1e-6)

    num_classes = flat["cls_logits"].shape[-1]
    onehot = tf.one_hot(tf.maximum(labels, 0), num_classes) * positive_f[..., None]
    cls = tf.reduce_sum(sigmoid_focal_loss(flat["cls_logits"], onehot, alpha, gamma)) / num_pos

    giou = giou_loss_ltrb(flat["box_reg"], targets["box_targets"])
    box = tf.reduce_sum(giou * targets["centerness"] * positive_f) / ctr_sum

    ctr_bce = tf.nn.sigmoid_cross_entropy_with_logits(
        labels=targets["centerness"], logits=flat["centerness"]
    )
    ctr = tf.reduce_sum(ctr_bce * positive_f) / num_pos

    losses = {"cls": cls / replicas, "box": box / replicas, "ctr": ctr / replicas}
    losses["total"] = losses["cls"] + losses["box"] + losses["ctr"]
    return losses
