"""Run a detector over a COCO split at a chosen resolution and score it with COCOeval."""
from __future__ import annotations

import keras
import numpy as np

from msad_tf.evaluation.coco_eval import evaluate_coco, to_coco_results


from msad_tf.resolution import input_geometry


def predict_coco(model, dataset, *, short_side, max_side, shift, batch_size=8, pad_multiple=256,
                 max_images=None, progress=True, branch=None, stride=1, input_norm="imagenet_std",
                 corruption=None, bar=None):
    """Detections of ``model`` on a CocoDataset, as COCO results in original pixels.

    Images are resized to ``short_side``/``max_side``, normalised (``input_norm``), zero padded
    to ``pad_multiple`` and read through ``network_input`` with ``stride`` (see
    ``input_geometry``). ``shift`` selects the pyramid levels (0: P3..P7 of the input; m: the
    aligned low-resolution levels). ``branch`` is passed to models with several inference
    branches. ``corruption`` (a ``corruptions.Corruption``, or a function of the decoded uint8
    image and its id) corrupts each original image before it is resized (``build_dataset``).
    ``bar``: an object with ``update(n)`` (e.g. tqdm) advanced once per batch instead of this
    function's own progress bar. Returns (results, image_ids evaluated).
    """
    from msad_tf.data import build_dataset
    from msad_tf.data.preprocess import network_input

    ds = build_dataset(
        dataset,
        short_side=short_side,
        max_side=max_side,
        batch_size=batch_size,
        training=False,
        pad_multiple=pad_multiple,
        input_norm=input_norm,
        corruption=getattr(corruption, "tf_apply", corruption),
    )
    total = len(dataset.records) if max_images is None else min(max_images, len(dataset.records))
    num_batches = -(-total // batch_size)
    ds = ds.take(num_batches)
    detect = model.detect_function(shift) if branch is None else model.detect_function(shift, branch)
    if bar is None:
        bar = keras.utils.Progbar(num_batches, verbose=1 if progress else 0, unit_name="batch")
        advance = bar.add
    else:
        advance = bar.update
    results, image_ids = [], []
    for batch in ds:
        out = detect(*network_input(batch["images"], batch["image_sizes"], stride))
        out = {k: v.numpy() for k, v in out.items()}
        ids = batch["image_ids"].numpy()
        results += to_coco_results(
            ids,
            out["boxes"],
            out["scores"],
            out["classes"],
            out["num_detections"],
            batch["scales"].numpy() / stride,
            dataset.category_ids,
        )
        image_ids += ids.tolist()
        advance(1)
    return results, image_ids


def evaluate_model(model, dataset, config, resolution: str = "high", shift=None, branch=None,
                   max_images=None, progress=True, corruption=None, bar=None,
                   categories: str = "class") -> dict[str, float]:
    """COCO metrics of ``model`` on ``dataset`` at resolution ``high`` or ``low``.

    ``shift`` defaults to the model's own choice for that resolution (``model.shift_for``).
    The images are made as ``input_geometry`` says and normalised with ``model.input_norm``.
    ``corruption``: a ``corruptions.Corruption`` applied to each original image (robustness
    evaluation); ``bar``: see ``predict_coco``; ``categories``: see ``evaluate_coco``.
    """
    from msad_tf.data.preprocess import resolve_input_norm

    short_side, max_side, stride = input_geometry(config, resolution)
    if shift is None:
        shift = model.shift_for(resolution)
    results, image_ids = predict_coco(
        model,
        dataset,
        short_side=short_side,
        max_side=max_side,
        shift=shift,
        batch_size=config.eval.batch_size,
        pad_multiple=config.data.pad_multiple,
        max_images=max_images if max_images is not None else config.eval.max_images,
        progress=progress,
        branch=branch,
        stride=stride,
        input_norm=resolve_input_norm(config.model),
        corruption=None if corruption is None or getattr(corruption, "is_identity", False) else corruption,
        bar=bar,
    )
    return evaluate_coco(dataset.coco, results, np.unique(image_ids), categories=categories)


def evaluation_batches(dataset, config, max_images=None) -> int:
    """Batches one ``evaluate_model`` call reads (for progress bars over several evaluations)."""
    max_images = max_images if max_images is not None else config.eval.max_images
    total = len(dataset.records) if max_images is None else min(max_images, len(dataset.records))
    return -(-total // config.eval.batch_size)


class COCOEvalCallback(keras.callbacks.Callback):
    """Evaluates on a split every ``every`` epochs and adds ``val_AP``... to the epoch logs."""

    def __init__(self, dataset, config, every: int = 1, resolutions=("high",)):
        super().__init__()
        self.dataset = dataset
        self.config = config
        self.every = max(int(every), 1)
        self.resolutions = tuple(resolutions)
        self.history: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        record = {"epoch": epoch + 1}
        for resolution in self.resolutions:
            metrics = evaluate_model(self.model, self.dataset, self.config, resolution, progress=False)
            suffix = "" if resolution == "high" else f"_{resolution}"
            for name, value in metrics.items():
                record[f"val_{name}{suffix}"] = value
        self.history.append(record)
        if logs is not None:
            logs.update({k: v for k, v in record.items() if k != "epoch"})
        print(" - ".join(f"{k}: {v:.2f}" for k, v in record.items() if k != "epoch"))
