"""COCO evaluation wrappers: conversion to original pixels and equality with pycocotools."""
import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from msad_tf.evaluation.coco_eval import evaluate_coco, format_table, to_coco_results


@pytest.fixture
def coco_gt(tmp_path):
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 200, "width": 300},
                   {"id": 2, "file_name": "b.png", "height": 200, "width": 300}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 20, 40, 60], "area": 2400, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [100, 50, 120, 100], "area": 12000, "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 5, "bbox": [5, 5, 10, 10], "area": 100, "iscrowd": 0},
        ],
        "categories": [{"id": 5, "name": "disk"}, {"id": 7, "name": "ring"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def test_results_are_in_original_pixels():
    # resized frame = original * 0.5; box [ymin, xmin, ymax, xmax] = [10, 5, 40, 25] resized
    results = to_coco_results([3], np.array([[[10.0, 5, 40, 25], [0, 0, 0, 0]]]), np.array([[0.9, 0.0]]),
                              np.array([[1, 0]]), np.array([1]), np.array([0.5]), [5, 7])
    assert results == [{"image_id": 3, "category_id": 7, "bbox": [10.0, 20.0, 40.0, 60.0], "score": 0.9}]


def test_perfect_detections_score_100(coco_gt):
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in coco_gt.dataset["annotations"]]
    metrics = evaluate_coco(coco_gt, results)
    assert metrics["AP"] == pytest.approx(100.0)
    assert metrics["APs"] == pytest.approx(100.0) and metrics["APl"] == pytest.approx(100.0)


def test_matches_pycocotools_directly(coco_gt):
    rng = np.random.default_rng(0)
    results = []
    for a in coco_gt.dataset["annotations"]:
        for _ in range(3):
            x, y, w, h = np.array(a["bbox"]) + rng.normal(0, 4, 4)
            results.append({"image_id": a["image_id"], "category_id": a["category_id"],
                            "bbox": [float(x), float(y), float(abs(w)), float(abs(h))],
                            "score": float(rng.uniform())})
    ours = evaluate_coco(coco_gt, results)
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco_gt, coco_gt.loadRes(results), "bbox")
        ev.evaluate(), ev.accumulate(), ev.summarize()
    np.testing.assert_allclose([ours[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")],
                               np.maximum(ev.stats[:6], 0) * 100)
    assert 0 < ours["AP"] < 100


def test_iou_between_half_and_three_quarters(coco_gt):
    # GT [10, 20, 40, 60]; detection shifted by 10 px in x: IoU = 30*60 / (2*2400 - 1800) = 0.6
    results = [{"image_id": 1, "category_id": 5, "bbox": [20, 20, 40, 60], "score": 0.9}]
    metrics = evaluate_coco(coco_gt, results, image_ids=[1])
    # class 5 is found at IoU 0.5 (AP 100); class 7 has a GT in image 1 and no detection (AP 0)
    assert metrics["AP50"] == pytest.approx(50.0)
    assert metrics["AP75"] == pytest.approx(0.0)


def test_empty_results_and_table():
    assert evaluate_coco(None, [], image_ids=[1])["AP"] == 0.0
    text = format_table({"single @H": {"AP": 12.345, "AP50": 30.0}})
    assert "single @H" in text and "12.35" in text


def test_supercategory_and_agnostic_scoring_hand_computed(tmp_path):
    a, b, c = [10, 10, 40, 40], [100, 10, 40, 40], [10, 100, 40, 40]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 200, "width": 300}],
        "annotations": [
            {"id": i + 1, "image_id": 1, "category_id": cat, "bbox": box, "area": 1600, "iscrowd": 0}
            for i, (cat, box) in enumerate([(5, a), (7, b), (9, c)])
        ],
        "categories": [{"id": 5, "name": "disk", "supercategory": "round"},
                       {"id": 7, "name": "ring", "supercategory": "round"},
                       {"id": 9, "name": "square", "supercategory": "box"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
    results = [{"image_id": 1, "category_id": cat, "bbox": box, "score": score}
               for cat, box, score in [(5, c, 0.95), (7, a, 0.9), (7, b, 0.8), (9, c, 0.7)]]
    # by class: disk 0 (its only detection is on the square), ring 1/2 (the false "ring" on the
    # disk outranks the true one), square 1
    assert evaluate_coco(gt, results)["AP"] == pytest.approx(100 * (0 + 0.5 + 1) / 3, abs=1e-6)
    # round = disk + ring: the "disk" on the square (0.95) is a false positive ranked first, then
    # 2 hits: precision 2/3 at every recall; box: 1
    assert evaluate_coco(gt, results, categories="supercategory")["AP"] == pytest.approx(
        100 * (2 / 3 + 1) / 2, abs=1e-6)
    # class-agnostic: the three boxes found first; the duplicate on the square comes last
    assert evaluate_coco(gt, results, categories="agnostic")["AP"] == pytest.approx(100.0)
    with pytest.raises(ValueError, match="categories"):
        evaluate_coco(gt, results, categories="pairs")
