"""Several training runs at once, each in its own process.

A train step of the small models of the demo and of ``msad reproduce`` is bound by per-op
overhead, not arithmetic, so two processes train at more images/s than one on a quiet 2-core
machine (``msad benchmark train --processes 1 2``, docs/RESULTS.md); each gets its share of the
cores as its thread pools (``msad_tf.cpu_threads``). Each process is
started with the ``spawn`` method (a fresh TensorFlow runtime), writes its output to its own
log file, and a task waits until the task it needs (e.g. a student's teacher) has produced
what it reads.
"""
from __future__ import annotations

import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


@dataclass
class Task:
    """One process: ``target(*args)``, output in ``log``.

    ``ready``: a no-argument predicate checked before the start (e.g. "the teacher's weights
    exist", which holds before the teacher's task has finished evaluating); ``needs``: key of
    the task that makes it ready: when that task fails, this one is not started. ``env``:
    environment variables of the process (None removes one), set before TensorFlow loads.
    """

    key: str
    target: Callable
    args: tuple = ()
    log: Path | None = None
    needs: str | None = None
    ready: Callable[[], bool] = field(default=lambda: True)
    env: dict = field(default_factory=dict)


def _run(module, name, args, log, processes, env) -> None:
    """The target is passed by name and imported only here, after TensorFlow has loaded
    quietly (its thread pools set for one of ``processes`` runs at once): a target module that
    imports TensorFlow at its top would otherwise print its native start-up lines while the
    child unpickles it."""
    if log is not None:
        stream = open(log, "a", buffering=1)  # noqa: SIM115 - the process's own stdout/stderr
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
        sys.stdout = sys.stderr = stream
    for variable, value in env.items():
        if value is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = value
    import importlib

    from msad_tf.native_logs import load_tensorflow_quietly

    load_tensorflow_quietly(processes)
    target = importlib.import_module(module)
    for part in name.split("."):
        target = getattr(target, part)
    target(*args)


def run_in_processes(tasks: list[Task], jobs: int, progress: bool = True, poll: float = 1.0,
                     on_done=None) -> dict[str, int]:
    """Runs ``tasks`` at most ``jobs`` at a time, in order as far as ``needs``/``ready`` allow.

    ``on_done(key, exit code, seconds the task ran)`` is called in this process after each task
    ends, once the tasks it made ready have started (a slow ``on_done`` leaves no slot idle). Returns
    {key: exit code} (0: success; a task whose ``needs`` failed is not started and gets -1).
    Progress lines go to stdout.
    """
    context = multiprocessing.get_context("spawn")
    keys = [task.key for task in tasks]
    at_once = max(1, min(jobs, len(tasks)))
    pending = list(tasks)
    running: dict[str, tuple] = {}
    codes: dict[str, int] = {}
    start = time.time()
    while pending or running:
        finished = []
        for key, (proc, began) in list(running.items()):
            if proc.is_alive():
                continue
            proc.join()
            del running[key]
            codes[key] = proc.exitcode
            finished.append((key, proc.exitcode, time.time() - began))
            if progress:
                state = "done" if proc.exitcode == 0 else f"FAILED (exit {proc.exitcode})"
                print(f"== {key} {state} in {time.time() - began:.0f} s ({time.time() - start:.0f} s in all)",
                      flush=True)
        for task in list(pending):
            if len(running) >= jobs:
                break
            if task.needs is not None and codes.get(task.needs, 0) != 0:
                pending.remove(task)
                codes[task.key] = -1
                if progress:
                    print(f"== {task.key} skipped: {task.needs} failed", flush=True)
                continue
            if not task.ready():
                continue
            pending.remove(task)
            proc = context.Process(target=_run, args=(task.target.__module__, task.target.__qualname__, task.args,
                                                         task.log, at_once, task.env), name=task.key)
            proc.start()
            running[task.key] = (proc, time.time())
            if progress:
                where = f", log {task.log}" if task.log else ""
                print(f"== [{keys.index(task.key) + 1}/{len(keys)}] started {task.key}{where} "
                      f"after {time.time() - start:.0f} s", flush=True)
        if on_done is not None:
            for done in finished:
                on_done(*done)
        if pending and not running and all(not t.ready() for t in pending):
            raise RuntimeError(f"tasks {[t.key for t in pending]} can never start: what they need is missing")
        time.sleep(poll)
    return codes
