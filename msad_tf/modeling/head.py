"""FCOS head: shared GroupNorm towers, per-level Scale, centerness on the regression tower."""
from __future__ import annotations

import math

import keras
from keras import ops


def conv_tower(name: str, channels: int, num_convs: int, gn_groups: int | None, init) -> list:
    """Layers of a head tower: ``num_convs`` x (3x3 conv with kernel initializer ``init``;
    GroupNorm unless ``gn_groups`` is None; ReLU), named ``{name}_conv{i}``, ``{name}_gn{i}``,
    ``{name}_relu{i}``. The head passes its one initializer, so a seed gives the same weights as
    before this helper existed."""
    layers = []
    for i in range(num_convs):
        layers.append(keras.layers.Conv2D(channels, 3, padding="same", kernel_initializer=init,
                                          name=f"{name}_conv{i}"))
        if gn_groups is not None:
            layers.append(keras.layers.GroupNormalization(gn_groups, epsilon=1e-5, name=f"{name}_gn{i}"))
        layers.append(keras.layers.ReLU(name=f"{name}_relu{i}"))
    return layers


def run_tower(tower: list, feature):
    """``feature`` [B, h, w, C] through the layers of a ``conv_tower``: [B, h, w, channels]."""
    for layer in tower:
        feature = layer(feature)
    return feature


def prior_bias(prior_prob: float) -> float:
    """Classification bias whose sigmoid is ``prior_prob`` (Lin et al.'s prior initialisation)."""
    return -math.log((1 - prior_prob) / prior_prob)


def tower_head_layers(channels: int, num_convs: int, gn_groups: int | None, cls_filters: int,
                      box_filters: int, prior_prob: float, init) -> tuple:
    """The layers the FCOS and RetinaNet heads share, made in this order: the ``cls_tower`` and
    ``box_tower`` (``conv_tower``), the 3x3 ``cls_logits`` conv of ``cls_filters`` outputs with
    bias ``prior_bias(prior_prob)`` and the 3x3 ``box_pred`` conv of ``box_filters`` outputs,
    all with kernel initializer ``init``. Returns (cls_tower, box_tower, cls_logits, box_pred)."""
    cls_tower = conv_tower("cls_tower", channels, num_convs, gn_groups, init)
    box_tower = conv_tower("box_tower", channels, num_convs, gn_groups, init)
    cls_logits = keras.layers.Conv2D(
        cls_filters,
        3,
        padding="same",
        kernel_initializer=init,
        bias_initializer=keras.initializers.Constant(prior_bias(prior_prob)),
        name="cls_logits",
    )
    box_pred = keras.layers.Conv2D(box_filters, 3, padding="same", kernel_initializer=init, name="box_pred")
    return cls_tower, box_tower, cls_logits, box_pred


class FCOSHead(keras.layers.Layer):
    """Classification, box regression and centerness over a list of pyramid levels.

    The towers are shared by all levels; level i of the input list is multiplied by the
    learnable scalar ``scales[i]`` before the ReLU of the regression output, so an aligned
    low-resolution level P'_{s-m} uses the same Scale as P_s.

    Args:
      num_classes: C.
      channels: input and tower channels.
      num_convs: 3x3 conv + GroupNorm + ReLU blocks per tower.
      num_levels: number of levels (Scales).
    Call:
      features: list of num_levels maps [B, H_i, W_i, channels].
    Returns:
      list over levels of dicts: cls_logits [B, H_i, W_i, C], box_reg [B, H_i, W_i, 4]
      (l, t, r, b distances in units of the level stride), centerness [B, H_i, W_i] (logits).
    """

    def __init__(
        self,
        num_classes: int,
        channels: int = 256,
        num_convs: int = 4,
        gn_groups: int = 32,
        num_levels: int = 5,
        prior_prob: float = 0.01,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.channels = channels
        self.num_convs = num_convs
        self.gn_groups = gn_groups
        self.num_levels = num_levels
        self.prior_prob = prior_prob
        init = keras.initializers.RandomNormal(stddev=0.01)
        self.cls_tower, self.box_tower, self.cls_logits, self.box_pred = tower_head_layers(
            channels, num_convs, gn_groups, num_classes, 4, prior_prob, init
        )
        self.centerness = keras.layers.Conv2D(
            1, 3, padding="same", kernel_initializer=init, name="centerness"
        )

    def build(self, input_shape=None):
        shape = (None, None, None, self.channels)
        for layer in self.cls_tower + self.box_tower:
            layer.build(shape)
        for layer in (self.cls_logits, self.box_pred, self.centerness):
            layer.build(shape)
        self.scales = self.add_weight(
            name="scales", shape=(self.num_levels,), initializer="ones", trainable=True
        )
        self.built = True

    def call(self, features):
        if len(features) != self.num_levels:
            raise ValueError(f"head built for {self.num_levels} levels, got {len(features)}")
        outputs = []
        for i, feature in enumerate(features):
            cls = run_tower(self.cls_tower, feature)
            box = run_tower(self.box_tower, feature)
            outputs.append(
                {
                    "cls_logits": self.cls_logits(cls),
                    "box_reg": ops.relu(self.scales[i] * self.box_pred(box)),
                    "centerness": ops.squeeze(self.centerness(box), -1),
                }
            )
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            channels=self.channels,
            num_convs=self.num_convs,
            gn_groups=self.gn_groups,
            num_levels=self.num_levels,
            prior_prob=self.prior_prob,
        )
        return config
