"""Training callbacks for fault tolerance: step-level backups, non-finite loss guard, step timer.

Steps are counted globally across epochs and training stages: the step after batch ``b``
(0-based) of epoch ``e`` is ``e * steps_per_epoch + b + 1``. A fit that resumes in the middle
of epoch ``e`` runs that epoch with ``steps_per_epoch - done`` steps; ``start(epoch, done)`` tells
the callbacks so that their step counts stay global.

Backup layout (one directory per worker)::

    BACKUP_DIR/
      step_00000150.weights.h5   model + optimizer state after step 150
      step_00000150.json         {"step", "epoch", "batch", "stage", "metrics", "config_sha"},
                                 written last
      step_00000100.weights.h5   the previous backup, kept until the next one is complete

Both files are written under a temporary name, flushed to disk and renamed, so a process
killed during a save leaves the previous backups intact. A backup counts only when its JSON
exists and its weights file reads back completely.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

log = logging.getLogger("msad_tf.train")

_BACKUP_NAME = re.compile(r"^step_(\d{8})\.json$")


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or non-finite weights."""


def nonfinite_variables(variables) -> list[str]:
    """Paths of the variables holding a NaN or Inf."""
    return [v.path for v in variables if not np.all(np.isfinite(keras.ops.convert_to_numpy(v.value)))]


