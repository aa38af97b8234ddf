"""SGD with coupled L2 weight decay, as PyTorch's SGD (and so Detectron2 and the authors) applies it.

PyTorch adds ``wd * w`` to the gradient before the momentum buffer:

    v <- momentum * v + (g + wd * w);   w <- w - lr * v

so in steady state a weight shrinks by lr * wd / (1 - momentum) per step, 10x what Keras's
decoupled ``weight_decay`` (w <- w - lr * wd * w) gives with momentum 0.9. ``CoupledSGD`` adds
the L2 gradient in ``update_step`` (the public per-variable hook of Keras optimizers), after
the cross-replica gradient sum, so the decay is counted once whatever the number of replicas.

Both optimizers here update each variable with one fused TensorFlow kernel
(``ResourceApplyKerasMomentum``, ``ResourceApplyAdam``) instead of Keras's chain of small ops:
a train step of a small detector on a CPU is bound by per-op overhead, and Keras's Adam spends
about 24 ops per variable (``msad benchmark train`` times it as the ``fused_optimizer`` speed-up).
"""

from __future__ import annotations

import keras
from keras import ops

from msad_tf.keras_private import optimizer_slot


def _excluded(variable, names) -> bool:
    """Whether the path (else the name) of ``variable`` contains one of ``names``."""
    path = getattr(variable, "path", variable.name)
    return any(name in path for name in names)


@keras.saving.register_keras_serializable(package="msad_tf")
class CoupledSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD with PyTorch-style L2 (``l2``) on every variable whose path contains
    none of ``l2_exclude`` (substrings, e.g. ``bias``, ``gamma``)."""

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, l2: float = 0.0,
                 l2_exclude=(), fused: bool = True, **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov, **kwargs)
        self.l2 = float(l2)
        self.l2_exclude = tuple(l2_exclude)
        self.fused = bool(fused)

    def decays(self, variable) -> bool:
        """Whether ``variable`` gets the L2 term."""
        return self.l2 > 0 and not _excluded(variable, self.l2_exclude)

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        if self.decays(variable):
            gradient = ops.add(gradient, ops.multiply(ops.cast(self.l2, gradient.dtype),
                                                      ops.cast(variable, gradient.dtype)))
        if not (self.fused and self.momentum > 0) or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle, accum=optimizer_slot(self, "momentums", variable).value.handle,
            lr=tf.cast(learning_rate, dtype), grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)

    def get_config(self):
        config = super().get_config()
        config.update(l2=self.l2, l2_exclude=list(self.l2_exclude), fused=self.fused)
        return config


@keras.saving.register_keras_serializable(package="msad_tf")
class FusedAdamW(keras.optimizers.Adam):
    """keras.optimizers.AdamW with each variable's update in one TensorFlow kernel.

    Keras's Adam spends about 24 small ops per variable and step, and Keras's AdamW recomputes the
    learning-rate schedule for each decayed variable. Here each variable
    takes the decoupled decay ``w <- w - lr * decay * w`` (AdamW's, with the step's learning rate,
    on every variable whose path contains none of ``decay_exclude``), then
    ``tf.raw_ops.ResourceApplyAdam``, which computes Adam's update exactly as Keras writes it:
    ``m += (1 - b1)(g - m); v += (1 - b2)(g^2 - v); w -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``.
    Sparse gradients and amsgrad fall back to Keras's update.
    """

    def __init__(self, learning_rate=0.001, decay: float = 0.004, decay_exclude=(), **kwargs):
        if kwargs.pop("weight_decay", None) is not None:
            raise ValueError("FusedAdamW applies its decoupled decay itself: give decay=, not weight_decay=")
        super().__init__(learning_rate=learning_rate, **kwargs)
        self.decay = float(decay)
        self.decay_exclude = tuple(decay_exclude)

    def decays(self, variable) -> bool:
        """Whether ``variable`` gets the decoupled decay."""
        return self.decay > 0 and not _excluded(variable, self.decay_exclude)

    def update_step(self, gradient, variable, learning_rate):
        import tensorflow as tf

        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        if self.decays(variable):
            variable.assign_sub(variable * tf.cast(self.decay, dtype) * lr)
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        step = tf.cast(self.iterations + 1, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle, m=optimizer_slot(self, "_momentums", variable).value.handle,
            v=optimizer_slot(self, "_velocities", variable).value.handle,
            beta1_power=tf.pow(tf.cast(self.beta_1, dtype), step), beta2_power=tf.pow(tf.cast(self.beta_2, dtype), step),
            lr=lr, beta1=tf.cast(self.beta_1, dtype), beta2=tf.cast(self.beta_2, dtype),
            epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))

    def get_config(self):
        config = super().get_config()
        config.update(decay=self.decay, decay_exclude=list(self.decay_exclude))
        return config
