"""Crossing feature-level fusion (C-FF) and its ablation variants."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from msad_tf.modeling.fusion import FUSION_MODES, CrossFeatureFusion, PyramidFusion


def _pair(batch=2, size=4, channels=8, seed=0):
    rng = np.random.default_rng(seed)
    high = rng.normal(size=(batch, size, size, channels)).astype(np.float32)
    low = rng.normal(loc=0.5, size=(batch, size, size, channels)).astype(np.float32)
    return tf.constant(high), tf.constant(low)


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def test_cff_weights_sum_to_one_and_depend_on_input():
    keras.utils.set_random_seed(0)
    layer = CrossFeatureFusion("cff", reduction=2)
    high, low = _pair(batch=3, channels=8)
    fused, weights = layer((high, low))
    assert fused.shape == (3, 4, 4, 8)
    assert weights.shape == (3, 2)
    np.testing.assert_allclose(weights.numpy().sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(weights.numpy() > 0)
    w = weights.numpy()
    assert np.abs(w[0] - w[1]).max() > 1e-4
    _, other = layer((high * 3.0 + 1.0, low))
    assert np.abs(other.numpy() - w).max() > 1e-4
    expected = w[:, 0, None, None, None] * high.numpy() + w[:, 1, None, None, None] * low.numpy()
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_cff_hand_checked_value():
    layer = CrossFeatureFusion("cff", reduction=1, channels=2)
    layer.build(None)
    k1 = np.array(
        [[0.5, -1.0, 0.2, 0.0], [1.0, 0.5, -0.3, 0.1], [-0.5, 0.25, 0.4, 1.0], [0.3, 0.0, -1.0, 0.5]],
        np.float32,
    )
    k2 = np.array([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.5], [0.25, -0.75]], np.float32)
    assert layer.fc1.kernel.shape == (4, 4) and layer.fc2.kernel.shape == (4, 2)
    layer.fc1.kernel.assign(k1)
    layer.fc2.kernel.assign(k2)
    high = np.array([[[[1.0, 2.0], [3.0, -1.0]], [[0.0, 1.0], [2.0, 2.0]]]], np.float32)
    low = np.array([[[[-1.0, 0.5], [2.0, 1.5]], [[1.0, 0.0], [0.0, 3.0]]]], np.float32)
    fused, weights = layer((tf.constant(high), tf.constant(low)))

    pooled = np.concatenate([high.mean(axis=(1, 2)), low.mean(axis=(1, 2))], axis=-1)
    np.testing.assert_allclose(pooled, [[1.5, 1.0, 0.5, 1.25]])
    h = _softmax(np.maximum(pooled @ k1, 0.0) @ k2)
    expected = h[:, 0] * high + h[:, 1] * low
    np.testing.assert_allclose(weights.numpy(), h, rtol=1e-6)
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(pooled @ k1, [[1.875, -0.875, -1.05, 1.225]], rtol=1e-6)
    logits = np.array([[1.875 * 1.0 + 1.225 * 0.25, 1.875 * -1.0 + 1.225 * -0.75]])
    np.testing.assert_allclose(logits, [[2.18125, -2.79375]])
    h0 = 1.0 / (1.0 + np.exp(-4.975))
    np.testing.assert_allclose(weights.numpy(), [[h0, 1.0 - h0]], rtol=1e-6)
    np.testing.assert_allclose(fused.numpy()[0, 0, 0], [h0 - (1 - h0), 2 * h0 + 0.5 * (1 - h0)], rtol=1e-6)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_variant_output_shapes(mode):
    keras.utils.set_random_seed(0)
    layer = CrossFeatureFusion(mode, reduction=4)
    high, low = _pair(batch=2, size=5, channels=8)
    fused, weights = layer((high, low))
    assert fused.shape == (2, 5, 5, 8)
    assert weights.shape == ((2, 2, 8) if mode == "channel" else (2, 2))
    assert np.all(np.isfinite(fused.numpy()))


def test_sigmoid_weights_are_independent():
    layer = CrossFeatureFusion("sigmoid", reduction=1, channels=2)
    layer.build(None)
    layer.fc1.kernel.assign(np.full((4, 4), 0.5, np.float32))
    layer.fc2.kernel.assign(np.array([[1.0, 0.5]] * 4, np.float32))
    high, low = _pair(batch=2, size=3, channels=2)
    high = tf.abs(high) + 1.0
    low = tf.abs(low) + 1.0
    fused, weights = layer((high, low))
    w = weights.numpy()
    assert np.all((w > 0) & (w < 1))
    assert np.all(np.abs(w.sum(axis=1) - 1.0) > 0.1)
    pooled = np.concatenate([high.numpy().mean(axis=(1, 2)), low.numpy().mean(axis=(1, 2))], -1)
    logits = np.maximum(pooled @ np.full((4, 4), 0.5), 0) @ np.array([[1.0, 0.5]] * 4)
    np.testing.assert_allclose(w, 1 / (1 + np.exp(-logits)), rtol=1e-5)
    expected = w[:, 0, None, None, None] * high.numpy() + w[:, 1, None, None, None] * low.numpy()
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5)


def test_channel_weights_sum_to_one_per_channel():
    keras.utils.set_random_seed(0)
    layer = CrossFeatureFusion("channel", reduction=2)
    high, low = _pair(batch=2, size=4, channels=6)
    fused, weights = layer((high, low))
    w = weights.numpy()
    assert w.shape == (2, 2, 6)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    assert np.abs(w[:, 0, :] - w[:, 0, :1]).max() > 1e-5
    expected = w[:, None, None, 0, :] * high.numpy() + w[:, None, None, 1, :] * low.numpy()
    np.testing.assert_allclose(fused.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert layer.fc2.kernel.shape == (6, 12)


@pytest.mark.parametrize("mode", ["sc_sum", "cc"])
def test_static_variants(mode):
    keras.utils.set_random_seed(0)
    layer = CrossFeatureFusion(mode, channels=4)
    layer.build(None)
    high, low = _pair(batch=3, size=4, channels=4)
    fused, weights = layer((high, low))
    np.testing.assert_array_equal(weights.numpy(), np.full((3, 2), 0.5, np.float32))
    if mode == "sc_sum":
        expected = layer.conv_high(high) + layer.conv_low(low)
        assert len(layer.trainable_weights) == 4
    else:
        expected = layer.conv(tf.concat([high, low], -1))
        assert layer.conv.kernel.shape == (3, 3, 8, 4)
    np.testing.assert_allclose(fused.numpy(), expected.numpy(), rtol=1e-6)


def test_shared_and_per_level_modules():
    keras.utils.set_random_seed(0)
    shared = PyramidFusion("cff", reduction=4, shared=True, num_levels=5, channels=8)
    per_level = PyramidFusion("cff", reduction=4, shared=False, num_levels=5, channels=8)
    shared.build()
    per_level.build()
    assert len(shared.fusion_modules) == 1 and len(per_level.fusion_modules) == 5
    assert len(shared.trainable_weights) == 2
    assert len(per_level.trainable_weights) == 10
    per_module = 16 * 4 + 4 * 2
    assert sum(int(np.prod(w.shape)) for w in shared.trainable_weights) == per_module
    assert sum(int(np.prod(w.shape)) for w in per_level.trainable_weights) == 5 * per_module

    sizes = [4, 4, 4, 2, 1]
    rng = np.random.default_rng(3)
    pair = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
    high = [tf.constant(rng.normal(size=(2, s, s, 8)), tf.float32) for s in sizes]
    low = [tf.constant(rng.normal(size=(2, s, s, 8)), tf.float32) for s in sizes]
    high[0], low[0] = tf.constant(pair), tf.constant(pair + 1.0)
    high[1], low[1] = tf.constant(pair), tf.constant(pair + 1.0)
    for fusion in (shared, per_level):
        fused, weights = fusion((high, low))
        assert [f.shape for f in fused] == [(2, s, s, 8) for s in sizes]
        assert [w.shape for w in weights] == [(2, 2)] * 5
    _, w_shared = shared((high, low))
    _, w_level = per_level((high, low))
    np.testing.assert_allclose(w_shared[0].numpy(), w_shared[1].numpy(), rtol=1e-6)
    assert np.abs(w_level[0].numpy() - w_level[1].numpy()).max() > 1e-5


def test_invalid_mode():
    with pytest.raises(ValueError, match="fusion mode"):
        CrossFeatureFusion("attention")


@pytest.mark.parametrize("mode", ["cff", "channel", "cc"])
def test_config_round_trip(mode):
    keras.utils.set_random_seed(0)
    layer = CrossFeatureFusion(mode, reduction=2, name="cff_test")
    high, low = _pair(batch=2, size=3, channels=4)
    fused, weights = layer((high, low))
    config = layer.get_config()
    assert config["mode"] == mode and config["reduction"] == 2 and config["channels"] == 4
    clone = CrossFeatureFusion.from_config(config)
    clone.build(None)
    clone.set_weights(layer.get_weights())
    fused2, weights2 = clone((high, low))
    np.testing.assert_array_equal(fused2.numpy(), fused.numpy())
    np.testing.assert_array_equal(weights2.numpy(), weights.numpy())

    pyramid = PyramidFusion(mode, reduction=2, shared=False, num_levels=2, channels=4)
    pyramid.build()
    out = pyramid(([high, high], [low, low]))
    config = pyramid.get_config()
    assert {k: config[k] for k in ("mode", "reduction", "shared", "num_levels", "channels")} == {
        "mode": mode, "reduction": 2, "shared": False, "num_levels": 2, "channels": 4
    }
    clone = PyramidFusion.from_config(config)
    clone.build()
    clone.set_weights(pyramid.get_weights())
    out2 = clone(([high, high], [low, low]))
    for a, b in zip(out[0] + out[1], out2[0] + out2[1]):
        np.testing.assert_array_equal(b.numpy(), a.numpy())
