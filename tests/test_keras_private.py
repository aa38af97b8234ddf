"""The private Keras / tf.distribute attributes msad_tf relies on (msad_tf/keras_private.py)
still exist and behave as used: a Keras or TensorFlow upgrade that changes one fails here."""
import keras
import numpy as np
import tensorflow as tf

from msad_tf import keras_private


def test_nested_layers_lists_every_layer_inside():
    inner = keras.Sequential([keras.layers.Dense(2, name="a"), keras.layers.Dense(2, name="b")], name="inner")

    class Outer(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="outer")
            self.inner = inner
            self.head = keras.layers.Dense(1, name="c")

    outer = Outer()
    names = [layer.name for layer in keras_private.nested_layers(outer)]
    assert sorted(names) == ["a", "b", "c", "inner"] and len(names) == 4
    assert [layer.name for layer in keras_private.nested_layers(outer, include_self=True)][0] == "outer"
    assert keras_private.nested_layers(keras.layers.Dense(1)) == []


def test_in_multi_worker_mode_is_false_for_one_local_worker():
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    assert keras_private.in_multi_worker_mode(strategy) is False


def test_strategy_from_scope_detaches_and_restores_the_creation_strategy():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        model.compile(optimizer="sgd", loss="mse")
    assert model._distribute_strategy is strategy
    with keras_private.strategy_from_scope(model), strategy.scope():
        assert model._distribute_strategy is None
        model.fit(np.ones((4, 3)), np.ones((4, 1)), epochs=1, verbose=0)
    assert model._distribute_strategy is strategy


def test_optimizer_slot_finds_each_variables_slots():
    """After one step with gradient g from zero slots: Adam's first moment is (1 - beta_1) g and
    its second (1 - beta_2) g^2; SGD's momentum is -lr g, each for its own variable."""
    import numpy as np
    import tensorflow as tf

    from msad_tf.keras_private import optimizer_slot

    weights = [keras.Variable(np.zeros(2, np.float32), name=f"w{i}") for i in range(3)]
    grads = [tf.constant([1.0 + i, -2.0 * i]) for i in range(3)]
    adam = keras.optimizers.Adam(0.1, beta_1=0.9, beta_2=0.99)
    sgd = keras.optimizers.SGD(0.5, momentum=0.9)
    adam.apply(grads, weights)
    sgd_weights = [keras.Variable(np.zeros(2, np.float32), name=f"v{i}") for i in range(3)]
    sgd.apply(grads, sgd_weights)
    for weight, grad in zip(weights, grads):
        np.testing.assert_allclose(optimizer_slot(adam, "_momentums", weight).numpy(), 0.1 * grad.numpy(), rtol=1e-6)
        np.testing.assert_allclose(optimizer_slot(adam, "_velocities", weight).numpy(), 0.01 * grad.numpy() ** 2,
                                   rtol=1e-5)
    for weight, grad in zip(sgd_weights, grads):
        np.testing.assert_allclose(optimizer_slot(sgd, "momentums", weight).numpy(), -0.5 * grad.numpy(), rtol=1e-6)


def test_profiler_trace_proto_reads_an_xspace():
    from msad_tf.keras_private import profiler_trace_proto

    space = profiler_trace_proto().XSpace()
    space.planes.add(name="/host:CPU")
    assert profiler_trace_proto().XSpace.FromString(space.SerializeToString()).planes[0].name == "/host:CPU"
