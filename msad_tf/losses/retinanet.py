"""RetinaNet target assignment (IoU matching) and loss (sigmoid focal + smooth L1 or GIoU).

Targets are computed once per batch in the high-resolution frame from padded ground truth and
the spatial sizes of the levels. They are anchor-relative deltas, which do not change when the
frame is scaled, so the aligned low-resolution levels P(3-m)'..P(7-m)' (same sizes, anchors
divided by k) train against the same assignment, as in FCOS.

Normalisation follows ``msad_tf.losses.fcos``: both terms are divided by the GLOBAL number of
positive anchors (all-reduced over replicas, divided by ``num_replicas_in_sync``, at least 1)
and the per-replica losses by the replica count, so summed replica gradients equal the
single-device gradient of the global batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from msad_tf.losses.fcos import global_sum, num_replicas, sigmoid_focal_loss
from msad_tf.modeling.retinanet import (
    AnchorSpec,
    BoxCoder,
    image_anchors,
    output_layout,
    pyramid_anchors,
)

#: Label of anchors whose best IoU lies between the negative and positive thresholds.
IGNORE = -2
BOX_LOSSES = ("smooth_l1", "giou")


@dataclass(frozen=True)
class RetinaNetTargetSpec:
    """Assignment settings in the pixel frame of the targets (the high-resolution frame).

    strides: level strides (``AlignedPyramid.strides(0)``); an anchor is positive when its
    best IoU with a box is >= ``positive_iou``, negative below ``negative_iou``, ignored in
    between; with ``low_quality_matches`` each box's best anchors (all ties) are positive too.
    """

    strides: tuple[int, ...]
    anchors: AnchorSpec = field(default_factory=AnchorSpec)
    box_coder: BoxCoder = field(default_factory=BoxCoder)
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    low_quality_matches: bool = True


def box_iou(boxes_a, boxes_b):
    """Pairwise IoU: [..., M, 4] x [..., N, 4] -> [..., M, N] (0 where the union is empty)."""
    a = boxes_a[..., :, None, :]
    b = boxes_b[..., None, :, :]
    height = tf.maximum(tf.minimum(a[..., 2], b[..., 2]) - tf.maximum(a[..., 0], b[..., 0]), 0.0)
    width = tf.maximum(tf.minimum(a[..., 3], b[..., 3]) - tf.maximum(a[..., 1], b[..., 1]), 0.0)
    inter = height * width
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return tf.math.divide_no_nan(inter, area_a + area_b - inter)


def match_anchors(anchors, boxes, classes, positive_iou=0.5, negative_iou=0.4, low_quality_matches=True):
    """IoU matching of anchors to the boxes of each image.

    Args:
      anchors: [L, 4]; boxes: [B, N, 4] zero-padded; classes: [B, N] int32, -1 for padding.
    Returns:
      matched [B, L] int32 index of the box of each anchor (meaningful at positives),
      labels [B, L] int32: class id (positive), -1 (negative) or ``IGNORE``.
    An anchor that is the best anchor of some box (``low_quality_matches``) is matched to that
    box, or to the one it overlaps most if it is the best anchor of several.
    """
    valid = (classes >= 0)[:, None, :]
    iou = tf.where(valid, box_iou(anchors[None], boxes), -1.0)
    best_iou = tf.reduce_max(iou, axis=-1)
    matched = tf.argmax(iou, axis=-1, output_type=tf.int32)
    positive = best_iou >= positive_iou
    if low_quality_matches:
        box_best = tf.reduce_max(iou, axis=1, keepdims=True)
        is_best = (iou >= box_best) & (box_best > 0.0) & valid
        forced = tf.reduce_any(is_best, axis=-1)
        forced_box = tf.argmax(tf.where(is_best, iou, -1.0), axis=-1, output_type=tf.int32)
        matched = tf.where(forced, forced_box, matched)
        positive |= forced
    labels = tf.where(
        positive,
        tf.gather(classes, matched, batch_dims=1),
        tf.where(best_iou < negative_iou, -1, IGNORE),
    )
    return matched, labels


def anchor_coverage(boxes, image_size, spec: RetinaNetTargetSpec, chunk: int = 4096) -> dict:
    """How well the anchors of ``spec`` cover ground-truth boxes, to choose ``anchor_size``.

    Args:
      boxes: [N, 4] float [ymin, xmin, ymax, xmax] in the pixel frame of an input of
        ``image_size`` (h, w), the frame ``spec.strides`` refers to.
    Returns dict: boxes (N), covered (fraction of boxes whose best anchor IoU is >=
    ``positive_iou``, i.e. matched without the low-quality rule), mean_best_iou, and
    positives_per_box (mean number of anchors at IoU >= ``positive_iou``).
    """
    anchors = image_anchors(image_size, spec.strides, spec.anchors)
    boxes = tf.convert_to_tensor(np.asarray(boxes, np.float32).reshape(-1, 4))
    best, positives = [], []
    for start in range(0, int(boxes.shape[0]), chunk):
        iou = box_iou(boxes[start:start + chunk], anchors)
        best.append(tf.reduce_max(iou, axis=1))
        positives.append(tf.reduce_sum(tf.cast(iou >= spec.positive_iou, tf.float32), axis=1))
    best = tf.concat(best, 0).numpy() if best else np.zeros([0], np.float32)
    positives = tf.concat(positives, 0).numpy() if positives else np.zeros([0], np.float32)
    count = len(best)
    return {
        "boxes": count,
        "covered": float(np.mean(best >= spec.positive_iou)) if count else 0.0,
        "mean_best_iou": float(np.mean(best)) if count else 0.0,
        "positives_per_box": float(np.mean(positives)) if count else 0.0,
    }


def assign_targets(boxes, classes, sizes, spec: RetinaNetTargetSpec):
    """RetinaNet assignment for a batch.

    Args:
      boxes: [B, N, 4] float32 [ymin, xmin, ymax, xmax] in the target frame, zero-padded.
      classes: [B, N] int32 contiguous class ids, -1 for padding.
      sizes: list of (h_i, w_i) per level.
      spec: strides (in the target frame), anchors, box coder and IoU thresholds.
    Returns dict:
      labels [B, L] int32 (class id, -1 background, ``IGNORE``), L = sum h_i * w_i * A,
      box_targets [B, L, 4] encoded deltas (dy, dx, dh, dw), 0 at non-positives.
    """
    boxes = tf.cast(boxes, tf.float32)
    anchors = pyramid_anchors(sizes, spec.strides, spec.anchors)
    matched, labels = match_anchors(
        anchors, boxes, classes, spec.positive_iou, spec.negative_iou, spec.low_quality_matches
    )
    deltas = spec.box_coder.encode(tf.gather(boxes, matched, batch_dims=1), anchors[None])
    return {
        "labels": labels,
        "box_targets": tf.where((labels >= 0)[..., None], deltas, 0.0),
    }


def flatten_outputs(outputs):
    """Per-level head outputs -> cls_logits [B, L, C], box_reg [B, L, 4] (float32), in the
    anchor order of ``pyramid_anchors``."""
    _, num_classes = output_layout(outputs[0])
    batch = tf.shape(outputs[0]["cls_logits"])[0]
    return {
        key: tf.concat(
            [tf.reshape(tf.cast(level[key], tf.float32), [batch, -1, depth]) for level in outputs], axis=1
        )
        for key, depth in (("cls_logits", num_classes), ("box_reg", 4))
    }


def level_sizes(outputs):
    """Spatial sizes (h_i, w_i) of per-level head outputs."""
    return [(tf.shape(o["cls_logits"])[1], tf.shape(o["cls_logits"])[2]) for o in outputs]


def smooth_l1_loss(pred, target, beta: float = 0.1):
    """Elementwise smooth L1 (Huber / beta): 0.5 d^2 / beta if |d| < beta else |d| - beta / 2;
    plain L1 for beta = 0."""
    diff = tf.abs(pred - target)
    if beta <= 0.0:
        return diff
    return tf.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def giou_loss(pred, target):
    """1 - GIoU of boxes [..., 4] [ymin, xmin, ymax, xmax] paired elementwise -> [...]."""
    inter_h = tf.maximum(tf.minimum(pred[..., 2], target[..., 2]) - tf.maximum(pred[..., 0], target[..., 0]), 0.0)
    inter_w = tf.maximum(tf.minimum(pred[..., 3], target[..., 3]) - tf.maximum(pred[..., 1], target[..., 1]), 0.0)
    inter = inter_h * inter_w
    area_p = (pred[..., 2] - pred[..., 0]) * (pred[..., 3] - pred[..., 1])
    area_t = (target[..., 2] - target[..., 0]) * (target[..., 3] - target[..., 1])
    union = area_p + area_t - inter
    enclose = (tf.maximum(pred[..., 2], target[..., 2]) - tf.minimum(pred[..., 0], target[..., 0])) * (
        tf.maximum(pred[..., 3], target[..., 3]) - tf.minimum(pred[..., 1], target[..., 1])
    )
    eps = 1e-7
    return 1.0 - (inter / (union + eps) - (enclose - union) / (enclose + eps))


_UNIT_ANCHOR = (-0.5, -0.5, 0.5, 0.5)


def delta_giou_loss(pred_deltas, target_deltas, coder: BoxCoder | None = None):
    """1 - GIoU of the boxes two delta sets decode to around a shared anchor: [..., 4] -> [...].

    GIoU is invariant to translation and to scaling each axis, so decoding both around the unit
    anchor gives the GIoU of the pixel boxes of any anchor, in any frame.
    """
    coder = coder or BoxCoder()
    unit = tf.constant(_UNIT_ANCHOR, tf.float32)
    return giou_loss(coder.decode(pred_deltas, unit), coder.decode(target_deltas, unit))


def retinanet_losses(
    outputs,
    targets,
    alpha: float = 0.25,
    gamma: float = 2.0,
    box_loss: str = "smooth_l1",
    beta: float = 0.1,
    box_coder: BoxCoder | None = None,
):
    """RetinaNet loss of one branch against shared targets.

    Args:
      outputs: per-level head outputs (list of dicts) or their ``flatten_outputs``.
      targets: ``assign_targets`` result with the same number of anchors.
      alpha, gamma: focal loss, summed over all non-ignored anchors and classes.
      box_loss: ``smooth_l1`` on the encoded deltas (``beta``; Detectron2: 0.1, the paper's
        Detectron: 1 / 9) or ``giou`` on the decoded boxes (``delta_giou_loss``), summed over
        positive anchors.
      box_coder: the coder of the targets (used by ``giou``; default ``BoxCoder()``).
    Returns dict of per-replica scalars cls, box, total, scaled so that the sum over replicas
    is the loss of the global batch.
    """
    if box_loss not in BOX_LOSSES:
        raise ValueError(f"box_loss '{box_loss}': choose one of {', '.join(BOX_LOSSES)}")
    flat = flatten_outputs(outputs) if isinstance(outputs, (list, tuple)) else outputs
    labels = targets["labels"]
    positive_f = tf.cast(labels >= 0, tf.float32)
    counted_f = tf.cast(labels != IGNORE, tf.float32)
    replicas = float(num_replicas())
    num_pos = tf.maximum(global_sum(tf.reduce_sum(positive_f)) / replicas, 1.0)

    num_classes = flat["cls_logits"].shape[-1]
    onehot = tf.one_hot(tf.maximum(labels, 0), num_classes) * positive_f[..., None]
    focal = sigmoid_focal_loss(flat["cls_logits"], onehot, alpha, gamma)
    cls = tf.reduce_sum(focal * counted_f[..., None]) / num_pos

    box_targets = tf.cast(targets["box_targets"], tf.float32)
    if box_loss == "giou":
        per_anchor = delta_giou_loss(flat["box_reg"], box_targets, box_coder)
    else:
        per_anchor = tf.reduce_sum(smooth_l1_loss(flat["box_reg"], box_targets, beta), axis=-1)
    box = tf.reduce_sum(per_anchor * positive_f) / num_pos

    losses = {"cls": cls / replicas, "box": box / replicas}
    losses["total"] = losses["cls"] + losses["box"]
    return losses
