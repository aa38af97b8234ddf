"""RetinaNet through MSAD (model.arch retinanet): config and dispatch, the three training modes,
the fusion teacher (stages, branches, 1 vs 2 replicas), distillation with every registry loss,
``msad train`` / ``msad distill`` / ``msad evaluate`` on the tiny dataset, and SavedModel and
TFLite exports against Keras."""
import csv
import dataclasses
import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import (
    assert_same_results,
    assert_tflite_detects_as_keras,
    assert_two_replicas_match_one,
    evaluate_capturing,
    student_run_config,
    tiny_model_config,
    tiny_train_config,
    toy_batch,
    write_confident_run,
)
from msad_tf.config import ConfigError, config_from_dict, load_config
from msad_tf.losses.distillation import DISTILLATION_LOSSES, build_distillation_loss
from msad_tf.modeling.detector import TRAIN_MODES, FCOSDetector, detector_class
from msad_tf.modeling.retinanet_detector import RetinaNetDetector, RetinaNetTeacher
from msad_tf.training import runs
from msad_tf.training.distiller import Distiller, StudentInitError, initialize_student


def retina_config(**overrides):
    return tiny_model_config(arch="retinanet", **overrides)


def _parts(branches, parts=("cls", "box")):
    return {"loss"} | {f"loss_{b}" for b in branches} | {f"{b}_{p}" for b in branches for p in parts}


# ------------------------------------------------------------------------------------ config
def test_arch_is_validated_and_dispatched():
    with pytest.raises(ConfigError, match="model.arch 'yolo': choose fcos or retinanet"):
        load_config(overrides=["model.arch=yolo"])
    with pytest.raises(ConfigError, match="model.box_loss 'l2'"):
        load_config(overrides=["model.arch=retinanet", "model.box_loss=l2"])
    with pytest.raises(ConfigError, match="negative_iou"):
        load_config(overrides=["model.arch=retinanet", "model.negative_iou=0.6"])
    coco = load_config("configs/coco_retinanet_r50.yaml")
    assert coco.model.arch == "retinanet" and coco.model.box_loss == "smooth_l1"
    assert detector_class("retinanet") is RetinaNetDetector
    assert detector_class("retinanet", teacher=True) is RetinaNetTeacher
    assert detector_class("fcos") is FCOSDetector

    config = config_from_dict({"model": dataclasses.asdict(retina_config()), "train": {"mode": "student"}})
    student = runs.build_model(config, 3)
    assert type(student) is RetinaNetDetector and student.inference_shift == 1
    assert student.postprocess_config.nms_iou == 0.5 and student.loss_parts == ("cls", "box")
    assert student.cls_channels == 27
    assert FCOSDetector(tiny_model_config(), 3).postprocess_config.nms_iou == 0.6
    with pytest.raises(ValueError, match="the config says 'fcos'"):
        RetinaNetDetector(tiny_model_config(), 3)


# ------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("mode", TRAIN_MODES)
def test_train_mode_fit_step_moves_every_weight(mode):
    keras.utils.set_random_seed(0)
    model = RetinaNetDetector(retina_config(), 3, train_mode=mode)
    initial = [w.numpy() for w in model.trainable_weights]
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(tf.data.Dataset.from_tensors(toy_batch(2, 128)), epochs=1, verbose=0, shuffle=False).history
    branches = ("high",) if mode == "single" else ("high", "low")
    assert set(history) == _parts(branches)
    assert all(math.isfinite(v[0]) for v in history.values())
    after = [w.numpy() for w in model.trainable_weights]
    assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(after, initial))


def test_aligned_branches_share_the_high_res_assignment():
    model = RetinaNetDetector(retina_config(), 3, train_mode="aligned")
    images = toy_batch(1, 128)["images"]
    high = model.head_outputs(model.pyramid_features(images, 0))
    low = model.head_outputs(model.pyramid_features(model.pyramid.subsample(images), 1))
    assert [tuple(int(v) for v in s) for s in model.level_sizes(low)] == \
        [tuple(int(v) for v in s) for s in model.level_sizes(high)]
    vanilla_low = model.head_outputs(model.pyramid_features(model.pyramid.subsample(images), 0))
    batch = toy_batch(1, 128)
    targets = model.targets(batch["boxes"], batch["classes"], vanilla_low, scale=2.0)
    assert int(tf.reduce_sum(tf.cast(targets["labels"] >= 0, tf.int32))) > 0


