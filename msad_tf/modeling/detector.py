"""Detector: a one-stage detector on a ResNet-FPN as a keras.Model with a custom train_step;
FCOSDetector is FCOS on it.

``Detector`` owns everything MSAD needs and no detector decides: the backbone, the FPN over
the levels of ``AlignedPyramid`` (normal or shifted), the training modes below, the branch
batching of the head, loss collection and ``detect``. A detector subclass writes only its
part (``msad_tf.modeling.retinanet_detector`` is a second one):

  make_head()                          the head layer (named ``head``), per-level dict outputs
                                       with at least cls_logits [B, h, w, cls_channels]
  make_target_spec()                   assignment settings in the high-res frame
  assign_targets(boxes, classes, sizes) targets for levels of spatial ``sizes``
  branch_loss(outputs, targets)        dict of ``loss_parts`` + total, globally normalised
  image_candidates(outputs, strides, image_size)  pre-NMS candidates of one image
  arch, loss_parts, default_nms_iou    class attributes

Training modes (``train_mode``):
  single               one branch on the batch as given (any resolution, normal levels).
  vanilla_multiscale   shared weights on the high-res batch and on its stride-k subsample, both
                       through the normal levels; the low branch has its own targets (boxes / k).
  aligned              shared weights on the high-res batch (levels P3..P7) and on its stride-k
                       subsample through the shifted levels P(3-m)'..P(7-m)'; both branches use
                       the SAME targets, assigned once in the high-res frame.
The multi-scale fusion teacher (``MultiScaleTeacherMixin``) extends ``aligned`` with C-FF for
any detector.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from msad_tf.config import ModelConfig
from msad_tf.losses.fcos import FCOSTargetSpec, assign_targets, fcos_losses
from msad_tf.modeling.backbone import build_resnet, stage_channels
from msad_tf.modeling.fpn import FeaturePyramid
from msad_tf.modeling.head import FCOSHead
from msad_tf.modeling.postprocess import (
    PostprocessConfig,
    image_candidates,
    select_detections,
)
from msad_tf.modeling.pyramid import AlignedPyramid
from msad_tf.resolution import shift_for

TRAIN_MODES = ("single", "vanilla_multiscale", "aligned")
#: arch -> (detector class, multi-scale fusion teacher class), as "module:Class".
ARCH_CLASSES = {
    "fcos": ("msad_tf.modeling.detector:FCOSDetector", "msad_tf.modeling.teacher:MultiScaleTeacher"),
    "retinanet": (
        "msad_tf.modeling.retinanet_detector:RetinaNetDetector",
        "msad_tf.modeling.retinanet_detector:RetinaNetTeacher",
    ),
}


def model_config_from(value) -> ModelConfig:
    if isinstance(value, ModelConfig):
        return value
    return ModelConfig(**value)


def detector_class(arch: str, teacher: bool = False):
    """The Detector subclass of ``arch`` (``ModelConfig.arch``), or its fusion teacher."""
    import importlib

    if arch not in ARCH_CLASSES:
        raise ValueError(f"model.arch '{arch}': choose one of {', '.join(ARCH_CLASSES)}")
    module, name = ARCH_CLASSES[arch][int(teacher)].split(":")
    return getattr(importlib.import_module(module), name)


class Detector(keras.Model):
    """A one-stage detector on a ResNet-FPN (subclasses write the head, targets, losses and
    candidate decoding; see the module docstring).

    Args:
      config: ModelConfig (or its dict) for the architecture, assignment and inference.
      num_classes: number of contiguous classes C.
      train_mode: one of ``TRAIN_MODES`` (see module docstring).
      inference_shift: pyramid shift used by ``predict_step``/``detect`` by default: 0 reads
        P3..P7 of the input, m reads the aligned low-resolution levels P(3-m)'..P(7-m)'.
    Inputs of ``train_step``: dict from ``msad_tf.data.build_dataset`` with images
    [B, H, W, 3], boxes [B, N, 4] and classes [B, N] in the frame of ``images``.
    """

    def __init__(
        self,
        config,
        num_classes: int,
        train_mode: str = "single",
        inference_shift: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.model_config = model_config_from(config)
        cfg = self.model_config
        if cfg.arch != self.arch:
            raise ValueError(
                f"{type(self).__name__} is model.arch '{self.arch}', the config says '{cfg.arch}'"
            )
        if train_mode not in self.train_modes():
            raise ValueError(f"train_mode '{train_mode}': choose one of {self.train_modes()}")
        self.num_classes = int(num_classes)
        self.train_mode = train_mode
        self.inference_shift = int(inference_shift)
        self.pyramid = AlignedPyramid(tuple(cfg.head_levels), cfg.k)
        self.backbone = build_resnet(
            cfg.backbone, cfg.width, cfg.norm, cfg.backbone_weights, cfg.bn_momentum, cfg.fused_bn
        )
        c1 = int(64 * cfg.width)
        self.fpn = FeaturePyramid(
            cfg.fpn_channels,
            min_level=self.pyramid.min_level if self.reads_shifted_levels else self.pyramid.levels()[0],
            in_channels=(c1,) + stage_channels(cfg.backbone, cfg.width),
            init=cfg.fpn_init,
            name="fpn",
        )
        self.head = self.make_head()
        self.target_spec = self.make_target_spec()
        nms_iou = self.default_nms_iou if cfg.nms_iou is None else cfg.nms_iou
        self.postprocess_config = PostprocessConfig(
            cfg.score_threshold, cfg.pre_nms_topk, nms_iou, cfg.max_detections
        )
        self.loss_trackers = {
            name: keras.metrics.Mean(name=name) for name in self.loss_names()
        }
        self._detect_functions = {}
        self.build()

    arch = ""
    loss_parts: tuple[str, ...] = ()
    default_nms_iou = 0.6

    # ----------------------------------------------------------------------------- detector hooks
    def make_head(self) -> keras.layers.Layer:
        """The head (named ``head``): list of num_levels maps -> list of per-level dicts."""
        raise NotImplementedError

    def make_target_spec(self):
        """Assignment settings in the high-res frame (strides ``pyramid.strides(0)``)."""
        raise NotImplementedError

    def assign_targets(self, boxes, classes, sizes):
        """boxes [B, N, 4], classes [B, N] (-1 padding), sizes [(h_i, w_i)] -> targets dict."""
        raise NotImplementedError

    def branch_loss(self, outputs, targets):
        """Per-level head outputs and targets -> dict of ``loss_parts`` and ``total``
        (per-replica scalars whose sum over replicas is the global-batch loss)."""
        raise NotImplementedError

    def image_candidates(self, level_outputs, strides, image_size):
        """One image's head outputs (per-level dicts without batch axis), the level strides and
        image_size float32 [2] -> pre-NMS boxes [K, 4], scores [K], classes [K] int32,
        nms_boxes [K, 4] (``msad_tf.modeling.postprocess.clip_candidates``)."""
        raise NotImplementedError

    @property
    def cls_channels(self) -> int:
        """Channels of the head's cls_logits (C, or A * C for anchors)."""
        return self.num_classes

    # ----------------------------------------------------------------------------- structure
    @property
    def reads_shifted_levels(self) -> bool:
        """Whether any branch reads the aligned low-resolution levels P(3-m)'..P(7-m)'."""
        return self.train_mode == "aligned" or self.inference_shift > 0

    @classmethod
    def train_modes(cls) -> tuple[str, ...]:
        return TRAIN_MODES

    def get_config(self):
        return {
            "config": dataclasses.asdict(self.model_config),
            "num_classes": self.num_classes,
            "train_mode": self.train_mode,
            "inference_shift": self.inference_shift,
            "name": self.name,
        }

    def build(self, input_shape=None):
        """Create every weight by running each branch once on a small dummy batch."""
        side = 2 ** (self.pyramid.max_level + 1)
        dummy = tf.zeros([1, side, side, 3])
        self.head_outputs(self.pyramid_features(dummy, 0))
        if self.reads_shifted_levels:
            low = self.pyramid.subsample(dummy)
            self.head_outputs(self.pyramid_features(low, self.pyramid.shift))
        self.built = True

    # ----------------------------------------------------------------------------- forward
    def pyramid_features(self, images, shift: int = 0, training: bool = False):
        """images [B, H, W, 3] -> pyramid levels ``pyramid.levels(shift)``, each
        [B, ceil(H / 2^l), ceil(W / 2^l), fpn_channels]."""
        features = self.backbone(images, training=training)
        return self.fpn(features, levels=self.pyramid.levels(shift))

    def head_outputs(self, features):
        """List of num_levels maps -> per-level dicts (see the subclass's head)."""
        return self.head(features)

    def head_outputs_batched(self, pyramids):
        """Head outputs of several pyramids whose levels have equal sizes.

        pyramids: P lists of num_levels maps [B_p, h_i, w_i, C] -> P lists of per-level dicts.
        With ``batch_heads`` the head runs once on the batch concatenation of each level (the
        head normalises per image, so the result equals P separate passes).
        """
        if len(pyramids) == 1 or not self.model_config.batch_heads:
            return [self.head_outputs(features) for features in pyramids]
        sizes = [tf.shape(features[0])[0] for features in pyramids]
        joined = self.head_outputs([tf.concat(level, axis=0) for level in zip(*pyramids)])
        split = [
            {key: tf.split(value, sizes, axis=0) for key, value in level.items()} for level in joined
        ]
        return [
            [{key: parts[p] for key, parts in level.items()} for level in split]
            for p in range(len(pyramids))
        ]

    def call(self, images, training=False):
        return self.head_outputs(self.pyramid_features(images, self.inference_shift, training))

    def detect(self, images, image_sizes=None, shift: int | None = None, training=False):
        """images [B, H, W, 3] normalised -> detections in the pixel frame of ``images``.

        See ``msad_tf.modeling.postprocess.postprocess`` for the output dict.
        """
        shift = self.inference_shift if shift is None else shift
        outputs = self.head_outputs(self.pyramid_features(images, shift, training))
        return self.decode(outputs, self.full_image_sizes(images, image_sizes), shift)

    @staticmethod
    def full_image_sizes(images, image_sizes=None):
        """image_sizes, or (H, W) of ``images`` [B, H, W, 3] for every image: [B, 2]."""
        if image_sizes is not None:
            return image_sizes
        shape = tf.shape(images)
        return tf.tile(shape[None, 1:3], [shape[0], 1])

    def decode(self, outputs, image_sizes, shift: int = 0):
        """Per-level head outputs of the levels ``pyramid.levels(shift)`` and image_sizes [B, 2]
        -> detections dict (``msad_tf.modeling.postprocess.postprocess``)."""
        strides = self.pyramid.strides(shift)
        return select_detections(
            outputs, image_sizes, self.postprocess_config,
            lambda outs, size: self.image_candidates(outs, strides, size),
        )

    def shift_for(self, resolution: str) -> int:
        """Pyramid shift read at a resolution (``msad_tf.resolution.shift_for``)."""
        return shift_for(self, resolution)

    def detect_function(self, shift: int | None = None):
        """A cached tf.function of ``detect`` for one shift: (images, image_sizes) -> dict."""
        shift = self.inference_shift if shift is None else shift
        if shift not in self._detect_functions:
            self._detect_functions[shift] = tf.function(
                lambda images, sizes: self.detect(images, sizes, shift),
                reduce_retracing=True,
            )
        return self._detect_functions[shift]

    def predict_step(self, data):
        if isinstance(data, dict):
            return self.detect(data["images"], data.get("image_sizes"))
        return self.detect(data)

    # ----------------------------------------------------------------------------- training
    def targets(self, boxes, classes, outputs, scale: float = 1.0):
        """Assignment for per-level ``outputs``; boxes are divided by ``scale`` first."""
        return self.assign_targets(boxes / scale, classes, self.level_sizes(outputs))

    @staticmethod
    def level_sizes(outputs):
        """Spatial sizes (h_i, w_i) of per-level head outputs."""
        return [(tf.shape(o["cls_logits"])[1], tf.shape(o["cls_logits"])[2]) for o in outputs]

    def loss_names(self) -> list[str]:
        names = ["loss"]
        for branch in self.branch_names():
            names.append(f"loss_{branch}")
            names += [f"{branch}_{part}" for part in self.loss_parts]
        return names

    def branch_names(self) -> tuple[str, ...]:
        return ("high",) if self.train_mode == "single" else ("high", "low")

    def compute_losses(self, data, training: bool = True):
        """Per-branch losses for one batch: dict name -> per-replica scalar.

        Keys: ``loss`` (the optimised sum), ``loss_<branch>`` and ``<branch>_<part>`` for
        part in ``loss_parts``.
        """
        images, boxes, classes = data["images"], data["boxes"], data["classes"]
        high_features = self.pyramid_features(images, 0, training)
        if self.train_mode == "aligned":
            low_features = self.pyramid_features(self.pyramid.subsample(images), self.pyramid.shift, training)
            high, low = self.head_outputs_batched([high_features, low_features])
            targets = self.targets(boxes, classes, high)
            return self._collect({
                "high": self.branch_loss(high, targets), "low": self.branch_loss(low, targets)
            })
        high = self.head_outputs(high_features)
        targets = self.targets(boxes, classes, high)
        branch_losses = {"high": self.branch_loss(high, targets)}
        if self.train_mode == "vanilla_multiscale":
            low = self.head_outputs(self.pyramid_features(self.pyramid.subsample(images), 0, training))
            low_targets = self.targets(boxes, classes, low, scale=float(self.pyramid.k))
            branch_losses["low"] = self.branch_loss(low, low_targets)
        return self._collect(branch_losses)

    def _collect(self, branch_losses, weights=None):
        weights = weights or {}
        result = {}
        total = 0.0
        for branch, parts in branch_losses.items():
            weight = weights.get(branch, 1.0)
            result[f"loss_{branch}"] = parts["total"]
            for part in self.loss_parts:
                result[f"{branch}_{part}"] = parts[part]
            total = total + weight * parts["total"]
        result["loss"] = total
        return result

    @property
    def metrics(self):
        return list(self.loss_trackers.values())

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data, training=True)
            scaled = self.optimizer.scale_loss(losses["loss"])
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply(gradients, variables)
        return self._update_trackers(losses)

    def test_step(self, data):
        return self._update_trackers(self.compute_losses(data, training=False))

    def _update_trackers(self, losses):
        replicas = tf.cast(tf.distribute.get_strategy().num_replicas_in_sync, tf.float32)
        for name, tracker in self.loss_trackers.items():
            tracker.update_state(losses[name] * replicas)
        return {name: tracker.result() for name, tracker in self.loss_trackers.items()}


