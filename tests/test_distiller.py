"""Distiller: frozen teacher, student initialisation, loss composition."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config, toy_batch
from msad_tf.losses.distillation import build_distillation_loss
from msad_tf.modeling.detector import FCOSDetector
from msad_tf.training.distiller import Distiller, StudentInitError, initialize_student


def _pair(student_overrides=None, teacher_mode="aligned"):
    keras.utils.set_random_seed(3)
    teacher = FCOSDetector(tiny_model_config(), 3, train_mode=teacher_mode)
    student = FCOSDetector(tiny_model_config(**(student_overrides or {})), 3, inference_shift=1)
    return teacher, student


def test_student_initialised_from_matching_teacher():
    teacher, student = _pair()
    counts = initialize_student(student, teacher)
    assert counts["skipped"] == 0 and counts["copied"] > 10
    for a, b in zip(teacher.get_weights(), student.get_weights()):
        np.testing.assert_array_equal(a, b)
    images = tf.random.normal([1, 64, 64, 3])
    for t, s in zip(teacher.pyramid_features(images, 1), student.pyramid_features(images, 1)):
        np.testing.assert_allclose(t.numpy(), s.numpy(), atol=1e-6)


def test_wider_student_keeps_its_backbone_and_copies_fpn_head():
    teacher, student = _pair({"width": 0.5})
    counts = initialize_student(student, teacher)
    assert counts["skipped"] > 0 and counts["copied"] > 0
    np.testing.assert_array_equal(student.head.cls_logits.get_weights()[0],
                                  teacher.head.cls_logits.get_weights()[0])
    assert student.backbone.get_layer("conv1_conv").get_weights()[0].shape != \
        teacher.backbone.get_layer("conv1_conv").get_weights()[0].shape


def test_student_with_other_fpn_width_uses_adapters():
    teacher, student = _pair({"fpn_channels": 8, "gn_groups": 4})
    counts = initialize_student(student, teacher)
    assert counts["copied"] == len([layer for layer in student.backbone.layers if layer.weights])
    assert counts["skipped"] > 0
    distiller = Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                          teacher_target="high")
    assert distiller.channel_adapters is not None and len(distiller.channel_adapters) == 5
    losses = distiller.compute_losses(toy_batch(2, 128))
    assert np.isfinite(float(losses["loss"]))


def test_incompatible_teacher_is_a_clear_error():
    teacher = FCOSDetector(tiny_model_config(), 3, train_mode="aligned")
    with pytest.raises(StudentInitError, match="classes"):
        initialize_student(FCOSDetector(tiny_model_config(), 4, inference_shift=1), teacher)
    with pytest.raises(StudentInitError, match="pyramid"):
        initialize_student(FCOSDetector(tiny_model_config(k=4), 3, inference_shift=2), teacher)
    with pytest.raises(StudentInitError, match="fusion teacher"):
        Distiller(teacher, FCOSDetector(tiny_model_config(), 3, inference_shift=1),
                  build_distillation_loss("msad_l1", channels=16, num_levels=5), teacher_target="fused")


def test_loss_is_gamma_weighted_and_kd_ramps():
    teacher, student = _pair()
    initialize_student(student, teacher)
    distiller = Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                          gamma=0.2, kd_warmup_steps=10, teacher_target="high")
    distiller.compile(optimizer=keras.optimizers.SGD(0.01))
    batch = toy_batch(2, 128)
    losses = distiller.compute_losses(batch)
    assert float(losses["loss_kd"]) > 0
    # iteration 0: the KD ramp is 0
    np.testing.assert_allclose(float(losses["loss"]), 0.8 * float(losses["loss_det"]), rtol=1e-6)
    distiller.optimizer.iterations.assign(5)
    losses = distiller.compute_losses(batch)
    expected = 0.2 * 0.5 * float(losses["loss_kd"]) + 0.8 * float(losses["loss_det"])
    np.testing.assert_allclose(float(losses["loss"]), expected, rtol=1e-5)


def test_no_kd_control_never_runs_the_teacher_and_updates_the_student_alike():
    """gamma 0: the teacher is not run (loss_kd logs 0), and the student's weights after two
    steps equal those of the same Distiller made to run its teacher (a term weighted 0)."""
    trained = []
    for runs_teacher in (False, True):
        teacher, student = _pair()
        initialize_student(student, teacher)
        distiller = Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                              gamma=0.0, teacher_target="high")
        assert distiller.runs_teacher is False
        if runs_teacher:
            distiller.runs_teacher = True
        else:
            distiller.teacher_features = lambda images: pytest.fail("the no-KD control ran its teacher")
        distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
        history = distiller.fit(tf.data.Dataset.from_tensors(toy_batch(2, 128)).repeat(2), epochs=1, verbose=0,
                                shuffle=False)
        assert (history.history["loss_kd"][-1] == 0.0) is not runs_teacher
        trained.append([w.numpy() for w in student.trainable_weights])
    for a, b in zip(*trained):
        np.testing.assert_array_equal(a, b)


def test_fit_trains_only_the_student():
    teacher, student = _pair()
    initialize_student(student, teacher)
    before_teacher = [w.copy() for w in teacher.get_weights()]
    before_student = [w.numpy().copy() for w in student.trainable_weights]
    distiller = Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                          teacher_target="high")
    distiller.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    distiller.fit(tf.data.Dataset.from_tensors(toy_batch(2, 128)).repeat(2), epochs=1, verbose=0, shuffle=False)
    for a, b in zip(before_teacher, teacher.get_weights()):
        np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b.numpy()) for a, b in zip(before_student, student.trainable_weights)]
    assert sum(changed) > 0.9 * len(changed)


def test_same_resolution_student_sees_the_high_res_image():
    """student_input high: a smaller student (other FPN width, adapters) reads P3..P7 of the
    high-res batch itself; its detection loss is that of the student run alone on that batch,
    and its KD term compares maps of the teacher's own sizes."""
    keras.utils.set_random_seed(4)
    teacher = FCOSDetector(tiny_model_config(width=0.5), 3, train_mode="single")
    student = FCOSDetector(tiny_model_config(fpn_channels=8, gn_groups=4), 3, inference_shift=0)
    distiller = Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                          teacher_target="high", student_input="high", aligned=False)
    assert distiller.student_shift == 0 and distiller.aligned
    batch = toy_batch(2, 128)
    losses = distiller.compute_losses(batch, training=False)
    outputs = student.head_outputs(student.pyramid_features(batch["images"], 0, False))
    det = student.branch_loss(outputs, student.targets(batch["boxes"], batch["classes"], outputs))
    np.testing.assert_allclose(float(losses["loss_det"]), float(det["total"]), rtol=1e-5)
    teacher_maps = teacher.pyramid_features(batch["images"], 0, False)
    student_maps = [a(f) for a, f in zip(distiller.channel_adapters,
                                         student.pyramid_features(batch["images"], 0, False))]
    expected = 3.0 * sum(float(tf.reduce_mean(tf.abs(s - t))) for s, t in zip(student_maps, teacher_maps))
    assert [m.shape[1] for m in teacher_maps] == [16, 8, 4, 2, 1]
    np.testing.assert_allclose(float(losses["loss_kd"]), expected, rtol=1e-4)
    with pytest.raises(ValueError, match="student_input"):
        Distiller(teacher, student, build_distillation_loss("msad_l1", channels=16, num_levels=5),
                  teacher_target="high", student_input="half")


