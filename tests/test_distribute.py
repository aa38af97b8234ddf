"""One train step under MirroredStrategy on 2 logical CPUs equals the single-replica step."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config, toy_batch
from msad_tf.modeling.detector import FCOSDetector
from msad_tf.training.strategy import mirrored_strategy


def _one_step(strategy, mode, weights, batch):
    with strategy.scope():
        model = FCOSDetector(tiny_model_config(), num_classes=3, train_mode=mode)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    ds = tf.data.Dataset.from_tensors(batch)
    history = model.fit(ds, epochs=1, verbose=0)
    return history.history, [w.numpy() for w in model.trainable_weights]


@pytest.mark.parametrize("mode", ["single", "aligned"])
def test_two_replicas_match_one(mode):
    assert len(tf.config.list_logical_devices("CPU")) >= 2
    keras.utils.set_random_seed(1)
    reference = FCOSDetector(tiny_model_config(), num_classes=3, train_mode=mode)
    weights = reference.get_weights()
    initial = [w.numpy() for w in reference.trainable_weights]
    batch = toy_batch(batch=4, size=128)
    one = tf.distribute.OneDeviceStrategy("/cpu:0")
    two = mirrored_strategy(["/cpu:0", "/cpu:1"])
    assert two.num_replicas_in_sync == 2
    logs1, w1 = _one_step(one, mode, weights, batch)
    logs2, w2 = _one_step(two, mode, weights, batch)
    for key in logs1:
        np.testing.assert_allclose(logs2[key], logs1[key], rtol=1e-4, err_msg=key)
    assert len(w1) == len(initial)
    assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(w1, initial))
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)
