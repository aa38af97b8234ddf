"""The fused optimizers (one TensorFlow kernel per variable) against Keras's own, step by step."""
import numpy as np
import keras
import pytest
import tensorflow as tf

from msad_tf.config import config_from_dict
from msad_tf.training.optimizers import CoupledSGD, FusedAdamW

SCHEDULE = dict(boundaries=[2], values=[1e-2, 1e-3])


def _train(make_optimizer, steps=4, jit_compile=False, strategy=None):
    """Weights of a kernel (decayed) and a bias (excluded) after ``steps`` updates with
    gradients that depend on the weights and the step (so a wrong moment or bias correction
    changes the result)."""
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        kernel = keras.Variable(np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), name="kernel")
        bias = keras.Variable(np.array([0.5, -0.3, 0.2, 0.1], np.float32), name="bias")
        optimizer = make_optimizer()
        optimizer.build([kernel, bias])

    @tf.function(jit_compile=jit_compile)
    def step(i):
        def replica_step():
            share = 1.0 / strategy.num_replicas_in_sync
            grads = [tf.sin(kernel * (i + 1.0)) * share, tf.cos(bias + i) * (0.1 * share)]
            optimizer.apply(grads, [kernel, bias])

        strategy.run(replica_step)

    for i in range(steps):
        step(tf.constant(float(i)))
    copies = [getattr(v.value, "values", (v.value,)) for v in (kernel, bias)]
    for copy in copies:
        for replica in copy[1:]:
            np.testing.assert_array_equal(replica.numpy(), copy[0].numpy())
    return kernel.numpy(), bias.numpy()


def _keras_adamw():
    optimizer = keras.optimizers.AdamW(keras.optimizers.schedules.PiecewiseConstantDecay(**SCHEDULE),
                                       weight_decay=0.05)
    optimizer.exclude_from_weight_decay(var_names=["bias"])
    return optimizer


def _fused_adamw():
    return FusedAdamW(keras.optimizers.schedules.PiecewiseConstantDecay(**SCHEDULE), decay=0.05,
                      decay_exclude=["bias"])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fused_adamw_equals_keras_adamw(jit_compile):
    expected = _train(_keras_adamw)
    got = _train(_fused_adamw, jit_compile=jit_compile)
    start = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    assert np.abs(expected[0] - start).min() > 1e-3
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-6, rtol=0)


def test_fused_adamw_decays_only_what_it_should():
    """Zero gradients: Adam's step is 0, so only the decoupled decay moves the weights,
    by the factor (1 - lr * decay) per step on the kernel and not at all on the bias."""
    kernel = keras.Variable(np.ones(2, np.float32), name="kernel")
    bias = keras.Variable(np.ones(2, np.float32), name="bias")
    optimizer = FusedAdamW(0.1, decay=0.5, decay_exclude=["bias"])
    for _ in range(3):
        optimizer.apply([tf.zeros(2), tf.zeros(2)], [kernel, bias])
    np.testing.assert_allclose(kernel.numpy(), (1 - 0.1 * 0.5) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_equals_keras_sgd(nesterov):
    def make(fused):
        return lambda: CoupledSGD(keras.optimizers.schedules.PiecewiseConstantDecay(**SCHEDULE), momentum=0.9,
                                  nesterov=nesterov, l2=0.01, l2_exclude=["bias"], fused=fused)

    expected, got = _train(make(False)), _train(make(True))
    for e, g in zip(expected, got):
        np.testing.assert_allclose(g, e, atol=1e-7, rtol=0)


def test_fused_optimizers_on_two_replicas_equal_one():
    """Under MirroredStrategy over 2 logical CPUs the kernels update each replica's copy of the
    weights and slots: every copy is equal (``_train`` checks) and equals the default strategy's
    result (each replica contributes half of the gradient, which the all-reduce sums)."""
    from msad_tf.training.strategy import mirrored_strategy

    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:2]
    assert len(devices) == 2
    sgd = lambda: CoupledSGD(0.01, momentum=0.9, l2=0.01, l2_exclude=["bias"])  # noqa: E731
    for make in (_fused_adamw, sgd):
        one = _train(make)
        two = _train(make, strategy=mirrored_strategy(devices))
        for a, b in zip(one, two):
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)


def test_make_optimizer_fuses_unless_told_not_to():
    from msad_tf.training.train import make_optimizer

    adamw = {"optimizer": "adamw", "weight_decay": 0.05}
    assert isinstance(make_optimizer(config_from_dict({"train": adamw}), 10), FusedAdamW)
    plain = make_optimizer(config_from_dict({"train": {**adamw, "fused_optimizer": False}}), 10)
    assert type(plain) is keras.optimizers.AdamW
    sgd = make_optimizer(config_from_dict({"train": {"weight_decay": 1e-4}}), 10)
    assert isinstance(sgd, CoupledSGD) and sgd.fused
    assert not make_optimizer(config_from_dict({"train": {"fused_optimizer": False}}), 10).fused


def test_fused_optimizers_round_trip_their_config():
    adamw = FusedAdamW.from_config(_fused_adamw().get_config())
    assert adamw.decay == 0.05 and adamw.decay_exclude == ("bias",)
    with pytest.raises(ValueError, match="decay="):
        FusedAdamW(0.1, weight_decay=0.05)
    sgd = CoupledSGD.from_config(CoupledSGD(0.1, momentum=0.9, fused=False).get_config())
    assert sgd.fused is False and sgd.momentum == 0.9