# ------------------------------------------------------------------------------------ teacher
def test_teacher_losses_stages_branches_and_config():
    keras.utils.set_random_seed(1)
    teacher = RetinaNetTeacher(retina_config(), 3)
    batch = toy_batch(2, 128)
    initial = [w.numpy() for w in teacher.trainable_weights]
    teacher.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = teacher.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False).history
    assert set(history) == _parts(("high", "low", "fused"))
    np.testing.assert_allclose(
        history["loss"][0],
        history["loss_high"][0] + history["loss_low"][0] + 0.4 * history["loss_fused"][0],
        rtol=1e-5,
    )
    after = [w.numpy() for w in teacher.trainable_weights]
    assert all(float(np.abs(a - b).max()) > 0 for a, b in zip(after, initial))

    teacher.set_stage("fusion")
    assert teacher.trainable_weights == teacher.fusion.trainable_weights
    teacher.set_stage("joint")
    for branch, images in (("fused", batch["images"]), ("high", batch["images"]),
                           ("low", batch["images"][:, ::2, ::2])):
        out = teacher.detect(images, tf.constant([[128, 128]] * 2), branch=branch)
        assert out["boxes"].shape == (2, 100, 4) and out["classes"].dtype == tf.int32

    clone = RetinaNetTeacher.from_config(json.loads(json.dumps(teacher.get_config())))
    clone.set_weights(teacher.get_weights())
    np.testing.assert_allclose(clone(batch["images"])[0]["cls_logits"].numpy(),
                               teacher(batch["images"])[0]["cls_logits"].numpy(), atol=1e-6)


def test_teacher_two_replicas_match_one():
    build = lambda: RetinaNetTeacher(retina_config(norm="frozen_bn"), num_classes=3)  # noqa: E731
    logs = assert_two_replicas_match_one(build, toy_batch(batch=4, size=128))
    assert set(logs) == _parts(("high", "low", "fused"))


# ------------------------------------------------------------------------------------ distillation
def _distiller(name):
    keras.utils.set_random_seed(2)
    teacher = RetinaNetTeacher(retina_config(), 3)
    student = RetinaNetDetector(retina_config(), 3, inference_shift=1, name="student")
    counts = initialize_student(student, teacher)
    assert counts["skipped"] == 0
    loss = build_distillation_loss(name, channels=16, num_levels=5, num_classes=student.cls_channels)
    return Distiller(teacher, student, loss, gamma=0.2, det_weight=1.0), teacher, student


@pytest.mark.parametrize("name", sorted(DISTILLATION_LOSSES))
def test_every_distillation_loss_on_retinanet(name):
    distiller, _, _ = _distiller(name)
    losses = distiller.compute_losses(toy_batch(2, 128))
    assert {"loss", "loss_kd", "loss_det", "det_cls", "det_box"} <= set(losses)
    assert "det_ctr" not in losses
    assert all(math.isfinite(float(v)) for v in losses.values())


def test_msad_l1_fit_trains_only_the_student():
    distiller, teacher, student = _distiller("msad_l1")
    teacher_before = [w.numpy() for w in teacher.weights]
    student_before = [w.numpy() for w in student.trainable_weights]
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = distiller.fit(tf.data.Dataset.from_tensors(toy_batch(2, 128)), epochs=1, verbose=0, shuffle=False).history
    assert history["loss_kd"][0] > 0 and math.isfinite(history["loss"][0])
    for a, b in zip(teacher_before, teacher.weights):
        np.testing.assert_array_equal(a, b.numpy())
    moved = [float(np.abs(a - b.numpy()).max()) > 0 for a, b in zip(student_before, student.trainable_weights)]
    assert sum(moved) > 0.9 * len(moved)


def test_fcos_teacher_and_retinanet_student_do_not_mix():
    teacher = FCOSDetector(tiny_model_config(), 3, train_mode="aligned")
    student = RetinaNetDetector(retina_config(), 3, inference_shift=1)
    with pytest.raises(StudentInitError, match="arch"):
        initialize_student(student, teacher)


# ------------------------------------------------------------------------------------ CLI
def _history(run_dir):
    with open(run_dir / "history.csv") as handle:
        return list(csv.DictReader(handle))


