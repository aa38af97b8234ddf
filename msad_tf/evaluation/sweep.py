"""AP against inference resolution (paper Table 4c / Fig. 4c): one model, several input sizes."""
from __future__ import annotations

import csv
from pathlib import Path

from msad_tf.evaluation.coco_eval import METRIC_NAMES, evaluate_coco
from msad_tf.evaluation.evaluator import predict_coco


def resolution_sweep(model, dataset, config, fractions, shift, out_dir, max_images=None, progress=True):
    """COCO metrics at short sides ``fraction * L`` (L = H / k), all read at pyramid ``shift``.

    Writes OUT/resolution_sweep.csv and OUT/resolution_sweep.png (AP, AP_S/M/L vs short side).
    Returns list of dicts (short_side, max_side, fraction, metrics...).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    low_short, low_max = config.low_resolution()
    rows = []
    for fraction in fractions:
        short_side = max(int(round(low_short * fraction)), 8)
        max_side = max(int(round(low_max * fraction)), 8)
        results, image_ids = predict_coco(
            model, dataset, short_side=short_side, max_side=max_side, shift=shift,
            batch_size=config.eval.batch_size, pad_multiple=config.data.pad_multiple,
            max_images=max_images, progress=progress,
        )
        metrics = evaluate_coco(dataset.coco, results, sorted(set(image_ids)))
        rows.append({"fraction": fraction, "short_side": short_side, "max_side": max_side, **metrics})
        if progress:
            print(f"short side {short_side:4d}px: AP {metrics['AP']:.2f}")
    with open(out_dir / "resolution_sweep.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["fraction", "short_side", "max_side", *METRIC_NAMES])
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    sides = [r["short_side"] for r in rows]
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
