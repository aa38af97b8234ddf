"""Checks that stop a run before training starts, and a training run over a dataset with bad files.

One tiny aligned run (1 step) is trained on a synthetic set with a missing image, a truncated
JPEG, a NaN box and an unknown category; it is then the "teacher" and "checkpoint" of the
category and student-initialisation checks.
"""
import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from bad_inputs import encoded, noise
from conftest import tiny_model_config
from msad_tf.cli import main
from msad_tf.config import Config, DataConfig, TrainConfig, validate
from msad_tf.data import make_synthetic_dataset
from msad_tf.training import runs
from msad_tf.training.distiller import StudentInitError
from msad_tf.training.train import load_split, train

EXPECTED_SKIPS = {"missing_image_file": 1, "corrupt_image": 1, "nan_box": 1, "unknown_category": 1}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _tiny_config(root, **train):
    values = dict(mode="aligned", batch_size=2, epochs=1, steps_per_epoch=1, warmup_steps=1)
    values.update(train)
    config = Config(
        model=tiny_model_config(size_ranges=[[0, 8], [8, 16], [16, 32], [32, 64], [64, 1e5]]),
        data=DataConfig(root=str(root), short_side=64, max_side=64, pad_multiple=128, max_boxes=16),
        train=TrainConfig(**values),
    )
    validate(config)
    return config


def _add_bad_files(root: Path) -> None:
    ann_file = root / "annotations" / "instances_train.json"
    content = json.loads(ann_file.read_text())
    full = encoded(Image.fromarray(noise(64, 64, seed=9)), "JPEG")
    (root / "train" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    next_id = max(img["id"] for img in content["images"]) + 1
    content["images"] += [
        {"id": next_id, "file_name": "missing.png", "height": 64, "width": 64},
        {"id": next_id + 1, "file_name": "truncated.jpg", "height": 64, "width": 64},
    ]
    next_ann = max(a["id"] for a in content["annotations"]) + 1
    content["annotations"] += [
        {"id": next_ann, "image_id": 1, "category_id": 1, "bbox": [float("nan"), 1, 5, 5], "iscrowd": 0},
        {"id": next_ann + 1, "image_id": 2, "category_id": 999, "bbox": [1, 1, 5, 5], "iscrowd": 0},
    ]
    ann_file.write_text(json.dumps(content))


def _drop_last_category(root: Path) -> None:
    for split in ("train", "val"):
        path = root / "annotations" / f"instances_{split}.json"
        content = json.loads(path.read_text())
        last = max(c["id"] for c in content["categories"])
        content["categories"] = [c for c in content["categories"] if c["id"] != last]
        content["annotations"] = [a for a in content["annotations"] if a["category_id"] != last]
        path.write_text(json.dumps(content))


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory):
    """(dataset root with bad files, trained run dir, captured msad_tf.data log messages)."""
    base = tmp_path_factory.mktemp("preflight")
    root = base / "data"
    make_synthetic_dataset(root, num_train=6, num_val=2, image_size=64, progress=False)
    _add_bad_files(root)
    handler = _Records()
    logger = logging.getLogger("msad_tf.data")
    logger.addHandler(handler)
    try:
        run = base / "run"
        train(_tiny_config(root), run, progress=False)
    finally:
        logger.removeHandler(handler)
    return root, run, handler.messages


@pytest.fixture(scope="module")
def other_categories(bad_run, tmp_path_factory):
    """A copy of the dataset without its last category (ids 1..5 instead of 1..6)."""
    root = tmp_path_factory.mktemp("other") / "data"
    shutil.copytree(bad_run[0], root)
    _drop_last_category(root)
    return root


def test_training_over_bad_files_completes_and_reports_skips(bad_run):
    _, run, messages = bad_run
    data = json.loads((run / "metrics.json").read_text())["data/train"]
    assert data["skipped"] == EXPECTED_SKIPS
    assert (data["images_in_file"], data["images"], data["classes"]) == (8, 6, 6)
    assert data["flagged"] == {} and data["adjusted"] == {}
    assert (run / "model.weights.h5").is_file()
    assert json.loads((run / "metrics.json").read_text())["train"]["steps"] == 1
    import keras
    import tensorflow as tf

    environment = json.loads((run / "metrics.json").read_text())["environment"]
    assert (environment["tensorflow"], environment["keras"]) == (tf.__version__, keras.__version__)
    summary = [m for m in messages if "skipped:" in m]
    assert len(summary) == 1
    for reason, count in EXPECTED_SKIPS.items():
        assert f"{reason}={count}" in summary[0]
    assert "missing.png" in summary[0] and "truncated.jpg" in summary[0]


