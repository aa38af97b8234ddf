"""``eval.low_input``: the image at L is the strided subsample of the prepared high-res batch
(the operator the low-resolution branch trains on), in evaluation, predict and the exports.

One tiny student run (random weights, cls bias raised so detections pass the threshold) on 6
val images of 96 px: H = 128 (pad 128), L = 64, shift 1. Its val annotations are replaced by
the three best detections per image of the hand-built subsample pipeline, so AP at L is far
from 0 and moves with every box.
"""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    assert_same_results,
    assert_tflite_detects_as_keras,
    evaluate_capturing,
    student_run_config,
    write_confident_run,
)
from msad_tf.config import ConfigError, config_from_dict
from msad_tf.data import CocoDataset, build_dataset
from msad_tf.data.preprocess import (
    network_input,
    normalize_image,
    pad_to_multiple,
    resize_image,
)
from msad_tf.resolution import input_geometry
from msad_tf.data.synthetic import CATEGORY_IDS, CLASS_NAMES, make_synthetic_dataset
from msad_tf.evaluation.coco_eval import evaluate_coco
from msad_tf.evaluation.predict import detect_image
from msad_tf.modeling.pyramid import AlignedPyramid
from msad_tf.training import runs
from msad_tf.training.train import load_split


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("low_input")
    make_synthetic_dataset(root / "data", num_train=4, num_val=6, image_size=96, progress=False)
    config = student_run_config(root)
    run = write_confident_run(root, config, CATEGORY_IDS, CLASS_NAMES)
    config, model, ids, names = runs.load_run(run)
    ann_file = config.data.ann_file(config.data.val_split)
    gt = json.loads(open(ann_file).read())
    best = {}
    for r in _hand_built_subsample_results(model, load_split(config, config.data.val_split)):
        best.setdefault(r["image_id"], []).append(r)
    gt["annotations"] = [
        {"id": i + 1, "image_id": r["image_id"], "category_id": r["category_id"], "iscrowd": 0,
         "bbox": [round(v, 2) for v in r["bbox"]], "area": r["bbox"][2] * r["bbox"][3]}
        for i, r in enumerate(
            r for rs in best.values() for r in sorted(rs, key=lambda r: -r["score"])[:3]
        )
    ]
    with open(ann_file, "w") as handle:
        json.dump(gt, handle)
    return {"root": root, "run": run, "config": config, "model": model, "ids": ids,
            "dataset": load_split(config, config.data.val_split)}


def test_config_default_validation_and_old_runs(tmp_path):
    config = student_run_config(tmp_path)
    assert config.eval.low_input == "subsample"
    old = config.to_dict()
    del old["eval"]["low_input"], old["model"]["input_norm"]
    restored = config_from_dict(old)
    assert restored.eval.low_input == "subsample" and restored.model.input_norm == "auto"
    with pytest.raises(ConfigError, match="eval.low_input 'nearest': choose subsample or resize"):
        student_run_config(tmp_path, low_input="nearest")
    assert input_geometry(config, "high") == (128, 128, 1)
    assert input_geometry(config, "low") == (128, 128, 2)
    assert input_geometry(student_run_config(tmp_path, low_input="resize"), "low") == (64, 64, 1)


