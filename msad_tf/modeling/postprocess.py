"""FCOS inference: cls prob > threshold, score = sqrt(cls * centerness), top-k per level, NMS.

Uses only ops that convert to TFLite builtins (top-k, gather, NON_MAX_SUPPRESSION_V5), so the
same function serves Keras, SavedModel and TFLite exports.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

from msad_tf.modeling.boxes import decode_ltrb, level_locations


@dataclass(frozen=True)
class PostprocessConfig:
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_iou: float = 0.6
    max_detections: int = 100


def _candidates(level_outputs, strides, topk: int, threshold: float):
    """Top-k (location, class) pairs per level for one image; pairs with class probability
    at or below ``threshold`` get score 0 (FCOS's pre-NMS threshold).

    level_outputs: list of dicts with cls_logits [h, w, C], box_reg [h, w, 4], centerness [h, w].
    Returns boxes [K, 4], scores [K], classes [K] int32, concatenated over levels.
    """
    boxes, scores, classes = [], [], []
    for out, stride in zip(level_outputs, strides):
        shape = tf.shape(out["centerness"])
        num_classes = out["cls_logits"].shape[-1]
        cls = tf.reshape(tf.sigmoid(tf.cast(out["cls_logits"], tf.float32)), [-1, num_classes])
        ctr = tf.reshape(tf.sigmoid(tf.cast(out["centerness"], tf.float32)), [-1, 1])
        score = tf.reshape(tf.where(cls > threshold, tf.sqrt(cls * ctr), 0.0), [-1])
        k = tf.minimum(topk, tf.shape(score)[0])
        top, index = tf.math.top_k(score, k=k)
        location = index // num_classes
        locations = level_locations(shape[0], shape[1], stride)
        ltrb = tf.reshape(tf.cast(out["box_reg"], tf.float32), [-1, 4])
        decoded = decode_ltrb(
            tf.gather(locations, location), tf.gather(ltrb, location), tf.constant(float(stride))
        )
        boxes.append(decoded)
        scores.append(top)
        classes.append(index % num_classes)
    return tf.concat(boxes, 0), tf.concat(scores, 0), tf.concat(classes, 0)


def clip_candidates(boxes, scores, classes, image_size):
    """Candidates of one image clipped to ``image_size`` [2] (h, w), the rule every detector's
    decoding shares.

    boxes [K, 4], scores [K], classes [K] int32 -> the same, with boxes clipped to the image and
    the score of boxes clipped to zero area (cells in the padding) set to 0, plus ``nms_boxes``
    [K, 4]: the boxes offset per class so one NMS call suppresses only within a class.
    """
    limit = tf.concat([image_size, image_size], 0)
    boxes = tf.clip_by_value(boxes, 0.0, limit)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    scores = tf.where(area > 0.0, scores, 0.0)
    offset = tf.cast(classes, tf.float32)[:, None] * (tf.reduce_max(limit) + 1.0)
    return boxes, scores, classes, boxes + offset


def image_candidates(level_outputs, strides, image_size, config: PostprocessConfig):
    """FCOS pre-NMS candidates of one image, clipped to ``image_size`` [2] (h, w).

    Returns boxes [K, 4], scores [K], classes [K] int32 and ``nms_boxes`` [K, 4] (see
    ``clip_candidates``).
    """
    boxes, scores, classes = _candidates(
        level_outputs, strides, config.pre_nms_topk, config.score_threshold
    )
    return clip_candidates(boxes, scores, classes, image_size)


def select_detections(level_outputs, image_sizes, config: PostprocessConfig, candidates):
    """Class-wise NMS of each image's candidates, padded to ``max_detections``.

    Args:
      level_outputs: head outputs per level, each a dict of [B, ...] tensors.
      image_sizes: [B, 2] (h, w) of the valid image areas.
      candidates: (per-image level outputs, image_size float32 [2]) -> boxes [K, 4],
        scores [K], classes [K] int32, nms_boxes [K, 4] (e.g. ``image_candidates``).
    Returns the dict of ``postprocess``.
    """
    image_sizes = tf.cast(image_sizes, tf.float32)
    max_det = config.max_detections

    def one_image(args):
        outs, size = args
        boxes, scores, classes, nms_boxes = candidates(outs, size)
        selected, _ = tf.image.non_max_suppression_with_scores(
            nms_boxes,
            scores,
            max_output_size=max_det,
            iou_threshold=config.nms_iou,
            score_threshold=1e-6,
        )
        n = tf.shape(selected)[0]
        pad = max_det - n
        return (
            tf.pad(tf.gather(boxes, selected), [[0, pad], [0, 0]]),
            tf.pad(tf.gather(scores, selected), [[0, pad]]),
            tf.pad(tf.gather(classes, selected), [[0, pad]]),
            n,
        )

    boxes, scores, classes, num = tf.map_fn(
        one_image,
        (level_outputs, image_sizes),
        fn_output_signature=(
            tf.TensorSpec([max_det, 4], tf.float32),
            tf.TensorSpec([max_det], tf.float32),
            tf.TensorSpec([max_det], tf.int32),
            tf.TensorSpec([], tf.int32),
        ),
    )
    return {"boxes": boxes, "scores": scores, "classes": classes, "num_detections": num}


def postprocess(level_outputs, strides, image_sizes, config: PostprocessConfig):
    """FCOS detections for a batch.

    Args:
      level_outputs: head outputs per level (cls_logits [B, h, w, C], box_reg [B, h, w, 4],
        centerness [B, h, w]).
      strides: stride of each level in the input's pixel frame.
      image_sizes: [B, 2] (h, w) of the valid (unpadded) image area; boxes are clipped to it.
    Returns dict:
      boxes [B, D, 4] [ymin, xmin, ymax, xmax] in input pixels, scores [B, D],
      classes [B, D] int32 (contiguous ids), num_detections [B] int32; D = max_detections,
      rows past num_detections are zero.
    """
    return select_detections(
        level_outputs, image_sizes, config,
        lambda outs, size: image_candidates(outs, strides, size, config),
    )