@pytest.mark.parametrize("overrides, student_init, message", [
    ({"k": 4}, "teacher", "pyramid .* head levels and k must match"),
    ({"k": 4}, "none", "pyramid .* head levels and k must match"),
    ({"width": 0.5, "fpn_channels": 8}, "teacher", "no student layer matches the teacher"),
])
def test_student_that_cannot_pair_with_the_teacher_fails_before_fit(bad_run, tmp_path, overrides,
                                                                     student_init, message):
    root, teacher, _ = bad_run
    config = _tiny_config(root, mode="student", teacher_run=str(teacher), teacher_target="high",
                          student_init=student_init)
    for key, value in overrides.items():
        setattr(config.model, key, value)
    validate(config)
    with pytest.raises(StudentInitError, match=message):
        train(config, tmp_path / "student", progress=False)
    assert not (tmp_path / "student" / "history.csv").exists()
    assert not list((tmp_path / "student" / "checkpoints").iterdir())


def test_student_on_a_dataset_with_other_categories_fails_before_fit(bad_run, other_categories, tmp_path):
    _, teacher, _ = bad_run
    config = _tiny_config(other_categories, mode="student", teacher_run=str(teacher), teacher_target="high")
    with pytest.raises(ValueError, match=r"trained on categories \[1, 2, 3, 4, 5, 6\]"):
        train(config, tmp_path / "student", progress=False)
    assert not (tmp_path / "student" / "history.csv").exists()


def test_check_categories(bad_run, other_categories):
    root, run, _ = bad_run
    same = load_split(_tiny_config(root), "val")
    runs.check_categories(run, same)
    other = load_split(_tiny_config(other_categories), "val")
    with pytest.raises(runs.CategoryMismatchError,
                       match=r"categories \[1, 2, 3, 4, 5\] \(5 classes\) do not match .* only in the run: \[6\]"):
        runs.check_categories(run, other)
    renamed = copy.copy(same)
    renamed.category_names = ["disk", "ring", "square", "frame", "plus", "cross"]
    with pytest.raises(runs.CategoryMismatchError, match=r"1 category names differ .*\(id 6: run 'x' vs dataset 'cross'\)"):
        runs.check_categories(run, renamed)


def test_evaluate_refuses_a_dataset_with_other_categories(bad_run, other_categories, tmp_path, capsys):
    _, run, _ = bad_run
    copy_dir = tmp_path / "run"
    shutil.copytree(run, copy_dir)
    config = yaml.safe_load((copy_dir / "config.yaml").read_text())
    config["data"]["root"] = str(other_categories)
    (copy_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as info:
        main(["evaluate", "--run", str(copy_dir), "--quiet"])
    assert info.value.code == 2
    assert "do not match the run" in capsys.readouterr().err
    assert not (copy_dir / "eval_val.json").exists()


def test_training_into_a_run_dir_of_other_categories_is_refused(bad_run, other_categories, tmp_path):
    _, run, _ = bad_run
    copy_dir = tmp_path / "run"
    shutil.copytree(run, copy_dir)
    categories = (copy_dir / "categories.json").read_text()
    weights = (copy_dir / "model.weights.h5").read_bytes()
    saved_config = (copy_dir / "config.yaml").read_text()
    with pytest.raises(runs.CategoryMismatchError, match="train into a new run directory or delete this one"):
        train(_tiny_config(other_categories), copy_dir, progress=False)
    assert (copy_dir / "config.yaml").read_text() == saved_config
    assert (copy_dir / "categories.json").read_text() == categories
    assert (copy_dir / "model.weights.h5").read_bytes() == weights


@pytest.mark.parametrize("relative, expected", [
    (None, False),
    ("history.csv", False),
    ("model.weights.h5", True),
    ("checkpoints/epoch_001.weights.h5", True),
    ("backup/step_00000050.weights.h5", True),
    ("backup/worker_1/step_00000050.weights.h5", True),
])
def test_has_trained_weights(tmp_path, relative, expected):
    (tmp_path / "checkpoints").mkdir()
    if relative:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_bytes(b"")
    assert runs.has_trained_weights(tmp_path) is expected
