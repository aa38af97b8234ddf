"""FCOS targets and losses against hand-computed values."""
import math

import numpy as np
import pytest
import tensorflow as tf

from msad_tf.losses.fcos import FCOSTargetSpec, assign_targets, fcos_losses, sigmoid_focal_loss
from msad_tf.modeling.boxes import decode_ltrb, giou_loss_ltrb, pyramid_locations


def test_giou_hand_computed():
    pred = tf.constant([[1.0, 1, 1, 1], [1, 1, 1, 1], [1, 0, 1, 2]])
    target = tf.constant([[1.0, 1, 1, 1], [2, 2, 2, 2], [0, 1, 2, 1]])
    # identical; nested (IoU 1/4, enclosure = union); crossing (IoU 1/7, enclosure 9, union 7)
    expected = [0.0, 0.75, 1.0 - (1 / 7 - 2 / 9)]
    np.testing.assert_allclose(giou_loss_ltrb(pred, target).numpy(), expected, atol=1e-6)


def test_focal_hand_computed():
    loss = sigmoid_focal_loss(tf.constant([0.0, 0.0, 2.0]), tf.constant([1.0, 0.0, 1.0]))
    p = 1 / (1 + math.exp(-2.0))
    expected = [0.25 * math.log(2) * 0.25, 0.75 * math.log(2) * 0.25, 0.25 * -math.log(p) * (1 - p) ** 2]
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)


def test_locations_follow_fcos_convention():
    locs, strides, levels = pyramid_locations([(2, 2), (1, 1)], [8, 16])
    np.testing.assert_array_equal(locs.numpy(), [[4, 4], [4, 12], [12, 4], [12, 12], [8, 8]])
    np.testing.assert_array_equal(strides.numpy(), [8, 8, 8, 8, 16])
    np.testing.assert_array_equal(levels.numpy(), [0, 0, 0, 0, 1])


