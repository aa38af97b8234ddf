"""The authors' protocol (REFERENCE_NOTES sections 4 and 6) and the training speed-ups: each
configurable point against a hand-computed value or an equivalent reference computation."""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from msad_tf.config import AUTHORS_WARMUP, ConfigError, config_from_dict
from conftest import tiny_model_config, toy_batch


# ------------------------------------------------------------------ coupled L2 weight decay
def test_coupled_sgd_matches_pytorch_update_by_hand():
    """v <- m v + (g + wd w); w <- w - lr v, for two steps; excluded variables get no L2."""
    from msad_tf.training.optimizers import CoupledSGD

    lr, m, wd = 0.1, 0.9, 0.01
    kernel = keras.Variable(np.array([1.0, -2.0], np.float32), name="kernel")
    bias = keras.Variable(np.array([0.5], np.float32), name="bias")
    opt = CoupledSGD(lr, momentum=m, l2=wd, l2_exclude=["bias"])
    opt.build([kernel, bias])
    g_k, g_b = np.array([0.3, 0.1], np.float32), np.array([0.2], np.float32)
    w, v = np.array([1.0, -2.0]), np.zeros(2)
    b, vb = np.array([0.5]), np.zeros(1)
    for _ in range(2):
        opt.apply([tf.constant(g_k), tf.constant(g_b)], [kernel, bias])
        v = m * v + (g_k + wd * w)
        w = w - lr * v
        vb = m * vb + g_b
        b = b - lr * vb
    np.testing.assert_allclose(kernel.numpy(), w, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), b, rtol=1e-6)


def test_coupled_decay_is_ten_times_decoupled_in_steady_state():
    """With a zero loss gradient, coupled L2 under momentum 0.9 shrinks a weight about
    1 / (1 - 0.9) = 10x faster per step than Keras's decoupled decay."""
    from msad_tf.training.optimizers import CoupledSGD

    lr, wd, steps = 0.01, 0.01, 300
    coupled = keras.Variable(np.ones(1, np.float32), name="kernel_a")
    decoupled = keras.Variable(np.ones(1, np.float32), name="kernel_b")
    a = CoupledSGD(lr, momentum=0.9, l2=wd)
    b = keras.optimizers.SGD(lr, momentum=0.9, weight_decay=wd)
    a.build([coupled])
    b.build([decoupled])
    zero = tf.zeros(1)
    for _ in range(steps):
        a.apply([zero], [coupled])
        b.apply([zero], [decoupled])
    rate_a = -math.log(float(coupled.numpy()[0])) / steps
    rate_b = -math.log(float(decoupled.numpy()[0])) / steps
    assert rate_a / rate_b == pytest.approx(10.0, rel=0.05)


def test_make_optimizer_follows_weight_decay_mode():
    from msad_tf.training.optimizers import CoupledSGD
    from msad_tf.training.train import make_optimizer

    config = config_from_dict({"train": {"weight_decay": 1e-4}})
    assert isinstance(make_optimizer(config, 10), CoupledSGD)
    config = config_from_dict({"train": {"weight_decay_mode": "decoupled"}})
    opt = make_optimizer(config, 10)
    assert not isinstance(opt, CoupledSGD) and opt.weight_decay == pytest.approx(1e-4)
    with pytest.raises(ConfigError, match="weight_decay_mode"):
        config_from_dict({"train": {"weight_decay_mode": "adamw"}})


# ------------------------------------------------------------------ schedule fractions
def test_warmups_are_fractions_of_the_run_unless_given_in_steps():
    config = config_from_dict({"train": {"epochs": 10, "steps_per_epoch": 900}})
    assert config.train.warmup == AUTHORS_WARMUP == pytest.approx(500 / 90000)
    assert config.warmup_steps(900) == 50
    assert config.kd_warmup_steps(900) == 50
    config = config_from_dict({"train": {"warmup": 0.25, "kd_warmup_steps": 7, "epochs": 4}})
    assert config.warmup_steps(100) == 100
    assert config.kd_warmup_steps(100) == 7
    two_step = config_from_dict({"train": {"mode": "teacher", "schedule": "two_step", "epochs": 3,
                                           "stage2_epochs": 1, "warmup": 0.5}})
    assert two_step.total_steps(10) == 40 and two_step.warmup_steps(10) == 20
    with pytest.raises(ConfigError, match="fraction"):
        config_from_dict({"train": {"warmup": 5}})


