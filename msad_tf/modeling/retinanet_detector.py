"""RetinaNetDetector and RetinaNetTeacher: RetinaNet plugged into the MSAD ``Detector``.

Only RetinaNet's own part is written here (head, IoU-matching targets, focal + smooth L1 / GIoU
losses, anchor decoding); the aligned pyramid, the training modes, the fusion teacher, the
distiller, evaluation and export come from ``Detector`` and ``MultiScaleTeacherMixin``.
Anchor-relative targets do not change when the frame is scaled, so the aligned branch
P(3-m)'..P(7-m)' trains against the assignment made once in the high-res frame.
"""
from __future__ import annotations

from msad_tf.losses.retinanet import (
    RetinaNetTargetSpec,
    anchor_coverage,
    assign_targets,
    retinanet_losses,
)
from msad_tf.modeling.detector import Detector
from msad_tf.modeling.pyramid import AlignedPyramid
from msad_tf.modeling.retinanet import (
    AnchorSpec,
    BoxCoder,
    RetinaNetHead,
    image_candidates,
)
from msad_tf.modeling.teacher import MultiScaleTeacherMixin


def anchor_spec_from(config) -> AnchorSpec:
    """``AnchorSpec`` of a ModelConfig (anchor_size, anchor_scales, anchor_aspect_ratios)."""
    return AnchorSpec(
        anchor_size=float(config.anchor_size),
        scales=tuple(float(s) for s in config.anchor_scales),
        aspect_ratios=tuple(float(r) for r in config.anchor_aspect_ratios),
    )


def target_spec_from(config) -> RetinaNetTargetSpec:
    """``RetinaNetTargetSpec`` of a ModelConfig: the high-resolution strides of its pyramid,
    its anchors and IoU thresholds."""
    return RetinaNetTargetSpec(
        strides=AlignedPyramid(tuple(config.head_levels), config.k).strides(0),
        anchors=anchor_spec_from(config),
        positive_iou=float(config.positive_iou),
        negative_iou=float(config.negative_iou),
    )


def dataset_anchor_coverage(config, anchor_sizes, split: str = "train", progress: bool = False) -> dict:
    """``anchor_coverage`` of the boxes of a split, as the evaluation pipeline resizes and pads
    them (``data.short_side``, ``max_side``, ``pad_multiple``), for each ``model.anchor_size``
    in ``anchor_sizes``: {anchor_size: dict(boxes, covered, mean_best_iou, positives_per_box)}.
    Images of different padded sizes are grouped, each group with its own anchors."""
    import dataclasses

    import numpy as np

    from msad_tf.data import build_dataset
    from msad_tf.training.train import load_split
    from tqdm import tqdm

    data = load_split(config, split)
    dataset = build_dataset(
        data, short_side=config.data.short_side, max_side=config.data.max_side, batch_size=32,
        max_boxes=max(len(r.boxes) for r in data.records) or 1, pad_multiple=config.data.pad_multiple,
    )
    by_shape: dict[tuple[int, int], list] = {}
    for batch in tqdm(dataset, total=-(-len(data.records) // 32), desc=f"boxes of {split}", disable=not progress):
        shape = tuple(int(v) for v in batch["images"].shape[1:3])
        boxes = batch["boxes"].numpy()[batch["classes"].numpy() >= 0]
        by_shape.setdefault(shape, []).append(boxes)
    boxes_by_shape = {shape: np.concatenate(groups) for shape, groups in by_shape.items()}
    total = sum(len(boxes) for boxes in boxes_by_shape.values())
    result = {}
    for size in anchor_sizes:
        spec = target_spec_from(dataclasses.replace(config.model, anchor_size=float(size)))
        parts = [(anchor_coverage(boxes, shape, spec), len(boxes)) for shape, boxes in boxes_by_shape.items()]
        result[float(size)] = {
            "boxes": total,
            **{key: sum(part[key] * count for part, count in parts) / max(total, 1)
               for key in ("covered", "mean_best_iou", "positives_per_box")},
        }
    return result


class RetinaNetDetector(Detector):
    """RetinaNet on a ResNet-FPN (arguments and inputs as ``Detector``).

    Head outputs per level: cls_logits [B, h, w, A * C], box_reg [B, h, w, A * 4] (deltas
    dy, dx, dh, dw of ``BoxCoder``); loss parts ``cls`` (sigmoid focal) and ``box``
    (``model.box_loss``), both normalised by the global number of positive anchors.
    """

    arch = "retinanet"
    loss_parts = ("cls", "box")
    default_nms_iou = 0.5

    @property
    def anchor_spec(self) -> AnchorSpec:
        return self.target_spec.anchors

    @property
    def box_coder(self) -> BoxCoder:
        return self.target_spec.box_coder

    @property
    def cls_channels(self) -> int:
        return self.anchor_spec.num_anchors * self.num_classes

    def make_head(self):
        cfg = self.model_config
        return RetinaNetHead(
            self.num_classes,
            cfg.fpn_channels,
            cfg.head_convs,
            anchor_spec_from(cfg).num_anchors,
            cfg.head_norm,
            cfg.gn_groups,
            cfg.prior_prob,
            name="head",
        )

    def make_target_spec(self):
        return target_spec_from(self.model_config)

    def assign_targets(self, boxes, classes, sizes):
        return assign_targets(boxes, classes, sizes, self.target_spec)

    def branch_loss(self, outputs, targets):
        cfg = self.model_config
        return retinanet_losses(
            outputs, targets, cfg.focal_alpha, cfg.focal_gamma, cfg.box_loss, cfg.smooth_l1_beta,
            self.box_coder,
        )

    def image_candidates(self, level_outputs, strides, image_size):
        return image_candidates(
            level_outputs, strides, image_size, self.postprocess_config, self.anchor_spec,
            self.box_coder,
        )


class RetinaNetTeacher(MultiScaleTeacherMixin, RetinaNetDetector):
    """The RetinaNet multi-scale fusion teacher (see ``MultiScaleTeacherMixin``)."""