def test_assignment_centre_sampling_and_smallest_box():
    spec = FCOSTargetSpec(strides=(8,), size_ranges=((0, 1e8),), center_radius=1.5)
    boxes = tf.constant([[[0.0, 0, 16, 16], [8, 8, 16, 16], [0, 0, 0, 0]]])
    classes = tf.constant([[1, 2, -1]])
    t = assign_targets(boxes, classes, [(4, 4)], spec)
    labels = t["labels"].numpy().reshape(4, 4)
    expected = np.full((4, 4), -1)
    expected[0, 0] = expected[0, 1] = expected[1, 0] = 1
    expected[1, 1] = 2
    np.testing.assert_array_equal(labels, expected)
    # location (y=4, x=4) in box 1: l=t=4, r=b=12 -> /8
    np.testing.assert_allclose(t["box_targets"][0, 0].numpy(), [0.5, 0.5, 1.5, 1.5])
    np.testing.assert_allclose(t["centerness"][0, 0].numpy(), 1 / 3, rtol=1e-6)
    # location (12, 12) goes to the smaller box 2: l=t=4, r=b=4 -> centerness 1
    np.testing.assert_allclose(t["box_targets"][0, 5].numpy(), [0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(t["centerness"][0, 5].numpy(), 1.0)
    assert float(tf.reduce_sum(t["centerness"][0, 2:4])) == 0.0


def test_assignment_size_ranges_pick_the_level():
    spec = FCOSTargetSpec(strides=(8, 16), size_ranges=((0, 10), (10, 1e8)), center_radius=1.5)
    boxes = tf.constant([[[0.0, 0, 32, 32]]])
    t = assign_targets(boxes, tf.constant([[0]]), [(4, 4), (2, 2)], spec)
    labels = t["labels"].numpy()[0]
    assert (labels[:16] == -1).all()
    assert (labels[16:] == 0).all()
    np.testing.assert_allclose(
        decode_ltrb(tf.constant([[8.0, 8.0]]), t["box_targets"][0, 16:17], tf.constant([16.0])).numpy(),
        [[0, 0, 32, 32]],
    )


def test_assignment_equals_the_dense_reference():
    """The matched box is gathered first and its (l, t, r, b) computed per location; the dense
    form (l, t, r, b) of every (location, box) pair, then a gather, gives the same targets."""
    spec = FCOSTargetSpec(strides=(8, 16, 32), size_ranges=((0, 16), (16, 32), (32, 1e8)), center_radius=1.5)
    sizes = [(8, 8), (4, 4), (2, 2)]
    rng = np.random.default_rng(0)
    corners = np.sort(rng.uniform(0, 64, size=(3, 10, 2, 2)), axis=2)
    boxes = tf.constant(np.concatenate([corners[:, :, 0], corners[:, :, 1]], -1), tf.float32)
    classes = tf.constant(np.where(rng.uniform(size=(3, 10)) < 0.8, rng.integers(0, 4, (3, 10)), -1), tf.int32)
    got = assign_targets(boxes, classes, sizes, spec)

    locations, strides, levels = pyramid_locations(sizes, spec.strides)
    y, x = locations[None, :, 0, None], locations[None, :, 1, None]
    ltrb = tf.stack([x - boxes[:, None, :, 1], y - boxes[:, None, :, 0], boxes[:, None, :, 3] - x,
                     boxes[:, None, :, 2] - y], axis=-1)
    areas = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    ranges = np.array(spec.size_ranges, np.float32)[levels.numpy()]
    max_reg = tf.reduce_max(ltrb, -1)
    radius = strides[None, :, None] * spec.center_radius
    cy, cx = (boxes[..., 0] + boxes[..., 2])[:, None] / 2, (boxes[..., 1] + boxes[..., 3])[:, None] / 2
    inside = ((tf.abs(x - cx) < radius) & (tf.abs(y - cy) < radius) & (tf.reduce_min(ltrb, -1) > 0)
              & (max_reg >= ranges[None, :, 0, None]) & (max_reg <= ranges[None, :, 1, None])
              & (classes >= 0)[:, None, :])
    area = tf.where(inside, areas[:, None, :], np.inf)
    best = tf.argmin(area, -1, output_type=tf.int32)
    positive = tf.reduce_min(area, -1) < np.inf
    matched = tf.gather(ltrb, best, axis=2, batch_dims=2)
    assert 20 < int(tf.reduce_sum(tf.cast(positive, tf.int32))) < positive.shape[0] * positive.shape[1]
    np.testing.assert_array_equal(got["labels"].numpy(),
                                  tf.where(positive, tf.gather(classes, best, batch_dims=1), -1).numpy())
    expected = matched / strides[None, :, None] * tf.cast(positive, tf.float32)[..., None]
    np.testing.assert_array_equal(got["box_targets"].numpy(), expected.numpy())


def test_loss_values_hand_computed():
    outputs = {
        "cls_logits": tf.zeros([1, 2, 1]),
        "box_reg": tf.constant([[[1.0, 1, 1, 1], [1, 1, 1, 1]]]),
        "centerness": tf.zeros([1, 2]),
    }
    targets = {
        "labels": tf.constant([[0, -1]]),
        "box_targets": tf.constant([[[1.0, 1, 1, 1], [0, 0, 0, 0]]]),
        "centerness": tf.constant([[0.5, 0.0]]),
    }
    losses = fcos_losses(outputs, targets)
    focal_pos = 0.25 * math.log(2) * 0.25
    focal_neg = 0.75 * math.log(2) * 0.25
    assert float(losses["cls"]) == pytest.approx(focal_pos + focal_neg, rel=1e-6)
    assert float(losses["box"]) == pytest.approx(0.0, abs=1e-6)
    assert float(losses["ctr"]) == pytest.approx(math.log(2), rel=1e-6)
    assert float(losses["total"]) == pytest.approx(focal_pos + focal_neg + math.log(2), rel=1e-6)


def test_no_positives_does_not_divide_by_zero():
    outputs = {"cls_logits": tf.zeros([1, 3, 2]), "box_reg": tf.ones([1, 3, 4]), "centerness": tf.zeros([1, 3])}
    targets = {"labels": -tf.ones([1, 3], tf.int32), "box_targets": tf.zeros([1, 3, 4]),
               "centerness": tf.zeros([1, 3])}
    losses = fcos_losses(outputs, targets)
    assert np.isfinite(float(losses["total"]))
    assert float(losses["cls"]) == pytest.approx(6 * 0.75 * math.log(2) * 0.25, rel=1e-6)
