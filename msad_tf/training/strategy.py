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


def read_tf_config() -> dict:
    """The cluster description of this process (the TF_CONFIG environment variable)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError("--strategy multi_worker needs TF_CONFIG (see train/README.md)")
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"TF_CONFIG is not valid JSON: {err}") from err
    cluster, task = config.get("cluster"), config.get("task")
    if not isinstance(cluster, dict) or not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(
            'TF_CONFIG needs {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": i}}'
        )
    jobs = cluster.get(task["type"])
    if not isinstance(jobs, list) or not 0 <= int(task["index"]) < len(jobs):
        raise ValueError(f"TF_CONFIG task {task} is not in its cluster {cluster}")
    return config


def multi_worker_strategy(timeout_seconds: float | None = None) -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy on the TF_CONFIG cluster, all-reduces as collective ops.

    Every worker uses its local GPUs, or its CPU as one replica. ``timeout_seconds`` bounds
    each collective, so a worker whose peer died fails instead of waiting forever.
    """
    read_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
        timeout_seconds=timeout_seconds,
    )
    return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)


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
        return multi_worker_strategy()
    raise ValueError(f"unknown strategy '{name}': choose default, mirrored or multi_worker")


def worker_index(strategy: tf.distribute.Strategy) -> int:
    """Task index of this worker in a multi-worker strategy, 0 otherwise."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type is None:
        return 0
    return int(resolver.task_id)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run directory: worker 0 (or the ``chief`` task, if any)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type in (None, "chief"):
        return True
    if "chief" in resolver.cluster_spec().as_dict():
        return False
    return resolver.task_type == "worker" and int(resolver.task_id) == 0
