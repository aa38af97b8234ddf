"""COCO box evaluation: pycocotools COCOeval behind a small API.

Detections leave the library as COCO results: [x, y, w, h] in ORIGINAL image pixels with the
dataset's category ids.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: How categories are scored: ``class`` (COCO's AP), ``supercategory`` (the classes of each
#: supercategory merged into one) or ``agnostic`` (COCOeval with ``useCats = 0``: a detection
#: matches any box, whatever its class).
CATEGORY_MODES = ("class", "supercategory", "agnostic")


def merge_supercategories(coco_gt, results):
    """The ground truth and results with each category replaced by its supercategory.

    Returns (a pycocotools COCO whose categories are the supercategories, ids 1.. in order of
    first appearance; the results with their ``category_id`` mapped the same way).
    """
    from pycocotools.coco import COCO

    names, mapping = [], {}
    for category in coco_gt.dataset["categories"]:
        sup = category.get("supercategory") or category["name"]
        if sup not in names:
            names.append(sup)
        mapping[category["id"]] = names.index(sup) + 1
    dataset = dict(coco_gt.dataset)
    dataset["categories"] = [{"id": i + 1, "name": name, "supercategory": name} for i, name in enumerate(names)]
    dataset["annotations"] = [dict(a, category_id=mapping[a["category_id"]]) for a in coco_gt.dataset["annotations"]]
    merged = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        merged.dataset = dataset
        merged.createIndex()
    return merged, [dict(r, category_id=mapping[r["category_id"]]) for r in results]


def to_coco_results(image_ids, boxes, scores, classes, num_detections, scales, category_ids):
    """Convert a batch of library detections to COCO result dicts.

    Args:
      image_ids: [B]; boxes: [B, D, 4] [ymin, xmin, ymax, xmax] in the resized frame;
      scores, classes: [B, D]; num_detections: [B]; scales: [B] (resized = original * scale);
      category_ids: dataset category id of each contiguous class.
    Returns:
      list of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}.
    """
    results = []
    for b, image_id in enumerate(np.asarray(image_ids)):
        n = int(num_detections[b])
        scale = float(scales[b])
        for box, score, cls in zip(boxes[b][:n], scores[b][:n], classes[b][:n]):
            ymin, xmin, ymax, xmax = (np.asarray(box, np.float64) / scale).tolist()
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_ids[int(cls)]),
                    "bbox": [round(xmin, 2), round(ymin, 2), round(xmax - xmin, 2), round(ymax - ymin, 2)],
                    "score": round(float(score), 5),
                }
            )
    return results


def evaluate_coco(coco_gt, results, image_ids=None, verbose: bool = False,
                  categories: str = "class") -> dict[str, float]:
    """COCO bbox metrics (AP, AP50, AP75, APs, APm, APl) in percent.

    Args:
      coco_gt: pycocotools COCO with the ground truth.
      results: COCO result dicts (``to_coco_results``).
      image_ids: images to evaluate (default: all images of ``coco_gt``); images without
        detections count as misses.
      categories: one of ``CATEGORY_MODES``; anything but ``class`` separates what a model
        locates from what it names (e.g. the pairs of the synthetic set that differ only by an
        interior detail share a supercategory).
    """
    from pycocotools.cocoeval import COCOeval

    if categories not in CATEGORY_MODES:
        raise ValueError(f"categories {categories!r}: valid are {', '.join(CATEGORY_MODES)}")
    if categories == "supercategory":
        coco_gt, results = merge_supercategories(coco_gt, results)

    if image_ids is None:
        image_ids = coco_gt.getImgIds()
    image_ids = sorted(int(i) for i in image_ids)
    if not results:
        return {name: 0.0 for name in METRIC_NAMES}
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        coco_dt = coco_gt.loadRes(list(results))
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.params.useCats = int(categories != "agnostic")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    if verbose:
        print(sink.getvalue())
    stats = [max(float(v), 0.0) * 100.0 for v in evaluator.stats[:6]]
    return dict(zip(METRIC_NAMES, stats))


def format_table(rows: dict[str, dict[str, float]], title: str | None = None) -> str:
    """Plain-text AP table: one row per model/resolution."""
    width = max([len(name) for name in rows] + [10])
    lines = []
    if title:
        lines.append(title)
    header = f"{'model':<{width}}  " + "  ".join(f"{name:>6}" for name in METRIC_NAMES)
    lines += [header, "-" * len(header)]
    for name, metrics in rows.items():
        values = "  ".join(f"{metrics.get(m, float('nan')):6.2f}" for m in METRIC_NAMES)
        lines.append(f"{name:<{width}}  {values}")
    return "\n".join(lines)


def write_metrics(path: str | Path, metrics: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(metrics, indent=2, sort_keys=True))
