"""Preemption-safe training: step backups, exact resume, corrupt backups, non-finite losses,
gradient clipping."""
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import h5_arrays, max_weight_difference, tiny_train_config
from msad_tf.config import ConfigError, load_config
from msad_tf.training import runs
from msad_tf.training.callbacks import NonFiniteLossError, StepBackup, list_backups
from msad_tf.training.train import make_optimizer, train

RESUME_ATOL = 1e-6


class Interrupt(Exception):
    pass


class AtStep(keras.callbacks.Callback):
    """Calls ``act()`` after global step ``step`` (the run's steps counted from 1)."""

    def __init__(self, step):
        super().__init__()
        self.step, self.seen = step, 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        if self.seen == self.step:
            self.act()


class InterruptAt(AtStep):
    """Raise ``Interrupt`` after step ``step``."""

    def act(self):
        raise Interrupt(self.step)


class PoisonAt(AtStep):
    """Set the classification logits' bias to NaN after step ``step``."""

    def act(self):
        bias = self.model.head.cls_logits.bias
        bias.assign(np.full(bias.shape, np.nan, np.float32))


def _history(run_dir):
    with open(Path(run_dir, "history.csv")) as f:
        return [(int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(f)]


def _tiny_keras_model():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_backups_are_atomic_pruned_and_verified(tmp_path, caplog):
    model = _tiny_keras_model()
    backup = StepBackup(tmp_path, every=2, steps_per_epoch=5, keep=2, meta={"config_sha": "abc"})
    backup.set_model(model)
    for step in (2, 4, 6):
        model.layers[0].kernel.assign(np.full((3, 2), step, np.float32))
        backup.save(step)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step_00000004.json", "step_00000004.weights.h5", "step_00000006.json", "step_00000006.weights.h5",
    ]
    found = list_backups(tmp_path)
    assert [(b.step, b.epoch, b.batch) for b in found] == [(6, 1, 1), (4, 0, 4)]
    assert found[0].meta["config_sha"] == "abc"
    np.testing.assert_array_equal(h5_arrays(found[0].weights)["layers/dense/vars/0"], np.full((3, 2), 6.0))
    assert "optimizer/vars/0" in h5_arrays(found[0].weights)

    # A save killed half-way: a partial temporary file, or weights whose JSON was never written.
    (tmp_path / ".tmp-step_00000008.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n partial")
    shutil.copy(found[0].weights, tmp_path / "step_00000008.weights.h5")
    assert [b.step for b in list_backups(tmp_path)] == [6, 4]

    data = found[0].weights.read_bytes()
    found[0].weights.write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.WARNING, logger="msad_tf.train"):
        assert [b.step for b in list_backups(tmp_path)] == [4]
    assert "step_00000006.weights.h5 is incomplete or corrupt" in caplog.text
    (tmp_path / "step_00000004.json").write_text("{")
    assert list_backups(tmp_path) == []
    assert list_backups(tmp_path / "missing") == []

    model.layers[0].kernel.assign(np.full((3, 2), np.nan, np.float32))
    with pytest.raises(NonFiniteLossError, match="step 10: weights became non-finite"):
        backup.save(10)


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, tiny_data):
    """2 epochs x 3 steps, backups every 2 steps. Interrupted after step 5, the newest backup is
    step 4 (epoch 2, after its first batch): the resumed run must end with the uninterrupted
    run's weights (tolerance RESUME_ATOL; measured: identical) and epoch losses."""
    config = tiny_train_config(tiny_data)
    train(config, tmp_path / "full", progress=False)
    assert not (tmp_path / "full" / "backup").exists()

    cut = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train(config, cut, progress=False, callbacks=[InterruptAt(5)])
    assert [b.step for b in list_backups(cut / "backup")] == [4, 2]
    assert not (cut / runs.WEIGHTS_FILE).exists()
    corrupt = tmp_path / "corrupt"
    shutil.copytree(cut, corrupt)

    train(config, cut, progress=False)
    metrics = json.loads((cut / runs.METRICS_FILE).read_text())["train"]
    assert metrics["resumed_from_step"] == 4 and metrics["steps"] == 6
    difference = max_weight_difference(cut / runs.WEIGHTS_FILE, tmp_path / "full" / runs.WEIGHTS_FILE)
    print(f"resume from step 4: max |w_resumed - w_uninterrupted| = {difference:.3g}")
    assert difference <= RESUME_ATOL
    full_history = _history(tmp_path / "full")
    assert [e for e, _ in full_history] == [0, 1]
    np.testing.assert_allclose([l for _, l in _history(cut)], [l for _, l in full_history], rtol=1e-5)
    assert not (cut / "backup").exists()

    # The newest backup truncated (as by a disk fault): the previous one is used.
    weights = corrupt / "backup" / "step_00000004.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    train(config, corrupt, progress=False)
    metrics = json.loads((corrupt / runs.METRICS_FILE).read_text())["train"]
    assert metrics["resumed_from_step"] == 2
    difference = max_weight_difference(corrupt / runs.WEIGHTS_FILE, tmp_path / "full" / runs.WEIGHTS_FILE)
    print(f"resume from step 2: max |w_resumed - w_uninterrupted| = {difference:.3g}")
    assert difference <= RESUME_ATOL