def test_schedule_of_the_optimizer_uses_the_fraction():
    from msad_tf.training.train import make_optimizer

    config = config_from_dict({"train": {"epochs": 4, "steps_per_epoch": 100, "warmup": 0.1,
                                         "base_lr": 0.1, "batch_size": 16, "base_batch": 16,
                                         "warmup_factor": 0.0, "lr_decay_epochs": [3]}})
    optimizer = make_optimizer(config, 100)
    for step, lr in ((20, 0.05), (40, 0.1), (350, 0.01)):
        optimizer.iterations.assign(step)
        assert float(optimizer.learning_rate) == pytest.approx(lr)


# ------------------------------------------------------------------ student loss weights
def _distiller(**kwargs):
    from msad_tf.losses.distillation import build_distillation_loss
    from msad_tf.modeling.detector import FCOSDetector
    from msad_tf.modeling.teacher import MultiScaleTeacher
    from msad_tf.training.distiller import Distiller

    keras.utils.set_random_seed(0)
    teacher = MultiScaleTeacher(tiny_model_config(norm="bn"), 3)
    student = FCOSDetector(tiny_model_config(norm="bn"), 3, inference_shift=1)
    loss = build_distillation_loss("msad_l1", channels=16, num_levels=5)
    return Distiller(teacher, student, loss, **kwargs)


@pytest.mark.parametrize("det_weight, expected", [(1.0, 1.0), (None, 0.8), (0.5, 0.5)])
def test_student_loss_is_gamma_kd_plus_det_weight_det(det_weight, expected):
    distiller = _distiller(gamma=0.2, det_weight=det_weight)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    losses = distiller.compute_losses(toy_batch(batch=2, size=128), training=False)
    kd, det = float(losses["loss_kd"]), float(losses["loss_det"])
    assert distiller.det_weight == pytest.approx(expected)
    assert float(losses["loss"]) == pytest.approx(0.2 * kd + expected * det, rel=1e-5)


def test_config_det_weight_default_is_the_authors():
    config = config_from_dict({})
    assert config.train.det_weight == 1.0 and config.det_weight() == 1.0
    paper = config_from_dict({"train": {"det_weight": None, "gamma": 0.3}})
    assert paper.det_weight() == pytest.approx(0.7)


def test_distill_options_reach_the_loss_layer_and_are_checked():
    from msad_tf.modeling.detector import FCOSDetector
    from msad_tf.modeling.teacher import MultiScaleTeacher
    from msad_tf.training.train import make_distiller

    teacher = MultiScaleTeacher(tiny_model_config(norm="bn"), 3)
    student = FCOSDetector(tiny_model_config(norm="bn"), 3, inference_shift=1)
    skd = config_from_dict({"train": {"distill_loss": "skd", "distill_options": {"temperature": 0.5}}})
    assert make_distiller(skd, teacher, student).distill_loss.temperature == 0.5
    assert make_distiller(config_from_dict({"train": {"distill_loss": "skd"}}), teacher, student).distill_loss.temperature \
        == pytest.approx(0.1)
    msad = config_from_dict({"train": {"tau": 2.0, "distill_options": {"tau": 9.0}}})
    assert make_distiller(msad, teacher, student).distill_loss.tau == 2.0
    with pytest.raises(ValueError, match="has no option"):
        make_distiller(config_from_dict({"train": {"distill_options": {"temprature": 0.5}}}), teacher, student)
    with pytest.raises(ConfigError, match="must be a mapping"):
        config_from_dict({"train": {"distill_options": 0.5}})


def test_kd_ramp_reaches_one_at_its_steps():
    distiller = _distiller(kd_warmup_steps=4)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    values = []
    for step in (0, 2, 4, 9):
        distiller.optimizer.iterations.assign(step)
        values.append(float(distiller.kd_ramp()))
    assert values == [0.0, 0.5, 1.0, 1.0]


# ------------------------------------------------------------------ FPN init and BN momentum
def test_fpn_kernels_follow_c2_xavier_fill():
    from msad_tf.modeling.fpn import FeaturePyramid

    keras.utils.set_random_seed(0)
    fpn = FeaturePyramid(64, min_level=2, in_channels=(16, 16, 32, 64, 128))
    fpn.build()
    kernel = fpn.output_conv[3].kernel.numpy()
    bound = math.sqrt(3.0 / (3 * 3 * 64))
    assert np.abs(kernel).max() <= bound
    assert kernel.std() == pytest.approx(bound / math.sqrt(3.0), rel=0.05)
    he = FeaturePyramid(64, min_level=2, in_channels=(16, 16, 32, 64, 128), init="he_uniform")
    he.build()
    assert he.output_conv[3].kernel.numpy().std() == pytest.approx(math.sqrt(2.0) * kernel.std(), rel=0.05)
    with pytest.raises(ConfigError, match="fpn_init"):
        config_from_dict({"model": {"fpn_init": "glorot"}})


