"""MultiScaleTeacher: aligned multi-scale training plus crossing feature-level fusion (paper 3.2).

One backbone, FPN and head run on the padded high-res batch x (levels P3..P7) and on its
stride-k subsample x' (aligned levels P(3-m)'..P(7-m)'); ``PyramidFusion`` (C-FF by default)
fuses each aligned pair into P^T_s, and the same head reads the fused pyramid. All three
branches are trained against ONE assignment made in the high-res frame:

    L_T = L_align + L_F = L_high + L_low + lambda * L_fused          (eqs. 5, 6)

Training stages (``set_stage``):
  joint   end-to-end: L_T, everything trainable.
  align   stage 1 of the two-step schedule: L_align only; the fusion module is not trainable
          (the fused branch is still evaluated and reported, without gradient).
  fusion  stage 2: only the fusion module is trainable; backbone, FPN and head are frozen
          (``trainable = False``, so BatchNorm runs on its moving statistics) and the loss is
          L_F = lambda * L_fused (the high/low losses are reported without gradient).
After ``set_stage`` the caller compiles again (a new optimizer, inside the strategy scope):
Keras optimizers build their slots for the trainable variables they first see, and
``compile`` drops the traced train function, which captured the old variable list::

    teacher.set_stage("align");  teacher.compile(optimizer=make_optimizer(...));  teacher.fit(...)
    teacher.set_stage("fusion"); teacher.compile(optimizer=make_optimizer(...));  teacher.fit(...)

Inference uses the fused branch (both resolutions of the same image); the single-resolution
branches stay available for comparison (``detect(..., branch="high" | "low")``).
"""
from __future__ import annotations

import tensorflow as tf

from msad_tf.keras_private import nested_layers
from msad_tf.modeling.detector import FCOSDetector, model_config_from
from msad_tf.modeling.fusion import PyramidFusion
from msad_tf.resolution import INFERENCE_BRANCHES, branches_for, resolve_branch  # noqa: F401

STAGES = ("joint", "align", "fusion")