def test_nonfinite_loss_names_step_and_terms_and_keeps_the_last_backup(tmp_path, tiny_data):
    config = tiny_train_config(tiny_data)
    run = tmp_path / "run"
    with pytest.raises(NonFiniteLossError) as info:
        train(config, run, progress=False, callbacks=[PoisonAt(4)])
    message = str(info.value)
    assert "non-finite loss at step 5 (epoch 2, batch 2)" in message
    assert "high_cls=nan" in message and "loss=nan" in message
    assert "still finite: high_box, high_ctr" in message
    assert "step_00000004.weights.h5 (step 4)" in message
    assert [b.step for b in list_backups(run / "backup")] == [4, 2]
    good = h5_arrays(list_backups(run / "backup")[0].weights)
    assert all(np.all(np.isfinite(v)) for v in good.values() if v.dtype.kind == "f")
    assert not (run / runs.WEIGHTS_FILE).exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.weights.h5"]


def test_cli_reports_divergence(tmp_path, tiny_data, capsys):
    from msad_tf.cli import main

    config_path = tmp_path / "tiny.yaml"
    tiny_train_config(tiny_data, base_lr=1e12, warmup_steps=0, momentum=0.0).save(config_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", str(config_path), "--run-dir", str(tmp_path / "run"), "--quiet"])
    assert exit_info.value.code == 3
    err = capsys.readouterr().err
    assert "msad train: training diverged: " in err
    assert "non-finite" in err and "step " in err and "is kept" in err
    assert not (tmp_path / "run" / runs.WEIGHTS_FILE).exists()


def test_gradient_clipping_by_config():
    big = np.full(4, 1e6, np.float32)
    # lr 0.5; a gradient of 1e6 per element: unit global norm -> 0.5 each; clipvalue 0.25 -> 0.25 each.
    for key, value, expected in (("clipnorm", 1.0, np.full(4, -0.25)), ("clipvalue", 0.25, np.full(4, -0.125))):
        config = load_config(None, [f"train.{key}={value}", "train.base_lr=0.5", "train.batch_size=16",
                                    "train.warmup_steps=0", "train.momentum=0", "train.weight_decay=0"])
        optimizer = make_optimizer(config, steps_per_epoch=10)
        variable = keras.Variable(np.zeros(4, np.float32))
        optimizer.apply([keras.ops.convert_to_tensor(big)], [variable])
        np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-6, err_msg=key)
    plain = ["train.warmup_steps=0", "train.momentum=0", "train.weight_decay=0"]
    unclipped = make_optimizer(load_config(None, plain), steps_per_epoch=10)
    variable = keras.Variable(np.zeros(4, np.float32))
    unclipped.apply([keras.ops.convert_to_tensor(big)], [variable])
    np.testing.assert_allclose(variable.numpy(), -0.01 * big, rtol=1e-6)

    for overrides, match in (
        (["train.clipnorm=0"], "train.clipnorm 0 must be a positive number"),
        (["train.clipvalue=-1"], "train.clipvalue -1 must be a positive number"),
        (["train.clipnorm=1", "train.clipvalue=1"], "set one of them, not both"),
        (["train.backup_every=-5"], "train.backup_every -5 must be a whole number"),
        (["train.backup_every=2.5"], "train.backup_every 2.5"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(None, overrides)
    assert load_config(None, []).train.backup_every == 50


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes(tmp_path, tiny_data):
    """`msad train` killed with SIGKILL once a mid-epoch backup exists; the same command run
    again resumes and ends with the weights of an uninterrupted run (tolerance RESUME_ATOL)."""
    config = tiny_train_config(tiny_data, mode="aligned", epochs=3, steps_per_epoch=4, backup_every=3)
    config_path = tmp_path / "tiny.yaml"
    config.save(config_path)
    run = tmp_path / "run"
    command = [sys.executable, "-m", "msad_tf.cli", "train", "--config", str(config_path), "--run-dir", str(run),
               "--quiet"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while not list((run / "backup").glob("step_*.json")):
        assert proc.poll() is None, "training ended before its first backup"
        assert time.monotonic() < deadline, "no backup within 600 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (run / runs.WEIGHTS_FILE).exists()
    killed_at = [b.step for b in list_backups(run / "backup")]
    assert killed_at and killed_at[0] in (3, 6, 9)

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed_from = json.loads((run / runs.METRICS_FILE).read_text())["train"]["resumed_from_step"]
    assert resumed_from == killed_at[0]

    train(config, tmp_path / "full", progress=False)
    difference = max_weight_difference(run / runs.WEIGHTS_FILE, tmp_path / "full" / runs.WEIGHTS_FILE)
    print(f"SIGKILL after step >= {killed_at[0]}, resumed from step {resumed_from}: "
          f"max |w_resumed - w_uninterrupted| = {difference:.3g}")
    assert difference <= RESUME_ATOL
