"""RetinaNet (Lin et al., "Focal Loss for Dense Object Detection"): anchors, head, box coding,
inference.

Mirrors the FCOS modules: ``RetinaNetHead`` plays ``FCOSHead``, ``retinanet_postprocess`` plays
``postprocess`` (same output dict, same ``PostprocessConfig``), and the targets and losses live
in ``msad_tf.losses.retinanet``. Level strides come from ``AlignedPyramid.strides(shift)``.

Anchors of a level with stride s are centred on the FCOS locations (``level_locations``:
index * s + s // 2) and have base size ``anchor_size * s``. An aligned low-resolution level
P'_{l-m} (stride s / k in the low-resolution frame) therefore carries, cell for cell, the
anchors of P_l divided by k. Box deltas are relative to the anchor size, so the encoded targets
of the high-resolution frame are exactly the targets of the aligned low-resolution branch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from msad_tf.modeling.boxes import level_locations
from msad_tf.modeling.head import run_tower, tower_head_layers
from msad_tf.modeling.postprocess import (
    PostprocessConfig,
    clip_candidates,
    select_detections,
)

DEFAULT_SCALES = (1.0, 2.0 ** (1.0 / 3.0), 2.0 ** (2.0 / 3.0))
DEFAULT_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: Detectron2's bound on decoded log-size deltas (exp(dh) <= 1000 / 16).
DEFAULT_SCALE_CLIP = math.log(1000.0 / 16.0)
HEAD_NORMS = ("gn", "none")


# ------------------------------------------------------------------------------------ anchors
@dataclass(frozen=True)
class AnchorSpec:
    """Anchors of one cell: base size ``anchor_size * stride`` times each of ``scales``, and
    for each scale every aspect ratio (height / width) at constant area.

    Order within a cell: scale-major, i.e. anchor a = scale_index * len(aspect_ratios) +
    ratio_index (Detectron2's order); the head's channels follow it.
    """

    anchor_size: float = 4.0
    scales: tuple[float, ...] = DEFAULT_SCALES
    aspect_ratios: tuple[float, ...] = DEFAULT_ASPECT_RATIOS

    @property
    def num_anchors(self) -> int:
        return len(self.scales) * len(self.aspect_ratios)

    def cell_anchors(self, stride: float) -> np.ndarray:
        """[A, 4] float32 [ymin, xmin, ymax, xmax] of the anchors of a cell centred at (0, 0)."""
        rows = []
        for scale in self.scales:
            size = self.anchor_size * stride * scale
            for ratio in self.aspect_ratios:
                h, w = size * math.sqrt(ratio), size / math.sqrt(ratio)
                rows.append([-h / 2.0, -w / 2.0, h / 2.0, w / 2.0])
        return np.asarray(rows, np.float32)


def level_anchors(height, width, stride: int, spec: AnchorSpec = AnchorSpec()):
    """Anchors of one level in the pixel frame of its input: [h * w * A, 4].

    Row r = (i * w + j) * A + a is anchor a of cell (i, j) (row-major cells), the order of
    a head output [B, h, w, A * K] reshaped to [B, h * w * A, K].
    """
    centres = tf.tile(level_locations(height, width, stride), [1, 2])
    anchors = centres[:, None, :] + tf.constant(spec.cell_anchors(stride))[None]
    return tf.reshape(anchors, [-1, 4])


def pyramid_anchors(sizes, strides, spec: AnchorSpec = AnchorSpec()):
    """Anchors of all levels concatenated: sizes [(h_i, w_i)], strides [s_i] -> [sum h*w*A, 4]."""
    return tf.concat(
        [level_anchors(h, w, stride, spec) for (h, w), stride in zip(sizes, strides)], axis=0
    )


def feature_sizes(image_size, strides):
    """(h, w) of each level for an input of ``image_size`` (h, w): (ceil(h / s), ceil(w / s)),
    what the backbone and FPN produce (every stride-2 op gives ceil(n / 2))."""
    height, width = image_size
    return [(-(-height // s), -(-width // s)) for s in strides]


def image_anchors(image_size, strides, spec: AnchorSpec = AnchorSpec()):
    """Anchors of a padded input of ``image_size`` (h, w) over levels of ``strides``: [L, 4]."""
    return pyramid_anchors(feature_sizes(image_size, strides), strides, spec)


# ------------------------------------------------------------------------------------ box coding
@dataclass(frozen=True)
class BoxCoder:
    """Anchor-relative box deltas (dy, dx, dh, dw), Faster R-CNN / Detectron2 style.

    dy = wy * (cy - cy_a) / h_a, dx = wx * (cx - cx_a) / w_a, dh = wh * log(h / h_a),
    dw = ww * log(w / w_a) with ``weights`` = (wy, wx, wh, ww). Weights multiply: (1, 1, 1, 1)
    is Detectron2's RetinaNet (the default here); (10, 10, 5, 5) equals the "variance" style
    (0.1, 0.1, 0.2, 0.2) that divides. Decoding bounds dh / wh and dw / ww by ``scale_clip``.
    """

    weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    scale_clip: float = DEFAULT_SCALE_CLIP

    def encode(self, boxes, anchors):
        """boxes, anchors [..., 4] [ymin, xmin, ymax, xmax] -> deltas [..., 4] (dy, dx, dh, dw).

        Box sizes are floored at 1e-6 px so padding rows give finite (meaningless) deltas.
        """
        wy, wx, wh, ww = self.weights
        cy_a, cx_a, h_a, w_a = _centre_size(anchors)
        cy, cx, h, w = _centre_size(boxes)
        h, w = tf.maximum(h, 1e-6), tf.maximum(w, 1e-6)
        return tf.stack(
            [
                wy * (cy - cy_a) / h_a,
                wx * (cx - cx_a) / w_a,
                wh * tf.math.log(h / h_a),
                ww * tf.math.log(w / w_a),
            ],
            axis=-1,
        )

    def decode(self, deltas, anchors):
        """deltas [..., 4] (dy, dx, dh, dw), anchors [..., 4] -> boxes [..., 4]."""
        wy, wx, wh, ww = self.weights
        cy_a, cx_a, h_a, w_a = _centre_size(anchors)
        dy, dx, dh, dw = tf.unstack(deltas, axis=-1)
        cy = dy / wy * h_a + cy_a
        cx = dx / wx * w_a + cx_a
        h = tf.exp(tf.minimum(dh / wh, self.scale_clip)) * h_a
        w = tf.exp(tf.minimum(dw / ww, self.scale_clip)) * w_a
        return tf.stack([cy - h / 2.0, cx - w / 2.0, cy + h / 2.0, cx + w / 2.0], axis=-1)


def _centre_size(boxes):
    ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=-1)
    return (ymin + ymax) / 2.0, (xmin + xmax) / 2.0, ymax - ymin, xmax - xmin


# ------------------------------------------------------------------------------------ head
@keras.saving.register_keras_serializable(package="msad_tf")
class RetinaNetHead(keras.layers.Layer):
    """Classification and box subnets shared by all pyramid levels.

    Each tower is ``num_convs`` blocks of 3x3 conv (+ GroupNorm with ``norm="gn"``) + ReLU;
    ``norm="none"`` is the paper's head. GroupNorm normalises per image, so running the head on
    the batch concatenation of several pyramids (``batch_heads``) is exact; BatchNorm is not
    offered because one set of statistics shared by all levels would break that.

    Args:
      num_classes: C.
      channels: input and tower channels.
      num_convs: blocks per tower.
      num_anchors: A, anchors per cell (``AnchorSpec.num_anchors``).
      norm: ``gn`` or ``none``.
      gn_groups: GroupNorm groups (``norm="gn"``).
      prior_prob: initial foreground probability of every class logit.
    Call:
      features: list of maps [B, H_i, W_i, channels] (any number of levels).
    Returns:
      list over levels of dicts: cls_logits [B, H_i, W_i, A * C] (channel a * C + c is class c
      of anchor a), box_reg [B, H_i, W_i, A * 4] (channel a * 4 + j is delta j of anchor a,
      ``BoxCoder`` order dy, dx, dh, dw).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 4,
        num_anchors: int = 9,
        norm: str = "gn",
        gn_groups: int = 32,
        prior_prob: float = 0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if norm not in HEAD_NORMS:
            raise ValueError(f"head norm '{norm}': choose one of {', '.join(HEAD_NORMS)}")
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.num_anchors = num_anchors
        self.norm = norm
        self.gn_groups = gn_groups
        self.prior_prob = prior_prob
        init = keras.initializers.RandomNormal(stddev=0.01)
        groups = gn_groups if norm == "gn" else None
        self.cls_tower, self.box_tower, self.cls_logits, self.box_pred = tower_head_layers(
            channels, num_convs, groups, num_anchors * num_classes, num_anchors * 4, prior_prob, init
        )

    def build(self, input_shape=None):
        shape = (None, None, None, self.channels)
        for layer in self.cls_tower + self.box_tower + [self.cls_logits, self.box_pred]:
            layer.build(shape)
        self.built = True

    def call(self, features):
        outputs = []
        for feature in features:
            cls = run_tower(self.cls_tower, feature)
            box = run_tower(self.box_tower, feature)
            outputs.append({"cls_logits": self.cls_logits(cls), "box_reg": self.box_pred(box)})
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            num_convs=self.num_convs,
            num_anchors=self.num_anchors,
            norm=self.norm,
            gn_groups=self.gn_groups,
            prior_prob=self.prior_prob,
        )
        return config