def test_network_input_is_the_strided_subsample_of_the_prepared_batch(tiny_data):
    dataset = CocoDataset(str(tiny_data / "annotations" / "instances_train.json"), str(tiny_data / "train"))
    batch = next(iter(build_dataset(dataset, short_side=45, max_side=45, batch_size=3, pad_multiple=32)))
    images, sizes = batch["images"], batch["image_sizes"]
    assert images.shape[1:3] == (64, 64) and sizes.numpy().tolist() == [[45, 45]] * 3
    for k in (2, 4):
        low, low_sizes = network_input(images, sizes, k)
        np.testing.assert_array_equal(low.numpy(), images.numpy()[:, ::k, ::k, :])
        np.testing.assert_array_equal(low.numpy(), AlignedPyramid(k=k).subsample(images).numpy())
        assert low_sizes.numpy().tolist() == [[-(-45 // k)] * 2] * 3
    same, same_sizes = network_input(images, sizes, 1)
    assert same is images and same_sizes is sizes


def _hand_built_subsample_results(model, dataset, k=2, side=128, pad=128):
    """COCO results of the L evaluation written out by hand: resize to H, normalise, zero pad,
    x[:, ::k, ::k], decode at ceil(size / k), boxes * k / scale."""
    results = []
    detect = model.detect_function(model.shift_for("low"))
    for record in dataset.records:
        image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False)
        resized, scale = resize_image(image, side, side)
        h, w = resized.shape[:2]
        batch = pad_to_multiple(normalize_image(resized)[None], pad).numpy()[:, ::k, ::k, :]
        out = detect(tf.constant(batch), tf.constant([[-(-h // k), -(-w // k)]], tf.int32))
        n = int(out["num_detections"][0])
        for box, score, cls in zip(out["boxes"][0, :n].numpy() * k / float(scale),
                                   out["scores"][0, :n].numpy(), out["classes"][0, :n].numpy()):
            ymin, xmin, ymax, xmax = box.tolist()
            results.append({"image_id": record.image_id, "category_id": int(CATEGORY_IDS[int(cls)]),
                            "bbox": [xmin, ymin, xmax - xmin, ymax - ymin], "score": float(score)})
    return results


def test_evaluate_at_low_subsample_is_the_hand_built_pipeline_and_not_resize(tiny_run, monkeypatch):
    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    metrics, results = evaluate_capturing(monkeypatch, model, dataset, config)
    assert results, "the tiny model must detect something"
    assert_same_results(results, _hand_built_subsample_results(model, dataset))
    resize_config = dataclasses.replace(config, eval=dataclasses.replace(config.eval, low_input="resize"))
    resize_metrics, resize_results = evaluate_capturing(monkeypatch, model, dataset, resize_config)
    with pytest.raises(AssertionError):
        assert_same_results(results, resize_results)
    assert metrics["AP"] > 20 and resize_metrics["AP"] < metrics["AP"]
    print(f"AP at L: subsample {metrics['AP']:.3f}, resize {resize_metrics['AP']:.3f}")


def test_predict_uses_the_subsample(tiny_run, monkeypatch):
    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    _, results = evaluate_capturing(monkeypatch, model, dataset, config)
    record = dataset.records[0]
    image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False).numpy()
    short_side, max_side, stride = input_geometry(config, "low")
    boxes, scores, _ = detect_image(model, image, short_side, max_side, model.shift_for("low"),
                                    config.data.pad_multiple, stride)
    ours = sorted((r for r in results if r["image_id"] == record.image_id), key=lambda r: -r["score"])
    np.testing.assert_allclose(scores, [r["score"] for r in ours], atol=1e-4)
    np.testing.assert_allclose(boxes[:, [1, 0]], [r["bbox"][:2] for r in ours], atol=0.02)


def test_exported_saved_model_and_tflite_ap_equal_msad_evaluate_at_low(tiny_run, monkeypatch):
    """The SavedModel gives msad evaluate's detections and AP at L; the TFLite model (uint8
    input: the caller rounds the resized image) gives Keras's detections on that rounded image
    through the same subsample, and msad evaluate's AP to the export report's tolerance."""
    from msad_tf.export.benchmark_infer import AP_TOLERANCES, saved_model_results, tflite_results
    from msad_tf.export.saved_model import export_run_saved_model, export_spec, read_export_info
    from msad_tf.export.tflite import export_run_tflite, tflite_ops

    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    metrics, results = evaluate_capturing(monkeypatch, model, dataset, config)
    out = tiny_run["root"] / "saved_models"
    export_dir = export_run_saved_model(tiny_run["run"], out, "tiny")
    info = read_export_info(export_dir)
    assert (info["resolution"], info["short_side"], info["subsample"], info["pad_multiple"]) == ("low", 128, 2, 64)
    assert info["low_input"] == "subsample" and info["input_norm"] == "imagenet_std"
    spec = export_spec(model, config)
    served = saved_model_results(export_dir, dataset.records, spec, config.eval.batch_size)
    assert_same_results(served, results)
    served_metrics = evaluate_coco(dataset.coco, served, [r.image_id for r in dataset.records])
    assert served_metrics["AP"] == pytest.approx(metrics["AP"], abs=1e-6)

    path = export_run_tflite(tiny_run["run"], out, "tiny")
    assert read_export_info(path)["input_size"] == [128, 128]
    ops = tflite_ops(path)
    assert "STRIDED_SLICE" in ops and not [op for op in ops if op.startswith("CUSTOM")], ops
    assert_tflite_detects_as_keras(path, model, spec, dataset.records[0], tiny_run["ids"])
    lite = tflite_results(path, dataset.records, num_threads=1)
    lite_metrics = evaluate_coco(dataset.coco, lite, [r.image_id for r in dataset.records])
    assert metrics["AP"] > 20
    assert abs(lite_metrics["AP"] - metrics["AP"]) <= AP_TOLERANCES["tflite_none"]
    print(f"AP at L (subsample): msad evaluate {metrics['AP']:.3f}, SavedModel {served_metrics['AP']:.3f}, "
          f"TFLite {lite_metrics['AP']:.3f}; {len(results)} detections")


def test_sweep_fraction_one_is_the_low_evaluation(tiny_run, tmp_path, monkeypatch):
    from msad_tf.evaluation.sweep import resolution_sweep

    model, dataset, config = tiny_run["model"], tiny_run["dataset"], tiny_run["config"]
    metrics, _ = evaluate_capturing(monkeypatch, model, dataset, config)
    rows = resolution_sweep(model, dataset, config, [0.75, 1.0], model.shift_for("low"), tmp_path,
                            progress=False)
    assert [(r["short_side"], r["stride"]) for r in rows] == [(96, 2), (128, 2)]
    assert rows[1]["AP"] == pytest.approx(metrics["AP"], abs=1e-9)
    assert (tmp_path / "resolution_sweep.csv").read_text().splitlines()[0].startswith(
        "fraction,short_side,max_side,stride,AP"
    )
