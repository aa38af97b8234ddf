"""Learning-rate schedule: linear warm-up then step decay, in optimizer steps."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="msad_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * warmup(step) * decay_factor ** (number of boundaries passed).

    warmup(step) rises linearly from ``warmup_factor`` to 1 over ``warmup_steps`` (Detectron2's
    WarmupMultiStepLR).
    """

    def __init__(self, base_lr, boundaries, decay_factor=0.1, warmup_steps=0, warmup_factor=0.001):
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = float(decay_factor)
        self.warmup_steps = int(warmup_steps)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        for boundary in self.boundaries:
            lr = ops.where(step >= boundary, lr * self.decay_factor, lr)
        if self.warmup_steps > 0:
            alpha = ops.minimum(step / self.warmup_steps, 1.0)
            lr = lr * (self.warmup_factor * (1.0 - alpha) + alpha)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "boundaries": self.boundaries,
            "decay_factor": self.decay_factor,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
        }
