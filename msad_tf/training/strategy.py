"""tf.distribute strategy selection: default, mirrored (all local devices), multi_worker."""
from __future__ import annotations

import json
import os

import tensorflow as tf


def mirrored_strategy(devices=None) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over ``devices`` (default: all GPUs, else all logical CPUs).

    Cross-device reduction goes through one device (``ReductionToOneDevice``) rather than
    collective ops: the aligned and teacher steps run synchronized BatchNorm twice per layer
    (once per resolution), and collective all-reduces traced per replica can then be issued in a
    different order on each replica and abort. Reduction through merge_call keeps every replica
    in step.
    """
    if devices is None:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
    )


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """Strategy by name.

    ``mirrored`` uses every local GPU, or every logical CPU device when there is no GPU.
    ``multi_worker`` reads the cluster from the TF_CONFIG environment variable.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return mirrored_strategy()
    if name == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("--strategy multi_worker needs TF_CONFIG (see train/README.md)")
        try:
            json.loads(config)
        except json.JSONDecodeError as err:
            raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"unknown strategy '{name}': choose default, mirrored or multi_worker")