class FCOSDetector(Detector):
    """FCOS on a ResNet-FPN: ``FCOSHead`` (per-level Scale, centerness), center-sampling
    assignment with ``size_ranges``, focal + GIoU + centerness losses, sqrt(cls * ctr) scores.

    Arguments and inputs as ``Detector``.
    """

    arch = "fcos"
    loss_parts = ("cls", "box", "ctr")
    default_nms_iou = 0.6

    def make_head(self):
        cfg = self.model_config
        return FCOSHead(
            self.num_classes,
            cfg.fpn_channels,
            cfg.head_convs,
            cfg.gn_groups,
            self.pyramid.num_levels,
            cfg.prior_prob,
            name="head",
        )

    def make_target_spec(self):
        cfg = self.model_config
        return FCOSTargetSpec(
            strides=self.pyramid.strides(0),
            size_ranges=tuple(tuple(float(v) for v in r) for r in cfg.size_ranges),
            center_radius=cfg.center_radius,
        )

    def assign_targets(self, boxes, classes, sizes):
        return assign_targets(boxes, classes, sizes, self.target_spec)

    def branch_loss(self, outputs, targets):
        cfg = self.model_config
        return fcos_losses(outputs, targets, cfg.focal_alpha, cfg.focal_gamma)

    def image_candidates(self, level_outputs, strides, image_size):
        return image_candidates(level_outputs, strides, image_size, self.postprocess_config)
