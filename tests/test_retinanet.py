"""RetinaNet anchors, matching, box coding, losses, head and decoding against hand-computed
values; a tiny ResNet-FPN RetinaNet (high-res and aligned low-res branches) that trains."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_two_replicas_match_one, toy_batch
from msad_tf.losses.retinanet import (
    IGNORE,
    RetinaNetTargetSpec,
    anchor_coverage,
    assign_targets,
    box_iou,
    delta_giou_loss,
    flatten_outputs,
    level_sizes,
    match_anchors,
    retinanet_losses,
)
from msad_tf.modeling.backbone import build_resnet, stage_channels
from msad_tf.modeling.fpn import FeaturePyramid
from msad_tf.modeling.postprocess import PostprocessConfig
from msad_tf.modeling.pyramid import AlignedPyramid
from msad_tf.modeling.retinanet import (
    AnchorSpec,
    BoxCoder,
    RetinaNetHead,
    feature_sizes,
    image_anchors,
    retinanet_postprocess,
)

SQUARE = AnchorSpec(anchor_size=1.0, scales=(1.0,), aspect_ratios=(1.0,))


# ------------------------------------------------------------------------------------ anchors
def test_anchors_two_levels_hand_computed():
    spec = AnchorSpec(anchor_size=1.0, scales=(1.0, 2.0), aspect_ratios=(1.0, 4.0))
    anchors = image_anchors((16, 16), (8, 16), spec).numpy()
    assert anchors.shape == (2 * 2 * 4 + 1 * 1 * 4, 4)
    # cell (0, 0) of stride 8, centre (4, 4): 8x8, 16x4 (h / w = 4), 16x16, 32x8
    np.testing.assert_allclose(anchors[:4], [[0, 0, 8, 8], [-4, 2, 12, 6], [-4, -4, 12, 12], [-12, 0, 20, 8]])
    # cell (0, 1), centre (y 4, x 12); cell (1, 0), centre (12, 4)
    np.testing.assert_allclose(anchors[4], [0, 8, 8, 16])
    np.testing.assert_allclose(anchors[8], [8, 0, 16, 8])
    # stride 16, single cell centred at (8, 8): 16x16, 32x8, 32x32, 64x16
    np.testing.assert_allclose(anchors[16:], [[0, 0, 16, 16], [-8, 4, 24, 12], [-8, -8, 24, 24], [-24, 0, 40, 16]])


def test_anchor_coverage_hand_computed():
    spec = RetinaNetTargetSpec(strides=(8, 16), anchors=SQUARE)
    # an 8x8 anchor exactly; the same box shifted by 2 px (best IoU 36 / 92 with the 8x8 anchor
    # at (0, 0), below 0.5); the single 16x16 anchor of stride 16 exactly
    boxes = [[0, 0, 8, 8], [2, 2, 10, 10], [0, 0, 16, 16]]
    result = anchor_coverage(boxes, (16, 16), spec, chunk=2)
    assert result["boxes"] == 3
    assert result["covered"] == pytest.approx(2 / 3)
    assert result["mean_best_iou"] == pytest.approx((1 + 36 / 92 + 1) / 3, rel=1e-6)
    assert result["positives_per_box"] == pytest.approx(2 / 3)


def test_default_anchor_cell_is_retinanet():
    spec = AnchorSpec()
    assert spec.num_anchors == 9
    cell = spec.cell_anchors(8)
    h, w = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    sizes = 32.0 * np.repeat([1.0, 2 ** (1 / 3), 2 ** (2 / 3)], 3)
    np.testing.assert_allclose(np.sqrt(h * w), sizes, rtol=1e-6)
    np.testing.assert_allclose(h / w, [0.5, 1, 2] * 3, rtol=1e-6)
    np.testing.assert_allclose((cell[:, 0] + cell[:, 2]) / 2, 0, atol=1e-5)


def test_feature_sizes_match_the_pyramid_and_low_anchors_are_high_over_k():
    assert feature_sizes((97, 130), (8, 16, 32, 64, 128)) == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
    pyramid = AlignedPyramid((3, 4, 5, 6, 7), k=2)
    high = image_anchors((256, 192), pyramid.strides(0))
    low = image_anchors((128, 96), pyramid.strides(pyramid.shift))
    np.testing.assert_allclose(low.numpy() * 2, high.numpy(), rtol=1e-6)


# ------------------------------------------------------------------------------------ matching
def _grid_spec():
    """4x4 grid of 8-px square anchors tiling a 32x32 image, anchor index = 4 * row + col."""
    return RetinaNetTargetSpec(strides=(8,), anchors=SQUARE)


def test_box_iou_hand_computed():
    a = tf.constant([[0.0, 0, 8, 8]])
    b = tf.constant([[0.0, 0, 8, 8], [0, 17, 8, 32], [0, 4, 8, 12], [20, 20, 30, 30], [0, 0, 0, 0]])
    np.testing.assert_allclose(box_iou(a, b).numpy(), [[1.0, 0.0, 1 / 3, 0.0, 0.0]], atol=1e-7)


def test_matching_positive_negative_ignore_best_anchor_and_padding():
    boxes = tf.constant([[
        [0.0, 0, 8, 8],      # class 1: anchor 0, IoU 1
        [16, 9, 24, 26],     # class 2: anchor 10 IoU 64/136 = 0.47 (its best), anchor 9 0.39
        [0, 17, 8, 32],      # class 0: anchor 3 IoU 64/120 = 0.53, anchor 2 56/128 = 0.44
        [8, 8, 16, 16],      # padding over anchor 5
    ]])
    classes = tf.constant([[1, 2, 0, -1]])
    targets = assign_targets(boxes, classes, [(4, 4)], _grid_spec())
    expected = np.full(16, -1)
    expected[0], expected[10], expected[3], expected[2] = 1, 2, 0, IGNORE
    np.testing.assert_array_equal(targets["labels"][0].numpy(), expected)
    coder = BoxCoder()
    np.testing.assert_allclose(targets["box_targets"][0, 0].numpy(), [0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(
        targets["box_targets"][0, 10].numpy(),
        coder.encode(boxes[0, 1], tf.constant([16.0, 16, 24, 24])).numpy(), rtol=1e-6,
    )
    assert float(tf.reduce_sum(tf.abs(targets["box_targets"][0, 4:10]))) == 0.0

    strict = RetinaNetTargetSpec(strides=(8,), anchors=SQUARE, low_quality_matches=False)
    labels = assign_targets(boxes, classes, [(4, 4)], strict)["labels"][0].numpy()
    assert labels[10] == IGNORE and labels[0] == 1 and labels[3] == 0


def test_best_anchor_goes_to_the_box_it_is_best_for():
    anchors = tf.constant([[0.0, 0, 8, 8], [0, 8, 8, 16], [0, 16, 8, 24]])
    # anchor 0 overlaps box 0 more (IoU 24/128) but is the best anchor of the small box 1
    boxes = tf.constant([[[0.0, 5, 8, 16], [0, 0, 2, 2], [0, 0, 0, 0]]])
    matched, labels = match_anchors(anchors, boxes, tf.constant([[0, 1, -1]]))
    np.testing.assert_array_equal(labels[0].numpy(), [1, 0, -1])
    np.testing.assert_array_equal(matched[0, :2].numpy(), [1, 0])


def test_image_without_boxes_is_all_negative():
    targets = assign_targets(tf.zeros([2, 3, 4]), -tf.ones([2, 3], tf.int32), [(4, 4)], _grid_spec())
    assert (targets["labels"].numpy() == -1).all()
    assert float(tf.reduce_sum(tf.abs(targets["box_targets"]))) == 0.0


# ------------------------------------------------------------------------------------ box coding
def test_encode_hand_computed_and_weights():
    anchor, box = tf.constant([0.0, 0, 8, 8]), tf.constant([2.0, 4, 10, 16])
    np.testing.assert_allclose(BoxCoder().encode(box, anchor).numpy(), [0.25, 0.75, 0, math.log(1.5)], rtol=1e-6)
    np.testing.assert_allclose(
        BoxCoder((10.0, 10.0, 5.0, 5.0)).encode(box, anchor).numpy(), [2.5, 7.5, 0, 5 * math.log(1.5)], rtol=1e-6
    )


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
    rng = np.random.default_rng(0)
    yx = rng.uniform(0, 200, [50, 2])
    hw = rng.uniform(4, 300, [50, 2])
    anchors = tf.constant(np.concatenate([yx, yx + hw], -1), tf.float32)
    yx = rng.uniform(0, 200, [50, 2])
    hw = rng.uniform(2, 400, [50, 2])
    boxes = tf.constant(np.concatenate([yx, yx + hw], -1), tf.float32)
    coder = BoxCoder(weights)
    np.testing.assert_allclose(coder.decode(coder.encode(boxes, anchors), anchors).numpy(), boxes.numpy(),
                               rtol=1e-4, atol=1e-3)


def test_decode_clips_log_sizes():
    box = BoxCoder().decode(tf.constant([0.0, 0, 50, 50]), tf.constant([0.0, 0, 16, 16])).numpy()
    np.testing.assert_allclose(box, [8 - 500, 8 - 500, 8 + 500, 8 + 500], rtol=1e-5)


# ------------------------------------------------------------------------------------ losses
def _np_focal(logits, onehot, alpha=0.25, gamma=2.0):
    p = 1 / (1 + np.exp(-logits))
    ce = -(onehot * np.log(p) + (1 - onehot) * np.log(1 - p))
    p_t = p * onehot + (1 - p) * (1 - onehot)
    return (alpha * onehot + (1 - alpha) * (1 - onehot)) * ce * (1 - p_t) ** gamma


def _np_smooth_l1(d, beta):
    d = np.abs(d)
    return np.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def _loss_case():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, [1, 5, 3]).astype(np.float32)
    box_reg = rng.normal(0, 0.3, [1, 5, 4]).astype(np.float32)
    labels = np.array([[0, -1, IGNORE, 2, -1]], np.int32)
    box_targets = rng.normal(0, 0.3, [1, 5, 4]).astype(np.float32) * (labels >= 0)[..., None]
    outputs = {"cls_logits": tf.constant(logits), "box_reg": tf.constant(box_reg)}
    targets = {"labels": tf.constant(labels), "box_targets": tf.constant(box_targets)}
    return outputs, targets, logits, box_reg, labels, box_targets


@pytest.mark.parametrize("beta", [0.1, 1 / 9, 0.0])
def test_focal_and_smooth_l1_against_numpy(beta):
    outputs, targets, logits, box_reg, labels, box_targets = _loss_case()
    losses = retinanet_losses(outputs, targets, beta=beta)
    onehot = np.eye(3)[np.maximum(labels, 0)] * (labels >= 0)[..., None]
    counted = (labels != IGNORE)[..., None]
    expected_cls = (_np_focal(logits.astype(np.float64), onehot) * counted).sum() / 2
    diff = np.abs(box_reg - box_targets).astype(np.float64)
    per = np.abs(diff) if beta == 0 else _np_smooth_l1(diff, beta)
    expected_box = (per.sum(-1) * (labels >= 0)).sum() / 2
    assert float(losses["cls"]) == pytest.approx(expected_cls, rel=1e-5)
    assert float(losses["box"]) == pytest.approx(expected_box, rel=1e-5)
    assert float(losses["total"]) == pytest.approx(expected_cls + expected_box, rel=1e-5)


def _np_giou(p, t):
    ih = max(min(p[2], t[2]) - max(p[0], t[0]), 0)
    iw = max(min(p[3], t[3]) - max(p[1], t[1]), 0)
    inter = ih * iw
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    enclose = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
    return 1 - (inter / union - (enclose - union) / enclose)


def test_giou_loss_equals_pixel_giou_of_decoded_boxes():
    outputs, targets, _, box_reg, _, box_targets = _loss_case()
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    anchors = tf.constant([[0, 0, 32, 16], [5, 5, 9, 9], [0, 0, 1, 1], [100, 40, 164, 200], [0, 0, 2, 2]], tf.float32)
    pred = coder.decode(tf.constant(box_reg[0]), anchors).numpy()
    true = coder.decode(tf.constant(box_targets[0]), anchors).numpy()
    expected = [_np_giou(pred[i], true[i]) for i in range(5)]
    got = delta_giou_loss(tf.constant(box_reg[0]), tf.constant(box_targets[0]), coder).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    losses = retinanet_losses(outputs, targets, box_loss="giou", box_coder=coder)
    assert float(losses["box"]) == pytest.approx((expected[0] + expected[3]) / 2, rel=1e-4)


def test_no_positives_does_not_divide_by_zero():
    outputs = {"cls_logits": tf.zeros([1, 3, 2]), "box_reg": tf.ones([1, 3, 4])}
    targets = {"labels": tf.constant([[-1, -1, IGNORE]]), "box_targets": tf.zeros([1, 3, 4])}
    losses = retinanet_losses(outputs, targets)
    assert float(losses["cls"]) == pytest.approx(4 * 0.75 * math.log(2) * 0.25, rel=1e-6)
    assert float(losses["box"]) == 0.0
    with pytest.raises(ValueError, match="box_loss"):
        retinanet_losses(outputs, targets, box_loss="l2")


# ------------------------------------------------------------------------------------ head
def test_head_shapes_prior_and_config():
    head = RetinaNetHead(num_classes=5, channels=16, num_convs=2, num_anchors=9, gn_groups=4)
    features = [tf.random.normal([2, 8, 6, 16]), tf.random.normal([2, 4, 3, 16])]
    out = head(features)
    assert out[0]["cls_logits"].shape == (2, 8, 6, 45)
    assert out[1]["box_reg"].shape == (2, 4, 3, 36)
    assert float(tf.reduce_mean(tf.sigmoid(out[0]["cls_logits"]))) == pytest.approx(0.01, rel=0.05)
    flat = flatten_outputs(out)
    assert flat["cls_logits"].shape == (2, (48 + 12) * 9, 5) and flat["box_reg"].shape == (2, 540, 4)
    assert [tuple(int(v) for v in s) for s in level_sizes(out)] == [(8, 6), (4, 3)]
    np.testing.assert_array_equal(flat["cls_logits"][:, 9:18].numpy(),
                                  tf.reshape(out[0]["cls_logits"][:, 0, 1], [2, 9, 5]).numpy())
    clone = RetinaNetHead.from_config(head.get_config())
    clone(features)
    assert clone.count_params() == head.count_params()
    plain = RetinaNetHead(num_classes=5, channels=16, num_convs=4, num_anchors=3, norm="none")
    plain(features)
    assert not any(isinstance(layer, keras.layers.GroupNormalization) for layer in plain.cls_tower)
    assert len(plain.cls_tower) == 8 and plain.cls_logits.bias.shape == (15,)
    with pytest.raises(ValueError, match="head norm"):
        RetinaNetHead(3, norm="bn")


# ------------------------------------------------------------------------------------ decoding
def _perfect_outputs(targets, sizes, num_anchors, num_classes):
    """Head outputs that predict the assigned targets exactly (logits +-10)."""
    outputs, start = [], 0
    for h, w in sizes:
        n = h * w * num_anchors
        labels = targets["labels"][:, start:start + n]
        onehot = tf.one_hot(tf.maximum(labels, 0), num_classes) * tf.cast(labels >= 0, tf.float32)[..., None]
        outputs.append({
            "cls_logits": tf.reshape(onehot * 20.0 - 10.0, [1, h, w, num_anchors * num_classes]),
            "box_reg": tf.reshape(targets["box_targets"][:, start:start + n], [1, h, w, num_anchors * 4]),
        })
        start += n
    return outputs


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_recovered_from_high_and_aligned_low_branch(weights):
    pyramid = AlignedPyramid((3, 4, 5, 6, 7), 2)
    coder = BoxCoder(weights)
    spec = RetinaNetTargetSpec(pyramid.strides(0), box_coder=coder)
    box = [[[40.0, 72.0, 96.0, 120.0], [150.0, 20.0, 250.0, 230.0]]]
    sizes = feature_sizes((256, 256), pyramid.strides(0))
    targets = assign_targets(tf.constant(box), tf.constant([[1, 2]]), sizes, spec)
    assert int(tf.reduce_sum(tf.cast(targets["labels"] >= 0, tf.int32))) > 2
    outputs = _perfect_outputs(targets, sizes, 9, num_classes=3)
    config = PostprocessConfig(nms_iou=0.5, max_detections=5)
    high = retinanet_postprocess(outputs, pyramid.strides(0), tf.constant([[256, 256]]), config, box_coder=coder)
    low = retinanet_postprocess(outputs, pyramid.strides(pyramid.shift), tf.constant([[128, 128]]), config,
                                box_coder=coder)
    for det, scale in ((high, 1.0), (low, 2.0)):
        assert int(det["num_detections"][0]) == 2
        order = np.argsort(det["classes"][0, :2].numpy())
        np.testing.assert_allclose(det["boxes"][0, :2].numpy()[order], np.array(box[0]) / scale, atol=1e-3)
        assert det["classes"][0, :2].numpy()[order].tolist() == [1, 2]
        assert det["boxes"].shape == (1, 5, 4) and det["scores"].shape == (1, 5)


def test_nms_is_class_wise_and_boxes_clipped_to_nothing_are_dropped():
    # one level, stride 8, 1x3 cells, one 8x8 anchor per cell; zero deltas give the cells
    out = [{"cls_logits": tf.constant([[[[5.0, -9.0], [5.0, -9.0], [-9.0, 5.0]]]]), "box_reg": tf.zeros([1, 1, 3, 4])}]
    wide = [{"cls_logits": out[0]["cls_logits"],
             "box_reg": tf.constant([[[[0.0, 0.0, 0.0, math.log(2.0)]] * 3]])}]
    # widened to 16 px and clipped: class-0 boxes [0, 0, 8, 12] and [0, 4, 8, 20], IoU 0.4
    det = retinanet_postprocess(wide, (8,), tf.constant([[8, 24]]), PostprocessConfig(), SQUARE)
    assert int(det["num_detections"][0]) == 3
    det = retinanet_postprocess(wide, (8,), tf.constant([[8, 24]]), PostprocessConfig(nms_iou=0.3), SQUARE)
    assert int(det["num_detections"][0]) == 2
    assert sorted(det["classes"][0, :2].numpy().tolist()) == [0, 1]
    det = retinanet_postprocess(out, (8,), tf.constant([[8, 8]]), PostprocessConfig(), SQUARE)
    assert int(det["num_detections"][0]) == 1
    np.testing.assert_allclose(det["boxes"][0, 0].numpy(), [0, 0, 8, 8])
    assert det["classes"].dtype == tf.int32


# ------------------------------------------------------------------------------------ tiny detector
class TinyRetinaNet(keras.Model):
    """ResNet-tiny + FPN + RetinaNetHead; ``aligned`` adds the stride-2 subsample read at the
    shifted levels, trained against the high-resolution targets."""

    def __init__(self, num_classes=3, aligned=False, box_loss="smooth_l1", norm="bn", **kwargs):
        super().__init__(**kwargs)
        self.aligned = aligned
        self.box_loss = box_loss
        self.pyramid = AlignedPyramid((3, 4, 5, 6, 7), 2)
        self.anchor_spec = AnchorSpec()
        self.backbone = build_resnet("resnet_tiny", 0.25, norm=norm)
        self.fpn = FeaturePyramid(16, min_level=self.pyramid.min_level if aligned else 3,
                                  in_channels=(16,) + stage_channels("resnet_tiny", 0.25))
        self.head = RetinaNetHead(num_classes, 16, num_convs=1, num_anchors=self.anchor_spec.num_anchors,
                                  gn_groups=4)
        self.target_spec = RetinaNetTargetSpec(self.pyramid.strides(0), self.anchor_spec)
        self.trackers = {name: keras.metrics.Mean(name=name) for name in ("loss", "high", "low")}
        dummy = tf.zeros([1, 256, 256, 3])
        self.head(self.pyramid_features(dummy))
        if aligned:
            self.head(self.pyramid_features(self.pyramid.subsample(dummy), self.pyramid.shift))

    def pyramid_features(self, images, shift=0, training=False):
        return self.fpn(self.backbone(images, training=training), levels=self.pyramid.levels(shift))

    def call(self, images, training=False):
        return self.head(self.pyramid_features(images, 0, training))

    def compute_losses(self, data, training=True):
        images = data["images"]
        high = self.head(self.pyramid_features(images, 0, training))
        targets = assign_targets(data["boxes"], data["classes"], level_sizes(high), self.target_spec)
        losses = {"high": retinanet_losses(high, targets, box_loss=self.box_loss)["total"]}
        if self.aligned:
            low = self.head(self.pyramid_features(self.pyramid.subsample(images), self.pyramid.shift, training))
            losses["low"] = retinanet_losses(low, targets, box_loss=self.box_loss)["total"]
        losses["loss"] = sum(losses.values())
        return losses

    @property
    def metrics(self):
        return list(self.trackers.values())

    def train_step(self, data):
        with tf.GradientTape() as tape:
            losses = self.compute_losses(data)
        variables = self.trainable_variables
        self.optimizer.apply(tape.gradient(losses["loss"], variables), variables)
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        for name, value in losses.items():
            self.trackers[name].update_state(value * replicas)
        return {name: self.trackers[name].result() for name in losses}


@pytest.mark.parametrize("aligned,box_loss", [(False, "smooth_l1"), (True, "giou")])
def test_tiny_retinanet_fit_lowers_the_loss(aligned, box_loss):
    keras.utils.set_random_seed(0)
    model = TinyRetinaNet(aligned=aligned, box_loss=box_loss)
    batch = toy_batch(batch=2, size=128)
    before = {k: float(v) for k, v in model.compute_losses(batch, training=False).items()}
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9, clipnorm=10.0))
    history = model.fit(tf.data.Dataset.from_tensors(batch).repeat(30), epochs=1, verbose=0, shuffle=False)
    after = {k: float(v) for k, v in model.compute_losses(batch, training=False).items()}
    assert np.isfinite(history.history["loss"][-1])
    assert after["loss"] < 0.5 * before["loss"], (before, after)
    if aligned:
        assert after["low"] < before["low"]
    det = retinanet_postprocess(model(batch["images"]), model.pyramid.strides(0), tf.constant([[128, 128]] * 2),
                                PostprocessConfig(max_detections=10))
    assert det["boxes"].shape == (2, 10, 4)


def test_losses_summed_over_replicas_equal_the_global_batch_loss():
    from msad_tf.training.strategy import mirrored_strategy

    rng = np.random.default_rng(2)
    outputs = {"cls_logits": tf.constant(rng.normal(0, 2, [4, 6, 3]), tf.float32),
               "box_reg": tf.constant(rng.normal(0, 0.3, [4, 6, 4]), tf.float32)}
    labels = np.full([4, 6], -1, np.int32)
    labels[0, :3], labels[1, 0], labels[2, 5], labels[3, 1] = 1, 0, 2, IGNORE
    targets = {"labels": tf.constant(labels),
               "box_targets": tf.constant(rng.normal(0, 0.3, [4, 6, 4]) * (labels >= 0)[..., None], tf.float32)}
    single = retinanet_losses(outputs, targets)
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    split = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(lambda t: t[2 * ctx.replica_id_in_sync_group:][:2], (outputs, targets))
    )
    per_replica = strategy.run(lambda args: retinanet_losses(*args), args=(split,))
    for key in ("cls", "box", "total"):
        summed = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[key], axis=None)
        assert float(summed) == pytest.approx(float(single[key]), rel=1e-5), key


@pytest.mark.slow
def test_two_replicas_match_one_with_uneven_positives():
    batch = toy_batch(batch=4, size=128)
    keep = tf.constant([[[1.0], [1.0], [0.0]]] * 2 + [[[1.0], [0.0], [0.0]]] * 2)
    batch["boxes"] = batch["boxes"] * keep
    batch["classes"] = tf.where(keep[..., 0] > 0, batch["classes"], -1)
    logs = assert_two_replicas_match_one(lambda: TinyRetinaNet(aligned=True, norm="sync_bn"), batch)
    assert set(logs) == {"loss", "high", "low"}
