"""Run directories: what a training run writes, and how to rebuild its model.

Layout::

    RUN_DIR/
      config.yaml          resolved config (enough to rebuild the model)
      categories.json      dataset category ids and names, in contiguous-class order
      model.weights.h5     final weights
      checkpoints/         per-epoch weights (epoch_001.weights.h5, ...)
      backup/              step backups while training (removed when the run finishes; non-chief
                           multi-worker workers in backup/worker_<i>/), see training/callbacks.py
      logs/                TensorBoard event files
      history.csv          per-epoch training metrics
      metrics.json         evaluation results, keyed by model/resolution; "data/train": the
                           training set's images, boxes and skip/repair counts; "train": time
"""
from __future__ import annotations

import json
from pathlib import Path

from msad_tf.config import Config, ConfigError, load_config

CONFIG_FILE = "config.yaml"
CATEGORIES_FILE = "categories.json"
WEIGHTS_FILE = "model.weights.h5"
METRICS_FILE = "metrics.json"


def build_model(config: Config, num_classes: int, inference_shift: int = 0):
    """The keras.Model a config trains: the ``model.arch`` detector (FCOSDetector,
    RetinaNetDetector), or its multi-scale fusion teacher for mode teacher."""
    from msad_tf.modeling.detector import detector_class

    mode = config.train.mode
    if mode == "student":
        return build_student(config, num_classes)
    if mode == "teacher":
        teacher = detector_class(config.model.arch, teacher=True)
        return teacher(config.model, num_classes, fusion_weight=config.train.fusion_weight)
    return detector_class(config.model.arch)(
        config.model, num_classes, train_mode=mode, inference_shift=inference_shift
    )


def build_student(config: Config, num_classes: int):
    """The deployable student: the ``model.arch`` detector reading the aligned levels of a
    low-res input (or P3..P7 when ``train.aligned`` is false, or of the high-res input when
    ``train.student_input`` is high)."""
    from msad_tf.modeling.detector import detector_class
    from msad_tf.modeling.pyramid import AlignedPyramid

    shift = AlignedPyramid(tuple(config.model.head_levels), config.model.k).shift
    return detector_class(config.model.arch)(
        config.model, num_classes, train_mode="single",
        inference_shift=shift if config.train.aligned and config.train.student_input == "low" else 0,
        name="student",
    )


class CategoryMismatchError(ValueError):
    """A dataset whose categories are not the ones a run's model was trained on."""


def _ids_text(ids) -> str:
    ids = list(ids)
    return str(ids) if len(ids) <= 12 else f"[{', '.join(map(str, ids[:12]))}, ... ({len(ids)})]"


def check_categories(run_dir: str | Path, dataset, hint: str = "") -> None:
    """Raise CategoryMismatchError unless ``dataset`` has the run's categories, in the same order.

    The model's class c is category ``ids[c]`` of RUN_DIR/categories.json; a dataset whose sorted
    category ids (or their names) differ would map every class to the wrong category.

    Args:
      run_dir: a run directory (with categories.json).
      dataset: anything with ``category_ids`` and ``category_names`` (a CocoDataset).
      hint: appended to the message (what to do instead).
    """
    ids, names = read_categories(run_dir)
    data_ids = [int(i) for i in dataset.category_ids]
    data_names = [str(n) for n in dataset.category_names]
    where = getattr(dataset, "ann_file", "the dataset")
    if data_ids != [int(i) for i in ids]:
        only_data = sorted(set(data_ids) - set(ids))
        only_run = sorted(set(ids) - set(data_ids))
        raise CategoryMismatchError(
            f"{where}: categories {_ids_text(data_ids)} ({len(data_ids)} classes) do not match "
            f"the run {run_dir}, trained on {_ids_text(ids)} ({len(ids)} classes); only in the "
            f"dataset: {_ids_text(only_data)}, only in the run: {_ids_text(only_run)}{hint}"
        )
    renamed = [(i, a, b) for i, a, b in zip(ids, names, data_names) if a != b]
    if renamed:
        examples = ", ".join(f"id {i}: run '{a}' vs dataset '{b}'" for i, a, b in renamed[:3])
        raise CategoryMismatchError(
            f"{where}: {len(renamed)} category names differ from the run {run_dir} ({examples})"
            f"{hint}"
        )