def output_layout(level_output) -> tuple[int, int]:
    """(A, C) of a head output dict: anchors per cell and classes."""
    num_anchors = level_output["box_reg"].shape[-1] // 4
    return num_anchors, level_output["cls_logits"].shape[-1] // num_anchors


# ------------------------------------------------------------------------------------ inference
def _candidates(level_outputs, strides, spec: AnchorSpec, coder: BoxCoder, topk: int,
                threshold: float):
    """Top-k (anchor, class) pairs per level for one image; pairs with probability at or
    below ``threshold`` get score 0.

    level_outputs: list of dicts cls_logits [h, w, A * C], box_reg [h, w, A * 4].
    Returns boxes [K, 4], scores [K], classes [K] int32, concatenated over levels.
    """
    boxes, scores, classes = [], [], []
    for out, stride in zip(level_outputs, strides):
        _, num_classes = output_layout(out)
        shape = tf.shape(out["cls_logits"])
        prob = tf.reshape(tf.sigmoid(tf.cast(out["cls_logits"], tf.float32)), [-1])
        score = tf.where(prob > threshold, prob, 0.0)
        top, index = tf.math.top_k(score, k=tf.minimum(topk, tf.shape(score)[0]))
        anchor = index // num_classes
        deltas = tf.reshape(tf.cast(out["box_reg"], tf.float32), [-1, 4])
        anchors = level_anchors(shape[0], shape[1], stride, spec)
        boxes.append(coder.decode(tf.gather(deltas, anchor), tf.gather(anchors, anchor)))
        scores.append(top)
        classes.append(index % num_classes)
    return tf.concat(boxes, 0), tf.concat(scores, 0), tf.concat(classes, 0)