@pytest.mark.slow
def test_same_resolution_distillation_end_to_end(tiny_data, tmp_path):
    """A wider single-scale teacher -> a narrower student at the same (high) resolution through
    ``msad distill --student-input high``: the student is deployed, evaluated and exported at H."""
    from conftest import tiny_train_config
    from msad_tf.cli import main
    from msad_tf.evaluation.evaluator import evaluate_model
    from msad_tf.export.saved_model import deploy_resolution, export_spec
    from msad_tf.training import runs
    from msad_tf.training.train import load_split, train

    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    train(tiny_train_config(tiny_data, model={"width": 0.5}), teacher_dir, progress=False)
    config_path = tmp_path / "student.yaml"
    tiny_train_config(tiny_data).save(config_path)
    main(["distill", "--teacher", str(teacher_dir), "--config", str(config_path), "--run-dir", str(student_dir),
          "--student-input", "high", "--set", "train.teacher_target=high", "--set", "train.student_init=none",
          "--set", "model.fpn_channels=8", "--quiet"])
    config, student, _, _ = runs.load_run(student_dir)
    assert config.train.student_input == "high" and config.model.fpn_channels == 8
    assert deploy_resolution(student, config) == "high" and student.inference_shift == 0
    spec = export_spec(student, config)
    assert spec.resolution == "high" and spec.shift == 0 and spec.subsample == 1
    history = (student_dir / "history.csv").read_text().splitlines()
    assert "loss_kd" in history[0] and len(history) == 3
    metrics = evaluate_model(student, load_split(config, "val"), config, "high", progress=False)
    assert 0.0 <= metrics["AP"] <= 100.0