class MultiScaleTeacherMixin:
    """Multi-scale fusion teacher of any ``Detector``: the aligned detector with crossing
    feature-level fusion. Listed before the detector class (``MultiScaleTeacher`` is FCOS's).

    Args:
      config: ModelConfig (or its dict); ``fusion``, ``fusion_reduction`` and ``fusion_shared``
        choose the fusion module (see ``msad_tf.modeling.fusion``).
      num_classes: number of contiguous classes C.
      fusion_weight: lambda, the weight of the fused-branch loss (paper: 0.4).
      stage: training stage, one of ``STAGES`` (see module docstring).
    ``train_mode`` is ``"aligned"``: the high/low branches are trained exactly as an aligned
    detector, so ``shift_for("low")`` is m and the low branch reads P(3-m)'..P(7-m)'.
    Inputs of ``train_step``: dict with images [B, H, W, 3] (H, W multiples of the coarsest
    stride), boxes [B, N, 4] and classes [B, N] in the frame of ``images``.
    """

    def __init__(
        self, config, num_classes: int, fusion_weight: float = 0.4, stage: str = "joint", **kwargs
    ):
        cfg = model_config_from(config)
        # Set before Detector.__init__, whose build() (overridden below) runs the fusion.
        self.fusion_weight = float(fusion_weight)
        self.stage = "joint"
        self.fusion = PyramidFusion(
            cfg.fusion,
            cfg.fusion_reduction,
            cfg.fusion_shared,
            num_levels=len(cfg.head_levels),
            channels=cfg.fpn_channels,
            name="fusion",
        )
        super().__init__(cfg, num_classes, train_mode="aligned", inference_shift=0, **kwargs)
        self._base_trainable = tuple(layer.trainable for layer in self._detector_layers())
        self.set_stage(stage)

    def get_config(self):
        config = super().get_config()
        config.pop("train_mode")
        config.pop("inference_shift")
        config.update(fusion_weight=self.fusion_weight, stage=self.stage)
        return config

    def build(self, input_shape=None):
        """Create every weight (backbone, FPN incl. the shifted levels, fusion, head) with one
        dummy pass through the fused branch."""
        side = 2 ** (self.pyramid.max_level + 1)
        self.head_outputs(self.fused_features(tf.zeros([1, side, side, 3])))
        self.built = True

    # ----------------------------------------------------------------------------- stages
    def _detector_layers(self):
        return [
            layer
            for part in (self.backbone, self.fpn, self.head)
            for layer in nested_layers(part, include_self=True)
        ]

    def set_stage(self, stage: str) -> None:
        """Switch the training stage (``joint``, ``align`` or ``fusion``); compile again after.

        ``fusion`` freezes backbone, FPN and head; leaving it restores each of their layers'
        own trainable flag (e.g. frozen BatchNorm stays frozen).
        """
        if stage not in STAGES:
            raise ValueError(f"stage '{stage}': choose one of {', '.join(STAGES)}")
        frozen = stage == "fusion"
        for layer, trainable in zip(self._detector_layers(), self._base_trainable):
            layer.trainable = trainable and not frozen
        self.fusion.trainable = stage != "align"
        self.stage = stage

    def loss_weights(self) -> dict[str, float]:
        """Weight of each branch loss in ``loss`` for the current stage (0: reported only)."""
        if self.stage == "align":
            return {"high": 1.0, "low": 1.0, "fused": 0.0}
        if self.stage == "fusion":
            return {"high": 0.0, "low": 0.0, "fused": self.fusion_weight}
        return {"high": 1.0, "low": 1.0, "fused": self.fusion_weight}

    # ----------------------------------------------------------------------------- forward
    def aligned_features(self, images, training: bool = False):
        """images [B, H, W, 3] -> (P3..P7 of images, P(3-m)'..P(7-m)' of the stride-k subsample);
        entry i of both lists is [B, ceil(H / 2^s), ceil(W / 2^s), C], s = head_levels[i]."""
        high = self.pyramid_features(images, 0, training)
        low = self.pyramid_features(self.pyramid.subsample(images), self.pyramid.shift, training)
        return high, low

    def fused_features(self, images, training: bool = False):
        """images [B, H, W, 3] (high res) -> fused pyramid P^T_3..P^T_7, each [B, h_s, w_s, C]."""
        high, low = self.aligned_features(images, training)
        fused, _ = self.fusion((high, low), training=training)
        return fused

    def fusion_weights(self, images, training: bool = False):
        """images [B, H, W, 3] -> per-level fusion weights (index 1 = low-res branch):
        [B, 2] each, or [B, 2, C] for the channel-wise variant."""
        high, low = self.aligned_features(images, training)
        _, weights = self.fusion((high, low), training=training)
        return weights

    def call(self, images, training=False):
        return self.head_outputs(self.fused_features(images, training))

    # ----------------------------------------------------------------------------- inference
    multi_branch = True

    def resolve_branch(self, branch: str | None, shift: int | None) -> tuple[str, int]:
        """(branch, shift) that ``detect`` runs (``msad_tf.resolution.resolve_branch``)."""
        return resolve_branch(self, branch, shift)

    def inference_branches(self, resolution: str) -> tuple[str, ...]:
        """Branches evaluated at an input resolution: H -> fused and high, L -> low."""
        return tuple(branch for _, branch in branches_for(self, resolution))

    def detect(self, images, image_sizes=None, shift: int | None = None, training=False,
               branch: str | None = None):
        """images [B, H, W, 3] normalised -> detections in the pixel frame of ``images``.

        branch ``fused``: ``images`` is the high-res batch; the low branch runs on its stride-k
        subsample and the head reads the fused pyramid. ``high``: P3..P7 of ``images``.
        ``low``: the shifted levels P(3-m)'..P(7-m)' of ``images`` as given (pass the low-res
        image). See ``resolve_branch`` for the defaults and
        ``msad_tf.modeling.postprocess.postprocess`` for the output dict.
        """
        branch, shift = self.resolve_branch(branch, shift)
        if branch == "fused":
            features = self.fused_features(images, training)
        else:
            features = self.pyramid_features(images, shift, training)
        return self.decode(self.head_outputs(features), self.full_image_sizes(images, image_sizes), shift)

    def detect_function(self, shift: int | None = None, branch: str | None = None):
        """Cached tf.function of ``detect`` per (shift, branch): (images, image_sizes) -> dict."""
        branch, shift = self.resolve_branch(branch, shift)
        key = f"{branch}@{shift}"
        if key not in self._detect_functions:
            self._detect_functions[key] = tf.function(
                lambda images, sizes: self.detect(images, sizes, shift, branch=branch),
                reduce_retracing=True,
            )
        return self._detect_functions[key]

    # ----------------------------------------------------------------------------- training
    def branch_names(self) -> tuple[str, ...]:
        return ("high", "low", "fused")

    def compute_losses(self, data, training: bool = True):
        """Detection losses of the high, low and fused branches against one assignment.

        Returns dict of per-replica scalars: ``loss`` (weighted by ``loss_weights()``),
        ``loss_<branch>`` and ``<branch>_<part>`` (``loss_parts``) for branch in high, low, fused.
        """
        images, boxes, classes = data["images"], data["boxes"], data["classes"]
        high, low = self.aligned_features(images, training)
        if self.stage == "fusion":
            high = [tf.stop_gradient(f) for f in high]
            low = [tf.stop_gradient(f) for f in low]
        fused, _ = self.fusion((high, low), training=training)
        outputs = dict(zip(("high", "low", "fused"), self.head_outputs_batched([high, low, fused])))
        targets = self.targets(boxes, classes, outputs["high"])
        weights = self.loss_weights()
        branch_losses = {}
        for branch, branch_outputs in outputs.items():
            parts = self.branch_loss(branch_outputs, targets)
            if weights[branch] == 0.0:
                parts = {name: tf.stop_gradient(value) for name, value in parts.items()}
            branch_losses[branch] = parts
        return self._collect(branch_losses, weights)


class MultiScaleTeacher(MultiScaleTeacherMixin, FCOSDetector):
    """The FCOS multi-scale fusion teacher (see ``MultiScaleTeacherMixin``)."""
