"""MultiScaleTeacher: losses, stages, inference branches, distribution, fusion analysis."""
import csv
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import assert_two_replicas_match_one, tiny_model_config, toy_batch
from msad_tf.config import Config, DataConfig
from msad_tf.modeling.teacher import MultiScaleTeacher


def _teacher(seed=1, stage="joint", **overrides):
    keras.utils.set_random_seed(seed)
    return MultiScaleTeacher(tiny_model_config(**overrides), num_classes=3, stage=stage)


def _detector_weights(model):
    return [w.numpy() for part in (model.backbone, model.fpn, model.head) for w in part.weights]


def _dataset(batch):
    return tf.data.Dataset.from_tensors(batch)


def test_builds_with_shifted_levels_and_fusion():
    model = _teacher()
    assert model.train_mode == "aligned"
    assert model.shift_for("low") == 1 and model.shift_for("high") == 0
    assert model.stage == "joint" and model.fusion_weight == pytest.approx(0.4)
    assert [w.path.split("/", 1)[1] for w in model.fusion.weights] == [
        "fusion/cff/fc1/kernel",
        "fusion/cff/fc2/kernel",
    ]
    assert model.fusion.weights[0].shape == (32, 2)
    assert set(model.loss_trackers) == set(model.loss_names())
    assert model.inference_branches("high") == ("fused", "high")
    assert model.inference_branches("low") == ("low",)


def test_compute_losses_keys_and_weighting():
    model = _teacher()
    batch = toy_batch(batch=2, size=128)
    losses = model.compute_losses(batch, training=False)
    expected = {"loss"}
    for branch in ("high", "low", "fused"):
        expected |= {f"loss_{branch}", f"{branch}_cls", f"{branch}_box", f"{branch}_ctr"}
    assert set(losses) == expected
    v = {k: float(t) for k, t in losses.items()}
    assert all(math.isfinite(x) and x > 0 for x in v.values())
    np.testing.assert_allclose(v["loss"], v["loss_high"] + v["loss_low"] + 0.4 * v["loss_fused"], rtol=1e-6)
    for branch in ("high", "low", "fused"):
        parts = sum(v[f"{branch}_{p}"] for p in ("cls", "box", "ctr"))
        np.testing.assert_allclose(v[f"loss_{branch}"], parts, rtol=1e-6)
    assert v["loss_fused"] != v["loss_high"] and v["loss_fused"] != v["loss_low"]

    model.set_stage("align")
    align = {k: float(t) for k, t in model.compute_losses(batch, training=False).items()}
    np.testing.assert_allclose(align["loss"], align["loss_high"] + align["loss_low"], rtol=1e-6)
    np.testing.assert_allclose(align["loss_fused"], v["loss_fused"], rtol=1e-6)
    model.set_stage("fusion")
    fusion = {k: float(t) for k, t in model.compute_losses(batch, training=False).items()}
    np.testing.assert_allclose(fusion["loss"], 0.4 * fusion["loss_fused"], rtol=1e-6)


def test_fit_step_joint_changes_all_weights():
    """Eager fit (the traced joint step runs in test_two_replicas_match_one)."""
    model = _teacher()
    initial = [w.numpy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), run_eagerly=True)
    history = model.fit(_dataset(toy_batch(batch=2, size=128)), epochs=1, verbose=0, shuffle=False).history
    assert set(history) == set(model.loss_names())
    assert all(math.isfinite(history[k][0]) for k in history)
    np.testing.assert_allclose(
        history["loss"][0],
        history["loss_high"][0] + history["loss_low"][0] + 0.4 * history["loss_fused"][0],
        rtol=1e-5,
    )
    after = [w.numpy() for w in model.trainable_weights]
    assert len(after) == len(initial) == 85
    assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(after, initial))


