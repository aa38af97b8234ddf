"""TensorFlow's CPU thread pools, decided in one place.

The train steps of the demo and of ``msad reproduce`` are many small ops (tiny convolutions,
GroupNorms, losses), bound by per-op overhead. TensorFlow's default on a machine with C cores
runs C ops at once (inter-op pool) and splits each op over C threads (intra-op pool), so on
2 cores up to 4 threads contend and every small op pays a fork-join across threads. One thread
per op with C ops at once removes both (``msad benchmark train --threads``, docs/RESULTS.md).

On a small CPU (at most ``SMALL_CPU`` cores) a process gets one intra-op thread and
``cores // processes`` inter-op threads, ``processes`` being the runs trained at once
(``--jobs``; ``MSAD_PROCESSES`` in the environment when not given, as local multi-worker
training sets it). Larger machines keep TensorFlow's defaults: there the ops of a COCO-size model
are large enough to use intra-op threads. ``TF_NUM_INTRAOP_THREADS`` /
``TF_NUM_INTEROP_THREADS`` set by the user win, and ``MSAD_THREADS=default`` keeps
TensorFlow's defaults everywhere.
"""
from __future__ import annotations

import os

#: Cores up to which the one-thread-per-op setting is used.
SMALL_CPU = 4
#: (intra, inter) meaning "TensorFlow's own default" (0: one thread per core for each pool).
DEFAULT = (0, 0)
_ENV = ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def thread_settings(processes: int | None = None, cores: int | None = None, env=None) -> tuple[int, int]:
    """(intra-op threads, inter-op threads) for one of ``processes`` runs at once; (0, 0) keeps
    TensorFlow's default for that pool."""
    env = os.environ if env is None else env
    mode = env.get("MSAD_THREADS", "auto")
    if mode not in ("auto", "default"):
        raise ValueError(f"MSAD_THREADS={mode!r}: use auto (the default) or default (TensorFlow's own)")
    if mode == "default":
        return DEFAULT
    if processes is None:
        processes = int(env.get("MSAD_PROCESSES") or 1)
    given = [int(env[name]) if env.get(name) else None for name in _ENV]
    cores = available_cores() if cores is None else cores
    if cores > SMALL_CPU:
        chosen = DEFAULT
    else:
        chosen = (1, max(1, cores // max(1, processes)))
    return tuple(g if g is not None else c for g, c in zip(given, chosen))


def configure_threads(processes: int | None = None) -> tuple[int, int]:
    """Apply ``thread_settings(processes)`` to TensorFlow's thread pools. Must run before
    TensorFlow's runtime starts (its first op or device query); later it is a no-op, and the
    pools keep what they started with. Returns the settings the pools have."""
    import tensorflow as tf

    intra, inter = thread_settings(processes)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        return current_threads()
    return intra, inter


def current_threads() -> tuple[int, int]:
    """(intra, inter) as TensorFlow's configuration holds them (0: its default)."""
    import tensorflow as tf

    return (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads())
