"""msad demo with its runs trained two at a time in separate processes."""
import json

import pytest


@pytest.mark.slow
def test_demo_trains_its_runs_in_parallel_processes(tiny_data, tmp_path):
    import yaml

    from conftest import TINY_DATA_MODEL
    from msad_tf.demo import DEMO_RUNS, run_demo

    config = {
        "model": TINY_DATA_MODEL,
        "data": {"short_side": 64, "max_side": 64, "pad_multiple": 128, "max_boxes": 8},
        "train": {"batch_size": 2, "base_batch": 2, "base_lr": 0.01, "epochs": 1, "steps_per_epoch": 2,
                  "lr_decay_epochs": [0.5], "backup_every": 0, "precision": "float32"},
        "eval": {"batch_size": 2},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
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