def test_msad_train_distill_evaluate(tiny_data, tmp_path, capsys):
    from msad_tf.cli import main

    config_path = tmp_path / "tiny.yaml"
    tiny_train_config(tiny_data, epochs=3, steps_per_epoch=4, base_lr=0.02).save(config_path)
    single = tmp_path / "single"
    main(["train", "--config", str(config_path), "--run-dir", str(single), "--quiet",
          "--set", "model.arch=retinanet"])
    losses = [float(row["loss"]) for row in _history(single)]
    assert losses[-1] < losses[0], losses
    assert runs.load_run(single)[0].model.arch == "retinanet"

    teacher = tmp_path / "teacher"
    main(["train", "--config", str(config_path), "--run-dir", str(teacher), "--quiet",
          "--set", "model.arch=retinanet", "--set", "train.mode=teacher", "--set", "train.epochs=1"])
    assert "fused_box" in (teacher / "history.csv").read_text().splitlines()[0]
    student = tmp_path / "student"
    main(["distill", "--teacher", str(teacher), "--config", str(config_path), "--run-dir", str(student),
          "--quiet", "--set", "model.arch=retinanet", "--set", "train.epochs=1"])
    header = (student / "history.csv").read_text().splitlines()[0]
    assert "loss_kd" in header and "det_box" in header and "det_ctr" not in header
    _, model, _, _ = runs.load_run(student)
    assert type(model) is RetinaNetDetector and model.inference_shift == 1

    capsys.readouterr()
    out = tmp_path / "eval.json"
    main(["evaluate", "--run", str(student), "--json", str(out), "--quiet"])
    metrics = json.loads(out.read_text())
    assert metrics and all(0.0 <= m["AP"] <= 100.0 for m in _ap_entries(metrics))


def _ap_entries(metrics):
    if isinstance(metrics, dict) and "AP" in metrics:
        return [metrics]
    if isinstance(metrics, dict):
        return [m for value in metrics.values() for m in _ap_entries(value)]
    return []


# ------------------------------------------------------------------------------------ export
def _confident_run(root):
    """A RetinaNet student run (random weights, cls bias raised) on 6 val images of 96 px:
    H = 128, L = 64, shift 1."""
    from msad_tf.data.synthetic import CATEGORY_IDS, CLASS_NAMES, make_synthetic_dataset

    make_synthetic_dataset(root / "data", num_train=4, num_val=6, image_size=96, progress=False)
    config = student_run_config(root, retina_config(norm="bn"))
    return write_confident_run(root, config, CATEGORY_IDS, CLASS_NAMES, cls_bias=-4.0, box_bias=None)


def test_saved_model_and_tflite_match_keras(tmp_path, monkeypatch):
    from msad_tf.data.preprocess import network_input
    from msad_tf.export.benchmark_infer import saved_model_results
    from msad_tf.export.saved_model import export_run_saved_model, export_spec
    from msad_tf.export.tflite import (
        TFLiteDetectionModule,
        TFLiteDetector,
        export_run_tflite,
        flatten_head_outputs,
        tflite_ops,
    )
    from msad_tf.training.train import load_split

    run = _confident_run(tmp_path)
    config, model, ids, _ = runs.load_run(run)
    dataset = load_split(config, config.data.val_split)
    _, results = evaluate_capturing(monkeypatch, model, dataset, config, "low")
    assert len(results) > 0

    spec = export_spec(model, config)
    export_dir = export_run_saved_model(run, tmp_path / "saved_models", "retina")
    served = saved_model_results(export_dir, dataset.records, spec, config.eval.batch_size)
    assert_same_results(served, results, box_atol=0.02, score_atol=1e-4)

    path = export_run_tflite(run, tmp_path / "saved_models", "retina")
    ops = tflite_ops(path)
    assert not [op for op in ops if op.startswith("CUSTOM") or op.startswith("FLEX")], ops
    canvas, size = assert_tflite_detects_as_keras(path, model, spec, dataset.records[0], ids)

    raw_path = export_run_tflite(run, tmp_path / "saved_models", "retina", raw=True)
    module = TFLiteDetectionModule(model, spec, ids)
    normalized, _ = module.normalized_input(tf.constant(canvas), tf.constant(size))
    network, _ = network_input(normalized, tf.constant(size)[None], 2)
    keras_raw = flatten_head_outputs(model.head_outputs(model.pyramid_features(network, 1)))
    raw = TFLiteDetector(raw_path)(canvas, np.asarray(size))
    assert set(raw) == {"cls_logits", "box_reg"}
    assert max(float(np.abs(raw[k] - keras_raw[k].numpy()).max()) for k in keras_raw) < 1e-3