def has_trained_weights(run_dir: str | Path) -> bool:
    """Whether RUN_DIR holds final, per-epoch or backup (resume) weights of a model."""
    run_dir = Path(run_dir)
    return (
        (run_dir / WEIGHTS_FILE).is_file()
        or any((run_dir / "checkpoints").glob("*.weights.h5"))
        or any((run_dir / "backup").rglob("*.weights.h5"))
    )


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(run_dir: str | Path, config: Config) -> dict[str, tuple]:
    """{key: (value in RUN_DIR/config.yaml, value in ``config``)} for every key that differs, in
    key order (a teacher run is compared by its directory name, so a moved reproduction still
    matches)."""
    saved = _flat(load_config(Path(run_dir) / CONFIG_FILE).to_dict())
    wanted = _flat(config.to_dict())
    for flat in (saved, wanted):
        if flat.get("train.teacher_run"):
            flat["train.teacher_run"] = Path(flat["train.teacher_run"]).name
    return {k: (saved.get(k), wanted.get(k)) for k in sorted(saved.keys() | wanted.keys())
            if saved.get(k) != wanted.get(k)}


def require_same_config(run_dir: str | Path, config: Config, what: str, hint: str) -> None:
    """Raises ConfigError when RUN_DIR/config.yaml differs from ``config``, naming up to four
    differing keys: "``run_dir`` holds ``what`` trained with another config (...); ``hint``"."""
    differences = config_differences(run_dir, config)
    if differences:
        shown = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differences.items())[:4])
        more = f" and {len(differences) - 4} more" if len(differences) > 4 else ""
        raise ConfigError(f"{run_dir} holds {what} trained with another config ({shown}{more}); {hint}")


def is_finished(run_dir: str | Path, config: Config) -> bool:
    """Whether RUN_DIR holds the final weights of a run trained with ``config`` (to be reused).

    Raises ConfigError when it holds final weights trained with another config, naming the keys,
    so that a changed config never silently reuses an old model."""
    run_dir = Path(run_dir)
    if not (run_dir / WEIGHTS_FILE).is_file():
        return False
    require_same_config(run_dir, config, "a model",
                        "retrain it (--force, or delete the directory) or use another output directory")
    return True


def record_train_data(run_dir: str | Path, dataset) -> None:
    """Before training into ``run_dir``: refuse a run directory that holds a model trained on
    other categories, then write categories.json and ``dataset.summary()`` (images, boxes,
    skipped/adjusted/flagged counts) under "data/train" in metrics.json, with the package versions
    under "environment" (``environment()``)."""
    if Path(run_dir, CATEGORIES_FILE).is_file() and has_trained_weights(run_dir):
        check_categories(
            run_dir, dataset,
            hint="; the run directory already holds weights for its categories: train into a "
                 "new run directory or delete this one",
        )
    write_categories(run_dir, dataset.category_ids, dataset.category_names)
    if hasattr(dataset, "summary"):
        update_metrics(run_dir, "data/train", dataset.summary())
    update_metrics(run_dir, "environment", environment())


def environment() -> dict:
    """Python, TensorFlow, Keras and numpy versions. Training is deterministic for a config and a
    seed within one environment; another TensorFlow or Keras release changes the numbers from the
    first step (docs/RESULTS.md, session 14), so a run records the one it trained in."""
    import platform

    import keras
    import numpy
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "numpy": numpy.__version__}


def write_categories(run_dir: str | Path, category_ids, category_names) -> None:
    Path(run_dir, CATEGORIES_FILE).write_text(
        json.dumps({"ids": [int(i) for i in category_ids], "names": list(category_names)}, indent=2)
    )


def read_categories(run_dir: str | Path) -> tuple[list[int], list[str]]:
    path = Path(run_dir, CATEGORIES_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: is {run_dir} a msad run directory?")
    data = json.loads(path.read_text())
    return data["ids"], data["names"]


def without_init_weights(config: Config) -> Config:
    """``config`` for rebuilding a trained model: the backbone's initial weights are not loaded
    again (the run's weights replace them; no download, no weights file needed) and the input
    normalisation they implied is kept."""
    from msad_tf.data.preprocess import resolve_input_norm

    config.model.input_norm = resolve_input_norm(config.model)
    config.model.backbone_weights = None
    return config


def load_run(run_dir: str | Path, weights: str | Path | None = None):
    """Rebuild a run's model with its final (or the given) weights.

    Returns (config, model, category_ids, category_names).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{config_path} missing: is {run_dir} a msad run directory?")
    config = without_init_weights(load_config(config_path))
    ids, names = read_categories(run_dir)
    model = build_model(config, len(ids))
    weights = Path(weights) if weights else run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} missing: the run has not finished training")
    model.load_weights(str(weights))
    return config, model, ids, names


def update_metrics(run_dir: str | Path, key: str, metrics: dict) -> dict:
    """Merge ``metrics`` under ``key`` into RUN_DIR/metrics.json; returns the whole file."""
    path = Path(run_dir, METRICS_FILE)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = metrics
    path.write_text(json.dumps(data, indent=2, sort_keys=True))
    return data