def test_backbone_batchnorm_momentum_is_detectron2s():
    from msad_tf.modeling.detector import FCOSDetector

    model = FCOSDetector(tiny_model_config(), 3)
    momenta = {layer.momentum for layer in model.backbone.layers
               if isinstance(layer, keras.layers.BatchNormalization)}
    assert momenta == {0.9}
    model = FCOSDetector(tiny_model_config(bn_momentum=0.99), 3)
    assert {layer.momentum for layer in model.backbone.layers
            if isinstance(layer, keras.layers.BatchNormalization)} == {0.99}


# ------------------------------------------------------------------ speed-ups are exact
@pytest.mark.parametrize("dtype", ["float32", "mixed_bfloat16"])
def test_fused_batchnorm_equals_keras(dtype):
    """Output, moving statistics and gradients of the fused training path equal Keras's."""
    from msad_tf.modeling.norm import BatchNorm

    x = tf.random.stateless_normal([4, 6, 5, 8], seed=[1, 2]) * 3.0 + 1.0
    layers = []
    for cls in (keras.layers.BatchNormalization, BatchNorm):
        layer = cls(momentum=0.9, epsilon=1e-3, dtype=dtype)
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, 8).astype(np.float32))
        layer.beta.assign(np.linspace(-1, 1, 8).astype(np.float32))
        layers.append(layer)
    results = []
    for layer in layers:
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(8, dtype=tf.float32))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append((y, layer.moving_mean.numpy(), layer.moving_variance.numpy(), grads))
    tol = 1e-4 if dtype == "float32" else 2e-2
    (y0, m0, v0, g0), (y1, m1, v1, g1) = results
    np.testing.assert_allclose(tf.cast(y1, tf.float32), tf.cast(y0, tf.float32), atol=tol)
    np.testing.assert_allclose(m1, m0, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v1, v0, rtol=1e-4)
    assert float(np.abs(m1).max()) > 0.05
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(b, np.float32), atol=tol * 10,
                                   rtol=tol)
    np.testing.assert_allclose(layers[1](x, training=False), layers[0](x, training=False), atol=tol)


@pytest.mark.parametrize("mode", ["aligned", "teacher"])
def test_batched_heads_equal_separate_passes(mode):
    """One head pass over the concatenated branches gives the losses and gradients of one
    pass per branch."""
    from msad_tf.modeling.detector import FCOSDetector
    from msad_tf.modeling.teacher import MultiScaleTeacher

    batch = toy_batch(batch=2, size=128)
    results = []
    for batched in (False, True):
        keras.utils.set_random_seed(3)
        cfg = tiny_model_config(norm="bn", batch_heads=batched)
        model = MultiScaleTeacher(cfg, 3) if mode == "teacher" else FCOSDetector(cfg, 3, train_mode="aligned")
        with tf.GradientTape() as tape:
            losses = model.compute_losses(batch, training=True)
        grads = tape.gradient(losses["loss"], model.trainable_variables)
        results.append((losses, grads))
    (l0, g0), (l1, g1) = results
    for key in l0:
        np.testing.assert_allclose(float(l1[key]), float(l0[key]), rtol=1e-5, err_msg=key)
    for a, b in zip(g1, g0):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


def test_image_cache_gives_the_same_stream(tiny_data):
    from msad_tf.data import CocoDataset, build_dataset
    from msad_tf.data.pipeline import use_image_cache

    data = CocoDataset(f"{tiny_data}/annotations/instances_train.json", f"{tiny_data}/train")
    assert use_image_cache("auto", data) and not use_image_cache(False, data)
    assert not use_image_cache(True, "shards-*.tfrecord")
    streams = []
    for cache in (False, True):
        ds = build_dataset(data, short_side=64, max_side=64, batch_size=4, training=True, jitter=(0.5, 1.0),
                           pad_multiple=128, seed=5, repeat=True, cache_images=cache)
        streams.append([b for b in ds.take(7)])
    for a, b in zip(*streams):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)