def test_fusion_stage_trains_only_the_fusion_module():
    model = _teacher(stage="fusion")
    assert [w.path for w in model.trainable_weights] == [w.path for w in model.fusion.weights]
    detector = _detector_weights(model)
    fusion = [w.numpy() for w in model.fusion.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.5), run_eagerly=True)
    history = model.fit(_dataset(toy_batch(batch=2, size=128)), epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(history["loss"][0], 0.4 * history["loss_fused"][0], rtol=1e-5)
    for before, after in zip(detector, _detector_weights(model)):
        np.testing.assert_array_equal(after, before)
    assert all(float(np.abs(a.numpy() - b).max()) > 0 for a, b in zip(model.fusion.weights, fusion))

    model.set_stage("joint")
    assert len(model.trainable_weights) == 85


def test_align_stage_leaves_fusion_untouched():
    model = _teacher(stage="align")
    fusion = [w.numpy() for w in model.fusion.weights]
    head = model.head.scales.numpy()
    model.compile(optimizer=keras.optimizers.SGD(0.05), run_eagerly=True)
    history = model.fit(_dataset(toy_batch(batch=2, size=128)), epochs=1, verbose=0, shuffle=False).history
    np.testing.assert_allclose(
        history["loss"][0], history["loss_high"][0] + history["loss_low"][0], rtol=1e-5
    )
    for before, after in zip(fusion, model.fusion.weights):
        np.testing.assert_array_equal(after.numpy(), before)
    assert float(np.abs(model.head.scales.numpy() - head).max()) > 0


def test_stage_switch_keeps_frozen_batchnorm_frozen():
    model = _teacher(norm="frozen_bn")
    count = len(model.trainable_weights)
    frozen_bn = [l for l in model.backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert frozen_bn and not any(l.trainable for l in frozen_bn)
    model.set_stage("fusion")
    assert len(model.trainable_weights) == 2
    model.set_stage("joint")
    assert len(model.trainable_weights) == count
    assert not any(l.trainable for l in frozen_bn)
    with pytest.raises(ValueError, match="stage"):
        model.set_stage("distill")


def test_detect_branches_shapes_and_functions():
    model = _teacher()
    images = toy_batch(batch=2, size=128)["images"]
    low_images = model.pyramid.subsample(images)
    for branch, inputs, size in (("fused", images, 128), ("high", images, 128), ("low", low_images, 64)):
        out = model.detect(inputs, branch=branch)
        assert out["boxes"].shape == (2, 100, 4)
        assert out["scores"].shape == (2, 100) and out["classes"].shape == (2, 100)
        assert out["num_detections"].shape == (2,)
        assert float(tf.reduce_max(out["boxes"])) <= size
    fused = model.detect_function()
    assert fused is model.detect_function(0, "fused")
    assert model.detect_function(1) is model.detect_function(None, "low")
    assert model.detect_function(0, "high") is not fused
    sizes = tf.constant([[128, 128], [100, 90]], tf.int32)
    a = fused(images, sizes)
    b = model.predict_step({"images": images, "image_sizes": sizes})
    np.testing.assert_allclose(a["scores"].numpy(), b["scores"].numpy(), rtol=1e-5, atol=1e-6)
    assert float(tf.reduce_max(a["boxes"][1, :, 2])) <= 100 and float(tf.reduce_max(a["boxes"][1, :, 3])) <= 90
    with pytest.raises(ValueError, match="shift"):
        model.detect(images, shift=1, branch="fused")
    with pytest.raises(ValueError, match="branch"):
        model.detect(images, branch="student")

    outputs = model(images)
    assert [o["cls_logits"].shape[1] for o in outputs] == [16, 8, 4, 2, 1]
    weights = model.fusion_weights(images)
    assert [tuple(w.shape) for w in weights] == [(2, 2)] * 5
    np.testing.assert_allclose(np.stack([w.numpy().sum(-1) for w in weights]), 1.0, rtol=1e-6)


def test_variant_teacher_channel_per_level():
    model = _teacher(fusion="channel", fusion_shared=False)
    assert len(model.fusion.fusion_modules) == 5
    weights = model.fusion_weights(toy_batch(batch=2, size=128)["images"])
    assert [tuple(w.shape) for w in weights] == [(2, 2, 16)] * 5
    losses = model.compute_losses(toy_batch(batch=2, size=128), training=False)
    assert math.isfinite(float(losses["loss"]))


def test_config_round_trip():
    model = _teacher(fusion="sigmoid", stage="align")
    model.fusion_weight = 0.7
    config = model.get_config()
    assert config["fusion_weight"] == 0.7 and config["stage"] == "align"
    assert "train_mode" not in config
    clone = MultiScaleTeacher.from_config(json.loads(json.dumps(config)))
    assert clone.stage == "align" and clone.fusion_weight == 0.7
    assert clone.model_config.fusion == "sigmoid"
    clone.set_weights(model.get_weights())
    images = toy_batch(batch=1, size=128)["images"]
    for a, b in zip(model.fusion_weights(images), clone.fusion_weights(images)):
        np.testing.assert_array_equal(b.numpy(), a.numpy())


def test_two_replicas_match_one():
    """Joint teacher step (three branches, globally normalised losses, fusion gradients).

    Frozen BatchNorm keeps the trace small: synchronized BatchNorm costs one merge_call per
    layer and pass when traced on 2 replicas (minutes on 2 CPU cores); its cross-replica
    behaviour with two passes per step is the aligned case of tests/test_distribute.py.
    """
    build = lambda: MultiScaleTeacher(tiny_model_config(norm="frozen_bn"), num_classes=3)  # noqa: E731
    logs = assert_two_replicas_match_one(build, toy_batch(batch=4, size=128))
    assert set(logs) == set(build().loss_names())


# ----------------------------------------------------------------------------- fusion analysis
def _tiny_coco(root, sizes_per_image):
    """COCO folder of 64x64 PNGs; image i holds square boxes of the given side lengths."""
    image_dir = root / "val"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i, sides in enumerate(sizes_per_image, start=1):
        pixels = rng.integers(0, 255, size=(64, 64, 3), dtype=np.uint8)
        name = f"img_{i}.png"
        tf.io.write_file(str(image_dir / name), tf.io.encode_png(pixels))
        images.append({"id": i, "file_name": name, "height": 64, "width": 64})
        for j, side in enumerate(sides):
            annotations.append(
                {"id": 100 * i + j + 1, "image_id": i, "category_id": 1 + j % 3,
                 "bbox": [2.0 + 3 * j, 4.0, float(side), float(side)], "iscrowd": 0}
            )
    categories = [{"id": c, "name": f"c{c}"} for c in (1, 2, 3)]
    ann_file = root / "instances_val.json"
    ann_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return ann_file, image_dir


def test_fusion_analysis_on_tiny_coco(tmp_path):
    from msad_tf.data import CocoDataset, build_dataset
    from msad_tf.evaluation.fusion_analysis import fusion_analysis

    ann_file, image_dir = _tiny_coco(tmp_path, [[8, 16], [40], [], [24, 24, 24], [56]])
    dataset = CocoDataset(ann_file, image_dir)
    config = Config(data=DataConfig(short_side=64, max_side=64, pad_multiple=128))
    model = _teacher()
    out = fusion_analysis(model, dataset, config, tmp_path / "analysis")
    assert out["n"] == 4
    assert -1.0 <= out["r"] <= 1.0
    with open(out["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["image_id", "mean_object_size", "num_objects", "low_weight_mean"] + [
        f"low_weight_P{s}" for s in range(3, 8)
    ]
    assert [int(r["image_id"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [int(r["num_objects"]) for r in rows] == [2, 1, 0, 3, 1]
    np.testing.assert_allclose([float(rows[i]["mean_object_size"]) for i in (0, 1, 3, 4)], [12, 40, 24, 56])
    assert rows[2]["mean_object_size"] == ""

    batches = build_dataset(dataset, short_side=64, max_side=64, batch_size=1, pad_multiple=128)
    for row, batch in zip(rows, batches):
        assert batch["images"].shape == (1, 128, 128, 3)
        low = np.array([w.numpy()[0, 1] for w in model.fusion_weights(batch["images"])])
        per_level = [float(row[f"low_weight_P{s}"]) for s in range(3, 8)]
        np.testing.assert_allclose(per_level, low, atol=2e-6)
        np.testing.assert_allclose(float(row["low_weight_mean"]), low.mean(), atol=2e-6)
    means = [float(r["low_weight_mean"]) for r in rows]
    sizes = [float(r["mean_object_size"]) for r in rows if r["mean_object_size"]]
    expected_r = np.corrcoef(sizes, [m for m, r in zip(means, rows) if r["mean_object_size"]])[0, 1]
    np.testing.assert_allclose(out["r"], expected_r, rtol=1e-5)
    with open(out["png"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"

    class StaticFusion:
        pyramid = model.pyramid

        def fusion_weights(self, images):
            return [tf.fill([tf.shape(images)[0], 2], 0.5)] * 5

    static = fusion_analysis(StaticFusion(), dataset, config, tmp_path / "static", max_images=3)
    assert math.isnan(static["r"]) and static["n"] == 2
