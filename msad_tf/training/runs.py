"""Run directories: what a training run writes, and how to rebuild its model.

Layout::

    RUN_DIR/
      config.yaml          resolved config (enough to rebuild the model)
      categories.json      dataset category ids and names, in contiguous-class order
      model.weights.h5     final weights
      checkpoints/         per-epoch weights (epoch_001.weights.h5, ...)
      logs/                TensorBoard event files
      history.csv          per-epoch training metrics
      metrics.json         evaluation results, keyed by model/resolution
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
    """The keras.Model a config trains: FCOSDetector, or MultiScaleTeacher for mode teacher."""
    from msad_tf.modeling.detector import FCOSDetector

    mode = config.train.mode
    if mode == "student":
        return build_student(config, num_classes)
    if mode == "teacher":
        from msad_tf.modeling.teacher import MultiScaleTeacher

        return MultiScaleTeacher(config.model, num_classes, fusion_weight=config.train.fusion_weight)
    return FCOSDetector(config.model, num_classes, train_mode=mode, inference_shift=inference_shift)


def build_student(config: Config, num_classes: int):
    """The deployable student: FCOS reading the aligned levels of a low-res input (or P3..P7
    when ``train.aligned`` is false)."""
    from msad_tf.modeling.detector import FCOSDetector
    from msad_tf.modeling.pyramid import AlignedPyramid

    shift = AlignedPyramid(tuple(config.model.head_levels), config.model.k).shift
    return FCOSDetector(
        config.model, num_classes, train_mode="single",
        inference_shift=shift if config.train.aligned else 0, name="student",
    )


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


def load_run(run_dir: str | Path, weights: str | Path | None = None):
    """Rebuild a run's model with its final (or the given) weights.

    Returns (config, model, category_ids, category_names).
    """
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{config_path} missing: is {run_dir} a msad run directory?")
    config = load_config(config_path)
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