def test_benchmark_train_ratios_come_from_one_run(tiny_data, monkeypatch):
    """Every mode gets default, before and one variant per requested speed-up or override, with
    images/s ratios over before computed from the same run (timings are not asserted: the machine
    is noisy); an override of the batch size is timed on a batch of that size."""
    from msad_tf.evaluation.benchmark import SPEEDUPS, benchmark_train, format_train_benchmark
    from conftest import tiny_train_config

    from msad_tf.evaluation import benchmark

    config = tiny_train_config(tiny_data, precision="mixed_bfloat16")
    timed_batches = []
    step_function = benchmark._step_function
    monkeypatch.setattr(benchmark, "_step_function", lambda model, batch: (
        timed_batches.append(int(batch["images"].shape[0])), step_function(model, batch))[1])
    doubled = 2 * config.train.batch_size
    result = benchmark_train(config, modes=("single",), steps=1, rounds=1, pipeline_batches=2,
                             speedups=(), progress=False, compare=(f"train.batch_size={doubled}",))
    assert set(result["pipeline"]) == {"cache", "no_cache"}
    assert timed_batches == [config.train.batch_size, config.train.batch_size, doubled]
    for mode in ("single",):
        entry = result["modes"][mode]
        assert set(entry) == {"default", "before", f"with train.batch_size={doubled}"}
        assert entry["before"]["speedup"] == 1.0
        for variant in entry.values():
            assert variant["images_per_second"] == pytest.approx(variant["batch_size"] / variant["step_seconds"])
            assert variant["speedup"] == pytest.approx(
                variant["images_per_second"] / entry["before"]["images_per_second"])
        assert entry["default"]["speedup"] == pytest.approx(
            entry["before"]["step_seconds"] / entry["default"]["step_seconds"])
        bigger = entry[f"with train.batch_size={doubled}"]
        assert bigger["batch_size"] == doubled
        assert bigger["images_relative_to_default"] == pytest.approx(
            bigger["images_per_second"] / entry["default"]["images_per_second"])
    assert result["modes"]["single"]["default"]["ratio_to_single"] == 1.0
    text = format_train_benchmark(result)
    assert "before" in text and "single" in text and f"(batch {doubled}: " in text
    assert set(SPEEDUPS) == {"fused_bn", "batch_heads", "fused_optimizer", "precision", "jit_compile"}
    from msad_tf.cli import build_parser

    args = build_parser().parse_args(["benchmark", "train", "--speedups", *SPEEDUPS])
    assert args.speedups == list(SPEEDUPS)


def test_profile_train_reports_where_the_step_time_goes(tiny_data, tmp_path):
    """The traced step's op self-times: convolutions forward and backward appear, the by-type
    rows add up to at most the busy total, and the trace stays on disk for TensorBoard."""
    from msad_tf.evaluation.benchmark import format_profile, profile_train
    from conftest import tiny_train_config

    result = profile_train(tiny_train_config(tiny_data), modes=("single",), steps=2, trace_dir=tmp_path)
    entry = result["modes"]["single"]
    assert entry["busy_ms"] > 0 and entry["ops_per_step"] > 100 and entry["step_seconds"] > 0
    assert any("Conv2D" in kind for kind, _, _ in entry["by_type"])
    assert sum(ms for _, ms, _ in entry["by_type"]) <= entry["busy_ms"] + 1e-6
    scopes = {(scope, conv) for scope, conv, _, _ in entry["by_scope"]}
    assert any(scope.startswith("backward") and conv for scope, conv in scopes)
    assert any(scope.startswith("forward") and conv for scope, conv in scopes)
    assert list((tmp_path / "single").rglob("*.xplane.pb"))
    assert "single:" in format_profile(result)


@pytest.mark.slow
def test_benchmark_processes_times_concurrent_runs(tiny_data):
    """P processes time their steps at the same moment; images/s counts all of them and the
    ratio is against the first P of the same run."""
    from msad_tf.evaluation.benchmark import benchmark_processes, format_process_benchmark
    from conftest import tiny_train_config

    config = tiny_train_config(tiny_data)
    result = benchmark_processes(config, "single", steps=2, rounds=1, processes=(1, 2), progress=False)
    one, two = result["processes"][1], result["processes"][2]
    assert one["speedup"] == 1.0
    assert two["images_per_second"] == pytest.approx(2 * config.train.batch_size / two["step_seconds"])
    assert two["speedup"] == pytest.approx(two["images_per_second"] / one["images_per_second"])
    assert "x 1 process" in format_process_benchmark(result)


