"""C-FF weight vs object size: does the teacher lean on the low-resolution input for large objects?

For every validation image the teacher's fusion weights are read at each aligned level; the
weight of the LOW-resolution branch (h_s{1}; averaged over channels for the channel-wise
variant) is reported per level and averaged over levels, next to the mean object size
sqrt(w * h) of the image's ground truth in original pixels. The paper's intuition (section 3.2)
predicts a positive correlation.

Static fusions (sc_sum, cc) report constant weights 0.5, so their correlation is undefined (nan).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import tensorflow as tf


def _low_weights(weights) -> np.ndarray:
    """Per-level weights ([B, 2] or [B, 2, C]) -> low-res weight per image and level [B, L]."""
    columns = []
    for w in weights:
        w = np.asarray(w, np.float64)
        low = w[:, 1]
        columns.append(low.mean(axis=-1) if low.ndim == 2 else low)
    return np.stack(columns, axis=1)


def object_size(boxes) -> tuple[float, int]:
    """(mean sqrt(w * h), count) of boxes [N, 4] [ymin, xmin, ymax, xmax]; (nan, 0) if none."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        return math.nan, 0
    sizes = np.sqrt(np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))
    return float(sizes.mean()), len(boxes)


def pearson_r(x, y) -> float:
    """Pearson correlation of the finite pairs; nan with fewer than 2 pairs or a constant side."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(np.corrcoef(x, y)[0, 1])


def _scatter(path: Path, sizes, low, r: float, n: int, title: str, level_means: dict) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 4.0), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1)
    keep = np.isfinite(sizes) & np.isfinite(low)
    ax.scatter(sizes[keep], low[keep], s=12, alpha=0.6, edgecolors="none")
    if math.isfinite(r):
        slope, intercept = np.polyfit(sizes[keep], low[keep], 1)
        xs = np.linspace(sizes[keep].min(), sizes[keep].max(), 50)
        ax.plot(xs, slope * xs + intercept, color="C3", label=f"fit: {slope:.2e} x + {intercept:.3f}")
        ax.legend(loc="best", fontsize=8)
    r_text = f"{r:.3f}" if math.isfinite(r) else "n/a"
    ax.set_title(f"{title}\nPearson r = {r_text} (n = {n} images)", fontsize=10)
    ax.set_xlabel("mean object size sqrt(w*h) [original px]")
    ax.set_ylabel("low-res weight (mean over levels)")
    bars = fig.add_subplot(1, 2, 2)
    bars.bar(list(level_means), list(level_means.values()), color="C1")
    bars.set_ylim(0, 1)
    bars.set_title("low-res weight per fused level (mean over images)", fontsize=10)
    bars.set_xlabel("high-res level P_s (fused with P'_{s-m})")
    fig.tight_layout()
    fig.savefig(str(path))


def fusion_analysis(model, dataset, config, out_dir, max_images=None, batch_size: int = 1):
    """Per-image low-res fusion weight vs mean ground-truth object size.

    Args:
      model: a MultiScaleTeacher (anything with ``fusion_weights(images)`` and ``pyramid``).
      dataset: msad_tf.data.CocoDataset (ground truth in original pixels).
      config: msad_tf.config.Config (data.short_side / max_side / pad_multiple: the high
        resolution the teacher runs at).
      out_dir: directory for ``fusion_weights.csv`` and ``fusion_vs_size.png``.
      max_images: analyse only the first images.
      batch_size: images per forward pass. The weights come from global average pooling, which
        includes the zero padding of a batch; batch 1 makes each image's weights independent of
        the other images in its batch.
    Returns:
      dict(r=Pearson r over images with objects (nan if undefined), n=images in r,
      r_count=Pearson r of the weight with the number of objects, level_means={P<s>: mean
      low-res weight of level s over images}, csv=path, png=path).
    CSV columns: image_id, mean_object_size, num_objects, low_weight_mean, low_weight_P<s> per
    high-res level s.
    """
    from msad_tf.data import build_dataset
    from msad_tf.data.preprocess import resolve_input_norm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = build_dataset(
        dataset,
        short_side=config.data.short_side,
        max_side=config.data.max_side,
        batch_size=batch_size,
        training=False,
        pad_multiple=config.data.pad_multiple,
        input_norm=resolve_input_norm(config.model),
    )
    total = len(dataset.records) if max_images is None else min(int(max_images), len(dataset.records))
    ds = ds.take(-(-total // batch_size))
    records = {r.image_id: r for r in dataset.records}
    weights_fn = tf.function(model.fusion_weights, reduce_retracing=True)
    levels = [f"P{level}" for level in model.pyramid.head_levels]

    rows = []
    for batch in ds:
        low = _low_weights(weights_fn(batch["images"]))
        for image_id, per_level in zip(batch["image_ids"].numpy().tolist(), low):
            if len(rows) == total:
                break
            size, count = object_size(records[int(image_id)].boxes)
            rows.append((int(image_id), size, count, float(per_level.mean()), per_level.tolist()))

    csv_path = out_dir / "fusion_weights.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["image_id", "mean_object_size", "num_objects", "low_weight_mean"]
            + [f"low_weight_{name}" for name in levels]
        )
        for image_id, size, count, mean, per_level in rows:
            writer.writerow(
                [image_id, "" if math.isnan(size) else f"{size:.4f}", count, f"{mean:.9g}"]
                + [f"{w:.9g}" for w in per_level]
            )

    sizes = np.array([row[1] for row in rows], np.float64)
    low_mean = np.array([row[3] for row in rows], np.float64)
    r = pearson_r(sizes, low_mean)
    n = int(np.sum(np.isfinite(sizes) & np.isfinite(low_mean)))
    png_path = out_dir / "fusion_vs_size.png"
    mode = getattr(getattr(model, "model_config", None), "fusion", "fusion")
    level_means = {name: float(np.mean([row[4][i] for row in rows])) for i, name in enumerate(levels)}
    counts = np.array([row[2] for row in rows], np.float64)
    _scatter(png_path, sizes, low_mean, r, n, f"{mode} low-res weight vs object size", level_means)
    return {"r": r, "n": n, "r_count": pearson_r(counts, low_mean), "level_means": level_means,
            "csv": str(csv_path), "png": str(png_path)}
