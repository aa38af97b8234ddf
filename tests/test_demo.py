"""msad demo with its runs trained two at a time in separate processes."""
import json

import pytest


@pytest.mark.slow
def test_demo_trains_its_runs_in_parallel_processes(tiny_data, tmp_path):
    from conftest import write_tiny_yaml
    from msad_tf.demo import DEMO_RUNS, run_demo

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    out = tmp_path / "demo"
    table = run_demo(path, out, str(tiny_data), export_student=False, jobs=2)
    assert "MSAD student @L" in table and "single-scale @H" in table
    teacher_done = (out / "teacher" / "model.weights.h5").stat().st_mtime
    for name, *_ in DEMO_RUNS:
        assert (out / f"{name}.log").is_file() and (out / name / "model.weights.h5").is_file()
    for student in ("student", "student_no_kd"):
        assert (out / student / "config.yaml").stat().st_mtime >= teacher_done
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["train_seconds"]) == {name for name, *_ in DEMO_RUNS}


def test_a_demo_run_of_another_config_is_moved_aside_and_retrained(tmp_path):
    from msad_tf.config import load_config
    from msad_tf.demo import _reusable
    from msad_tf.training import runs

    run = tmp_path / "single"
    run.mkdir()
    old = load_config(None, ["train.base_lr=0.1"])
    old.save(run / runs.CONFIG_FILE)
    (run / runs.WEIGHTS_FILE).write_bytes(b"")
    assert _reusable(run, old)
    new = load_config(None, ["train.base_lr=0.2"])
    assert not _reusable(run, new)
    assert not run.exists() and (tmp_path / "single.previous" / runs.WEIGHTS_FILE).is_file()
    run.mkdir()
    old.save(run / runs.CONFIG_FILE)
    (run / runs.WEIGHTS_FILE).write_bytes(b"")
    assert not _reusable(run, new) and (tmp_path / "single.previous2").is_dir()