@pytest.mark.slow
def test_benchmark_threads_runs_each_setting_in_its_own_process(tiny_data):
    """Each thread setting's process reports the pools it ran with; every ratio is against
    the first setting's step before the speed-ups."""
    from msad_tf.cpu_threads import thread_settings
    from msad_tf.evaluation.benchmark import THREAD_SETTINGS, benchmark_threads, format_thread_benchmark
    from conftest import tiny_train_config

    config = tiny_train_config(tiny_data)
    doubled = 2 * config.train.batch_size
    result = benchmark_threads(config, modes=("single",), steps=1, rounds=1, progress=False,
                               compare=(f"train.batch_size={doubled}",))
    tf_pools, msad_pools = (result["settings"][name] for name in THREAD_SETTINGS)
    assert tf_pools["threads"] == [0, 0]
    assert tuple(msad_pools["threads"]) == thread_settings(1, env={})
    assert tf_pools["modes"]["single"]["before"]["speedup"] == 1.0
    base = config.train.batch_size / tf_pools["modes"]["single"]["before"]["step_seconds"]
    for entry in (tf_pools, msad_pools):
        assert entry["modes"]["single"][f"with train.batch_size={doubled}"]["batch_size"] == doubled
        for row in entry["modes"]["single"].values():
            assert row["speedup"] == pytest.approx(row["batch_size"] / row["step_seconds"] / base)
    assert "msad (auto) (" in format_thread_benchmark(result)


@pytest.mark.slow
def test_evaluate_checkpoints_gives_ap_against_steps(tiny_data, tmp_path):
    """msad evaluate --checkpoints: one entry per epoch checkpoint at epoch x steps_per_epoch;
    the last one is the final weights' evaluation."""
    import json

    from conftest import tiny_train_config
    from msad_tf.cli import main
    from msad_tf.training.train import train

    run = tmp_path / "run"
    train(tiny_train_config(tiny_data), run, progress=False)
    main(["evaluate", "--run", str(run), "--checkpoints", "--resolutions", "high", "--quiet"])
    main(["evaluate", "--run", str(run), "--resolutions", "high", "--quiet"])
    curve = json.loads((run / "eval_val_checkpoints.json").read_text())
    final = json.loads((run / "eval_val.json").read_text())
    assert list(curve) == ["3", "6"]
    assert curve["6"]["high"]["AP"] == pytest.approx(final["high"]["AP"])


@pytest.mark.slow
def test_benchmark_train_times_distillation_losses_against_the_default(tiny_data):
    from msad_tf.evaluation.benchmark import benchmark_train
    from conftest import tiny_train_config

    config = tiny_train_config(tiny_data)
    students = benchmark_train(config, modes=("student",), steps=1, rounds=1, pipeline_batches=2, speedups=(),
                               progress=False, losses=("skd",))["modes"]["student"]
    assert set(students) == {"default", "before", "loss skd"}
    assert students["loss skd"]["relative_to_default"] == pytest.approx(
        students["loss skd"]["step_seconds"] / students["default"]["step_seconds"])


def test_benchmark_builds_the_configured_detector_for_every_mode(tiny_data):
    """``msad benchmark train`` times RetinaNet's teacher and distillation steps, not FCOS's."""
    from msad_tf.evaluation.benchmark import _build_for_step
    from msad_tf.modeling.retinanet_detector import RetinaNetDetector, RetinaNetTeacher
    from msad_tf.training.runs import build_model
    from conftest import tiny_train_config

    config = tiny_train_config(tiny_data, model=dict(arch="retinanet"))
    teacher = _build_for_step(config, "teacher", 6, build_model)
    assert isinstance(teacher, RetinaNetTeacher)
    distiller = _build_for_step(config, "student", 6, build_model)
    assert isinstance(distiller.teacher, RetinaNetTeacher) and isinstance(distiller.student, RetinaNetDetector)


@pytest.mark.slow
def test_benchmark_compares_a_config_override_in_every_mode(tiny_data):
    from msad_tf.evaluation.benchmark import benchmark_train, format_train_benchmark
    from conftest import tiny_train_config

    result = benchmark_train(tiny_train_config(tiny_data), modes=("single", "teacher"), steps=1, rounds=1,
                             pipeline_batches=2, speedups=(), progress=False, compare=("model.arch=retinanet",))
    for mode in ("single", "teacher"):
        entry = result["modes"][mode]["with model.arch=retinanet"]
        assert entry["relative_to_default"] == pytest.approx(
            entry["step_seconds"] / result["modes"][mode]["default"]["step_seconds"])
    assert "teacher with model.arch=retinanet" in format_train_benchmark(result)
