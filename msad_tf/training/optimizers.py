"""SGD with coupled L2 weight decay, as PyTorch's SGD (and so Detectron2 and the authors) applies it.

PyTorch adds ``wd * w`` to the gradient before the momentum buffer:

    v <- momentum * v + (g + wd * w);   w <- w - lr * v

so in steady state a weight shrinks by lr * wd / (1 - momentum) per step, 10x what Keras's
decoupled ``weight_decay`` (w <- w - lr * wd * w) gives with momentum 0.9. ``CoupledSGD`` adds
the L2 gradient in ``update_step`` (the public per-variable hook of Keras optimizers), after
the cross-replica gradient sum, so the decay is counted once whatever the number of replicas.
"""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="msad_tf")
class CoupledSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD with PyTorch-style L2 (``l2``) on every variable whose path contains
    none of ``l2_exclude`` (substrings, e.g. ``bias``, ``gamma``)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, l2: float = 0.0,
                 l2_exclude=(), **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.l2 = float(l2)
        self.l2_exclude = tuple(l2_exclude)

    def decays(self, variable) -> bool:
        """Whether ``variable`` gets the L2 term."""
        path = getattr(variable, "path", variable.name)
        return self.l2 > 0 and not any(name in path for name in self.l2_exclude)

    def update_step(self, gradient, variable, learning_rate):
        if self.decays(variable):
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, gradient.dtype),
                                                      ops.cast(variable, gradient.dtype)))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, l2_exclude=list(self.l2_exclude))
        return config
