"""The only place msad_tf touches private Keras / TensorFlow attributes and modules.

Each wrapper names why no public API does the job; tests/test_keras_private.py checks that
every attribute still exists and behaves as used here, so a Keras or TensorFlow upgrade that
removes one fails there, loudly, instead of somewhere in training.
"""
from __future__ import annotations

import contextlib

import keras


def nested_layers(layer: keras.layers.Layer, include_self: bool = False) -> list:
    """Every layer inside ``layer``, at any depth (``Layer._flatten_layers``). Keras has no public
    recursive listing for a Layer that is not a functional Model (``Model.layers`` is one level)."""
    return list(layer._flatten_layers(include_self=include_self))


def in_multi_worker_mode(strategy) -> bool:
    """Whether a MultiWorkerMirroredStrategy spans several workers (``extended._in_multi_worker_mode``,
    the test Keras itself uses; a one-worker MWMS behaves like MirroredStrategy)."""
    return bool(strategy.extended._in_multi_worker_mode())


@contextlib.contextmanager
def strategy_from_scope(model: keras.Model):
    """Within the block, ``model`` takes its strategy from the enclosing scope instead of the one
    it was created under (``Model._distribute_strategy``): Keras 3 otherwise draws one batch
    for a symbolic build before the first step of a model created under a strategy."""
    created_under = model._distribute_strategy
    model._distribute_strategy = None
    try:
        yield model
    finally:
        model._distribute_strategy = created_under


def optimizer_slot(optimizer, slots: str, variable):
    """The slot variable ``optimizer`` keeps for ``variable`` in its list attribute ``slots``
    (Adam's ``_momentums`` / ``_velocities``, SGD's ``momentums``), found by
    ``BaseOptimizer._get_variable_index``, as Keras's own ``update_step`` implementations do: Keras
    has no public lookup of a variable's slot."""
    return getattr(optimizer, slots)[optimizer._get_variable_index(variable)]


def profiler_trace_proto():
    """TensorFlow's XSpace protobuf module, the format of its profiler's traces
    (``tensorflow.tsl.profiler.protobuf.xplane_pb2``): TensorFlow has no public reader of its own
    traces (``msad benchmark train --profile``)."""
    try:
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
    except ImportError as error:  # pragma: no cover - depends on the TensorFlow release
        raise RuntimeError(f"this TensorFlow has no tensorflow.tsl.profiler.protobuf.xplane_pb2 ({error}): "
                           "open the trace in TensorBoard's profiler instead") from error
    return xplane_pb2