def _fsync_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:
        fd = os.open(final.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Backup:
    """One complete backup: the global step it was taken after and its files."""

    step: int
    epoch: int
    batch: int
    stage: int
    weights: Path
    meta: dict


def _readable_h5(path: Path) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            datasets = []
            f.visititems(lambda _, obj: datasets.append(obj) if isinstance(obj, h5py.Dataset) else None)
            for d in datasets:
                d[()]
        return True
    except Exception:  # noqa: BLE001 - any read failure makes the backup unusable
        return False


def list_backups(backup_dir: str | Path) -> list[Backup]:
    """Complete, readable backups in ``backup_dir``, newest first.

    Incomplete ones (missing or unreadable JSON or weights) are skipped with a warning.
    """
    backup_dir = Path(backup_dir)
    if not backup_dir.is_dir():
        return []
    found = []
    for meta_path in sorted(backup_dir.iterdir(), reverse=True):
        if not _BACKUP_NAME.match(meta_path.name):
            continue
        weights = meta_path.with_name(meta_path.name[: -len(".json")] + ".weights.h5")
        try:
            meta = json.loads(meta_path.read_text())
            backup = Backup(int(meta["step"]), int(meta["epoch"]), int(meta["batch"]), int(meta["stage"]),
                            weights, meta)
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("backup %s is unreadable (%s): skipped", meta_path, err)
            continue
        if not weights.is_file() or not _readable_h5(weights):
            log.warning("backup %s is incomplete or corrupt: skipped", weights)
            continue
        found.append(backup)
    return found


class StepBackup(keras.callbacks.Callback):
    """Back up model and optimizer state every ``every`` global steps (atomic writes).

    Args:
      backup_dir: this worker's backup directory.
      every: steps between backups.
      steps_per_epoch: steps of a full epoch (global step numbering).
      stage: index of the training stage this fit belongs to (saved for the resume).
      keep: number of most recent backups kept.
      meta: extra JSON entries saved with every backup (e.g. the config digest).
    """

    def __init__(self, backup_dir, every: int, steps_per_epoch: int, stage: int = 0, keep: int = 2,
                 meta: dict | None = None):
        super().__init__()
        if every < 1 or keep < 1:
            raise ValueError(f"every ({every}) and keep ({keep}) must be >= 1")
        self.backup_dir = Path(backup_dir)
        self.every = every
        self.steps_per_epoch = steps_per_epoch
        self.stage = stage
        self.keep = keep
        self.meta = dict(meta or {})
        self._epoch = 0
        self._offset = {}
        self._restore = {}

    def start(self, epoch: int, done: int) -> None:
        """The next fit starts in ``epoch`` with ``done`` of its steps already trained."""
        self._offset = {epoch: done}

    def restore_metrics(self, backup: Backup) -> None:
        """Give the epoch a backup was taken in its running metric states back (so that the
        resumed epoch logs the means over all of its steps)."""
        if backup.batch and backup.meta.get("metrics"):
            self._restore = {backup.epoch: backup.meta["metrics"]}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        states = self._restore.pop(epoch, None)
        if states:
            for metric in self.model.metrics:
                for variable, value in zip(metric.variables, states.get(metric.name, [])):
                    variable.assign(np.asarray(value, dtype=variable.dtype))

    def on_train_batch_end(self, batch, logs=None):
        done = self._offset.get(self._epoch, 0) + batch + 1
        step = self._epoch * self.steps_per_epoch + done
        if step % self.every == 0:
            self.save(step)

    def save(self, step: int) -> Path:
        """Write the backup of the state after global ``step``; returns the weights path."""
        bad = nonfinite_variables(self.model.trainable_variables)
        if bad:
            raise NonFiniteLossError(
                f"step {step}: weights became non-finite ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}) "
                f"after a finite loss (an overflowing gradient?); the last good backup in {self.backup_dir} "
                "is kept. Lower train.base_lr or set train.clipnorm."
            )
        self.backup_dir.mkdir(parents=True, exist_ok=True)
        name = f"step_{step:08d}"
        weights = self.backup_dir / f"{name}.weights.h5"
        tmp_weights = self.backup_dir / f".tmp-{name}.weights.h5"
        self.model.save_weights(str(tmp_weights))
        _fsync_replace(tmp_weights, weights)
        epoch, batch = divmod(step, self.steps_per_epoch)
        metrics = {
            m.name: [keras.ops.convert_to_numpy(v).tolist() for v in m.variables] for m in self.model.metrics
        }
        meta = dict(self.meta, step=step, epoch=epoch, batch=batch, stage=self.stage, metrics=metrics)
        tmp_meta = self.backup_dir / f".tmp-{name}.json"
        tmp_meta.write_text(json.dumps(meta))
        _fsync_replace(tmp_meta, self.backup_dir / f"{name}.json")
        self._prune(step)
        return weights

    def _prune(self, newest: int) -> None:
        steps = sorted(
            (int(m.group(1)) for p in self.backup_dir.iterdir() if (m := _BACKUP_NAME.match(p.name))),
            reverse=True,
        )
        for step in steps[self.keep:]:
            if step >= newest:
                continue
            for suffix in (".json", ".weights.h5"):
                Path(self.backup_dir, f"step_{step:08d}{suffix}").unlink(missing_ok=True)


class NonFiniteLossGuard(keras.callbacks.Callback):
    """Stop at the first step whose loss terms are not all finite, naming the step and terms.

    Raises NonFiniteLossError from ``on_train_batch_end``, before any later callback (list it
    first), so no checkpoint or backup of that step is written and the last good one stays.
    """

    def __init__(self, steps_per_epoch: int, last_good=None):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.last_good = last_good
        self._epoch = 0
        self._offset = {}

    def start(self, epoch: int, done: int) -> None:
        self._offset = {epoch: done}

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        values = {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
        bad = [k for k, v in values.items() if not math.isfinite(v)]
        if not bad:
            return
        done = self._offset.get(self._epoch, 0) + batch + 1
        step = self._epoch * self.steps_per_epoch + done
        where = self.last_good() if callable(self.last_good) else self.last_good
        terms = ", ".join(f"{k}={values[k]}" for k in bad)
        finite = [k for k in values if k not in bad]
        raise NonFiniteLossError(
            f"non-finite loss at step {step} (epoch {self._epoch + 1}, batch {done}): {terms}"
            + (f"; still finite: {', '.join(finite)}" if finite else "")
            + f". Training stopped; {where or 'no backup was written yet'} is kept and the final "
            "weights are not written. Lower train.base_lr or set train.clipnorm."
        )


class StepTimer(keras.callbacks.Callback):
    """Wall time of each training step (the first step of each fit, which traces, is dropped)."""

    def __init__(self):
        super().__init__()
        self.durations: list[float] = []
        self._first = True
        self._t0 = None

    def on_train_begin(self, logs=None):
        self._first = True

    def on_train_batch_begin(self, batch, logs=None):
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._t0 is not None and not self._first:
            self.durations.append(time.perf_counter() - self._t0)
        self._first = False

    def summary(self) -> dict:
        d = np.asarray(self.durations)
        if not d.size:
            return {}
        return {"step_seconds_median": float(np.median(d)), "step_seconds_mean": float(d.mean()),
                "timed_steps": int(d.size)}


class EpochWeights(keras.callbacks.Callback):
    """Saves the deployable model's weights after every epoch to ``template.format(epoch=N)``
    (N from 1): the student of a Distiller, the model itself otherwise, so that
    ``runs.load_run(run_dir, checkpoint)`` rebuilds any epoch of any run."""

    def __init__(self, template: str):
        super().__init__()
        self.template = template

    def on_epoch_end(self, epoch, logs=None):
        model = getattr(self.model, "student", self.model)
        model.save_weights(self.template.format(epoch=epoch + 1))