def image_candidates(level_outputs, strides, image_size, config: PostprocessConfig,
                     anchor_spec: AnchorSpec = AnchorSpec(), box_coder: BoxCoder = BoxCoder()):
    """Pre-NMS candidates of one image (level_outputs without batch axis), clipped to
    ``image_size`` [2] by ``postprocess.clip_candidates``: boxes [K, 4], scores [K],
    classes [K] int32, nms_boxes [K, 4]."""
    boxes, scores, classes = _candidates(
        level_outputs, strides, anchor_spec, box_coder, config.pre_nms_topk, config.score_threshold
    )
    return clip_candidates(boxes, scores, classes, image_size)


def retinanet_postprocess(
    level_outputs,
    strides,
    image_sizes,
    config: PostprocessConfig,
    anchor_spec: AnchorSpec = AnchorSpec(),
    box_coder: BoxCoder = BoxCoder(),
):
    """Detections for a batch: sigmoid scores, top-k per level, delta decoding, class-wise NMS.

    Args:
      level_outputs: ``RetinaNetHead`` outputs (cls_logits [B, h, w, A * C],
        box_reg [B, h, w, A * 4]).
      strides: stride of each level in the input's pixel frame (``AlignedPyramid.strides(shift)``).
      image_sizes: [B, 2] (h, w) of the valid image area; boxes are clipped to it.
      config: threshold, per-level top-k, NMS IoU and max detections (the paper: 0.05, 1000,
        0.5, 100).
    Returns the dict of ``msad_tf.modeling.postprocess.postprocess``: boxes [B, D, 4],
    scores [B, D], classes [B, D] int32, num_detections [B] int32, D = max_detections.
    """
    return select_detections(
        level_outputs, image_sizes, config,
        lambda outs, size: image_candidates(outs, strides, size, config, anchor_spec, box_coder),
    )
