"""AP against inference resolution (paper Table 4c / Fig. 4c): one model, several input sizes."""
from __future__ import annotations

import csv
from pathlib import Path

from msad_tf.evaluation.coco_eval import METRIC_NAMES, evaluate_coco
from msad_tf.evaluation.evaluator import predict_coco


def resolution_sweep(model, dataset, config, fractions, shift, out_dir, max_images=None, progress=True):
    """COCO metrics at short sides ``fraction * L`` (L = H / k), all read at pyramid ``shift``.

    The images at ``fraction`` are made as L is (``input_geometry(config, "low")``): with
    ``eval.low_input`` ``subsample`` resized to ``fraction * H`` and then subsampled by k (so
    fraction 1 is exactly the evaluation at L); with ``resize`` resized to ``fraction * L``.
    Writes OUT/resolution_sweep.csv and OUT/resolution_sweep.png (AP, AP_S/M/L vs short side).
    Returns list of dicts (fraction, short_side, max_side: the resize target, stride, metrics...).
    """
    import matplotlib

    from msad_tf.data.preprocess import resolve_input_norm
    from msad_tf.resolution import input_geometry

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_short, base_max, stride = input_geometry(config, "low")
    input_norm = resolve_input_norm(config.model)
    rows = []
    for fraction in fractions:
        short_side = max(int(round(base_short * fraction)), 8)
        max_side = max(int(round(base_max * fraction)), 8)
        results, image_ids = predict_coco(
            model, dataset, short_side=short_side, max_side=max_side, shift=shift,
            batch_size=config.eval.batch_size, pad_multiple=config.data.pad_multiple,
            max_images=max_images, progress=progress, stride=stride, input_norm=input_norm,
        )
        metrics = evaluate_coco(dataset.coco, results, sorted(set(image_ids)))
        rows.append({"fraction": fraction, "short_side": short_side, "max_side": max_side,
                     "stride": stride, **metrics})
        if progress:
            print(f"short side {short_side:4d}px / {stride}: AP {metrics['AP']:.2f}")
    with open(out_dir / "resolution_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["fraction", "short_side", "max_side", "stride",
                                                    *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sides = [r["short_side"] / r["stride"] for r in rows]
    for name in ("AP", "APs", "APm", "APl"):
        ax.plot(sides, [r[name] for r in rows], marker="o", label=name)
    ax.set_xlabel("inference short side (px)")
    ax.set_ylabel("COCO AP (%)")
    ax.set_title(f"AP vs inference resolution (pyramid shift {shift})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "resolution_sweep.png", dpi=120)
    plt.close(fig)
    return rows
