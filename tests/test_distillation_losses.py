"""Distillation-loss registry against values computed independently with numpy."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from msad_tf.losses.distillation import (
    DISTILLATION_LOSSES,
    DistillationLoss,
    box_mask,
    build_distillation_loss,
    register,
)
from msad_tf.losses.skd import attention_masks
from msad_tf.training.strategy import mirrored_strategy

RTOL = 1e-5
C = 2
SHAPES = [(2, 2, 2, C), (2, 1, 1, C)]
# The registry's order is the order of msad reproduce's and msad ablation's run plans.
REGISTRY_ORDER = ["msad_l1", "msad_l1_norm", "msad_l1_fg", "mse", "output_kd", "fgfi", "podnet", "skd", "skd_paper"]


def _maps(seed, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape).astype(np.float32) for shape in shapes]


def _tf(arrays):
    return [tf.constant(a) for a in arrays]


def _logits(seed, shapes=SHAPES, k=3):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=shape[:3] + (k,)).astype(np.float32) for shape in shapes]


def _outputs(logits):
    return [{"cls_logits": tf.constant(z)} for z in logits]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _conv_same(x, kernel, bias):
    """numpy NHWC conv, stride 1, zero 'same' padding; kernel [k, k, in, out]."""
    k = kernel.shape[0]
    pad = k // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, _ = x.shape
    out = np.zeros((b, h, w, kernel.shape[-1]), np.float64)
    for i in range(h):
        for j in range(w):
            patch = xp[:, i:i + k, j:j + k, :]
            out[:, i, j, :] = np.einsum("bxyc,xyco->bo", patch, kernel)
    return out + bias


def _fgfi_extra():
    boxes = tf.constant([[[0.0, 0, 16, 16]]] * 2)
    return dict(boxes=boxes, classes=tf.constant([[0]] * 2), strides=[8, 16])


def test_unknown_name_and_option_list_valid_ones():
    with pytest.raises(ValueError) as err:
        build_distillation_loss("hinton", channels=C, num_levels=2)
    for name in DISTILLATION_LOSSES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="tau"):
        build_distillation_loss("msad_l1", channels=C, num_levels=2, temperature=2.0)


def test_registry_holds_every_family_in_a_fixed_order():
    assert list(DISTILLATION_LOSSES) == REGISTRY_ORDER
    # entering the package through a family module gives the same order (msad_tf/losses/__init__.py)
    code = ("import msad_tf.losses.podnet; from msad_tf.losses.distillation import DISTILLATION_LOSSES; "
            "print(','.join(DISTILLATION_LOSSES))")
    done = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == ",".join(REGISTRY_ORDER)


def test_register_refuses_a_taken_name_and_a_non_loss():
    with pytest.raises(ValueError, match="registered twice"):
        register("mse")(type("OtherMSE", (DistillationLoss,), {}))
    with pytest.raises(TypeError, match="not a DistillationLoss"):
        register("not_a_loss")(object)
    assert list(DISTILLATION_LOSSES) == REGISTRY_ORDER


def test_msad_l1_hand_value():
    loss = build_distillation_loss("msad_l1", channels=C, num_levels=2)
    ones = [tf.ones(s) for s in SHAPES]
    zeros = [tf.zeros(s) for s in SHAPES]
    assert float(loss(ones, zeros)) == pytest.approx(3.0 * 2, rel=RTOL)
    t, s = _maps(0), _maps(1)
    expected = 2.5 * sum(np.abs(a - b).mean() for a, b in zip(t, s))
    tau = build_distillation_loss("msad_l1", channels=C, num_levels=2, tau=2.5)
    np.testing.assert_allclose(float(tau(_tf(t), _tf(s))), expected, rtol=RTOL)


def test_msad_l1_norm_hand_value():
    """L1 of per-cell channel-standardised maps: invariant to the teacher's scale and offset."""
    shapes = [(2, 2, 2, 3), (2, 1, 1, 3)]
    t, s = _maps(0, shapes), _maps(1, shapes)

    def z(x):
        return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)

    expected = 2.0 * sum(np.abs(z(a) - z(b)).mean() for a, b in zip(t, s))
    loss = build_distillation_loss("msad_l1_norm", channels=3, num_levels=2, tau=2.0)
    np.testing.assert_allclose(float(loss(_tf(t), _tf(s))), expected, rtol=1e-4)
    scaled = [10.0 * a + 3.0 for a in t]
    np.testing.assert_allclose(float(loss(_tf(scaled), _tf(s))), expected, rtol=1e-3)


def test_msad_l1_fg_hand_value():
    """Foreground and background cells get half of each level's term; a level without
    foreground cells keeps its background mean."""
    t, s = _maps(0), _maps(1)
    boxes = tf.constant([[[0.0, 0, 4, 4]], [[0.0, 0, 0, 0]]])
    classes = tf.constant([[0], [-1]])
    loss = build_distillation_loss("msad_l1_fg", channels=C, num_levels=2, tau=1.0)
    value = float(loss(_tf(t), _tf(s), boxes=boxes, classes=classes, strides=[8, 16]))
    diff0 = np.abs(t[0] - s[0]).sum(-1)  # [2, 2, 2]; only cell (0, 0, 0) (centre 4, 4) is inside
    fg = diff0[0, 0, 0] / C
    bg = (diff0.sum() - diff0[0, 0, 0]) / (7 * C)
    diff1 = np.abs(t[1] - s[1]).sum(-1)  # centre (8, 8) of the stride-16 cell is outside [0, 4]
    expected = 0.5 * fg + 0.5 * bg + diff1.sum() / (2 * C)
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_mse_hand_value():
    t, s = _maps(0), _maps(1)
    expected = 0.5 * sum(((a - b) ** 2).mean() for a, b in zip(t, s))
    loss = build_distillation_loss("mse", channels=C, num_levels=2, weight=0.5)
    np.testing.assert_allclose(float(loss(_tf(t), _tf(s))), expected, rtol=RTOL)


def test_output_kd_hand_value():
    zt, zs = _logits(2), _logits(3)
    temp = 2.0
    expected = 0.0
    for a, b in zip(zt, zs):
        p, q = _sigmoid(a / temp), _sigmoid(b / temp)
        expected += (-(p * np.log(q) + (1 - p) * np.log(1 - q))).mean()
    expected *= temp**2
    loss = build_distillation_loss("output_kd", channels=C, num_levels=2, num_classes=3, temperature=temp)
    assert loss.needs_outputs
    value = loss(_tf(_maps(0)), _tf(_maps(1)), teacher_outputs=_outputs(zt), student_outputs=_outputs(zs))
    np.testing.assert_allclose(float(value), expected, rtol=RTOL)
    with pytest.raises(ValueError, match="teacher_outputs"):
        loss(_tf(_maps(0)), _tf(_maps(1)))


def test_box_mask_quadrant_and_padding():
    boxes = tf.constant([[[0.0, 0, 16, 16], [0, 0, 32, 32]]])
    mask = box_mask(boxes, tf.constant([[1, -1]]), 4, 4, 8, 8).numpy()[0]
    expected = np.zeros((4, 4))
    expected[:2, :2] = 1
    np.testing.assert_array_equal(mask, expected)
    expanded = box_mask(boxes[:, :1], None, 4, 4, 8, 8, expand=1.5).numpy()[0]
    expected[:3, :3] = 1
    np.testing.assert_array_equal(expanded, expected)


def test_fgfi_counts_only_cells_inside_the_box():
    rng = np.random.default_rng(4)
    shapes = [(1, 4, 4, C), (1, 2, 2, C)]
    t = [rng.normal(size=s).astype(np.float32) for s in shapes]
    s = [rng.normal(size=s).astype(np.float32) for s in shapes]
    t[0][:, 2:, :, :] = 1e3
    t[0][:, :, 2:, :] = 1e3
    t[1][:, 1, :, :] = 1e3
    t[1][:, :, 1, :] = 1e3
    loss = build_distillation_loss("fgfi", channels=C, num_levels=2, weight=2.0)
    kernel = rng.normal(size=(3, 3, C, C)).astype(np.float32)
    bias = np.array([0.5, -0.25], np.float32)
    loss.adapter(0).kernel.assign(kernel)
    loss.adapter(0).bias.assign(bias)
    adapted = [_conv_same(s[0], kernel, bias), s[1]]
    # stride 8: centres 4, 12 (in), 20, 28; stride 16: centres 8 (in), 24.
    inside = [(t[0] - adapted[0])[:, :2, :2], (t[1] - adapted[1])[:, :1, :1]]
    num_cells = 4 + 1
    expected = 2.0 * 0.5 * sum((d**2).sum() for d in inside) / (num_cells * C)
    boxes = tf.constant([[[0.0, 0, 16, 16], [0, 0, 0, 0]]])
    classes = tf.constant([[3, -1]])
    value = loss(_tf(t), _tf(s), boxes=boxes, classes=classes, strides=[8, 16])
    np.testing.assert_allclose(float(value), expected, rtol=RTOL)
    from_image = loss(_tf(t), _tf(s), boxes=boxes, classes=classes, image_shape=(32, 32))
    np.testing.assert_allclose(float(from_image), expected, rtol=RTOL)
    empty = loss(_tf(t), _tf(s), boxes=tf.zeros([1, 1, 4]), classes=tf.constant([[-1]]), strides=[8, 16])
    assert float(empty) == 0.0


def test_fgfi_adapters_per_level_or_shared():
    per_level = build_distillation_loss("fgfi", channels=C, num_levels=2)
    shared = build_distillation_loss("fgfi", channels=C, num_levels=2, shared_adapter=True)
    assert per_level.training_only and shared.training_only
    assert len(per_level.trainable_weights) == 4 and len(shared.trainable_weights) == 2
    assert sum(int(np.prod(w.shape)) for w in per_level.trainable_weights) == 2 * (9 * C * C + C)
    x = _tf(_maps(5))
    np.testing.assert_allclose(per_level.adapter(1)(x[1]).numpy(), x[1].numpy(), atol=1e-6)


def test_podnet_hand_value():
    t, s = _maps(6), _maps(7)

    def pod(a):
        sq = a**2
        pooled = np.concatenate([sq.sum(axis=2), sq.sum(axis=1)], axis=1).reshape(a.shape[0], -1)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    expected = sum(np.linalg.norm(pod(a) - pod(b), axis=1).mean() for a, b in zip(t, s))
    loss = build_distillation_loss("podnet", channels=C, num_levels=2)
    np.testing.assert_allclose(float(loss(_tf(t), _tf(s))), expected, rtol=RTOL)


@pytest.mark.parametrize("method", ["bilinear", "area"])
def test_not_aligned_resizes_the_teacher(method):
    ramp = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    teacher = np.repeat(ramp, C, axis=-1)
    blocks = teacher.reshape(1, 2, 2, 2, 2, C).mean(axis=(2, 4))
    loss = build_distillation_loss("msad_l1", channels=C, num_levels=1, aligned=False, tau=1.0,
                                   resize_method=method)
    value = loss([tf.constant(teacher)], [tf.zeros([1, 2, 2, C])])
    np.testing.assert_allclose(float(value), np.abs(blocks).mean(), rtol=RTOL)
    aligned = build_distillation_loss("msad_l1", channels=C, num_levels=1)
    with pytest.raises(ValueError, match="aligned=False"):
        aligned([tf.constant(teacher)], [tf.zeros([1, 2, 2, C])])


def test_not_aligned_fgfi_mask_uses_student_cells():
    loss = build_distillation_loss("fgfi", channels=C, num_levels=1, aligned=False)
    teacher = tf.ones([1, 4, 4, C])
    student = tf.zeros([1, 2, 2, C])
    value = loss([teacher], [student], boxes=tf.constant([[[0.0, 0, 16, 16]]]), strides=[8])
    # student cells are 16 px in the teacher frame: centres 8 (in) and 24; one cell, diff 1.
    np.testing.assert_allclose(float(value), 0.5 * C / (1 * C), rtol=RTOL)


@pytest.mark.parametrize("name", sorted(DISTILLATION_LOSSES))
def test_gradients_reach_only_the_student(name):
    t, s = _tf(_maps(8)), _tf(_maps(9))
    zt, zs = _tf(_logits(10)), _tf(_logits(11))
    loss = build_distillation_loss(name, channels=C, num_levels=2, num_classes=3)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(t + s + zt + zs)
        value = loss(t, s, teacher_outputs=[{"cls_logits": z} for z in zt],
                     student_outputs=[{"cls_logits": z} for z in zs], **_fgfi_extra())
    assert value.dtype == tf.float32 and value.shape == ()
    teacher_side, student_side = (zt, zs) if name == "output_kd" else (t, s)
    assert all(g is None for g in tape.gradient(value, teacher_side))
    grads = tape.gradient(value, student_side)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)
    if loss.trainable_weights:
        assert loss.training_only
        assert all(g is not None for g in tape.gradient(value, loss.trainable_weights))


def test_skd_masks_sum_to_size():
    t, s = _maps(12, [(2, 3, 2, 4)] * 2)
    m_s, m_c = attention_masks(tf.constant(t), tf.constant(s), 0.5)
    assert m_s.shape == (2, 3, 2) and m_c.shape == (2, 4)
    np.testing.assert_allclose(m_s.numpy().sum(axis=(1, 2)), [6.0, 6.0], rtol=RTOL)
    np.testing.assert_allclose(m_c.numpy().sum(axis=1), [4.0, 4.0], rtol=RTOL)
    spatial = [6 * _softmax(np.abs(a).mean(-1).reshape(2, -1) / 0.5) for a in (t, s)]
    np.testing.assert_allclose(m_s.numpy().reshape(2, -1), (spatial[0] + spatial[1]) / 2, rtol=RTOL)
    channel = [4 * _softmax(np.abs(a).mean((1, 2)) / 0.5) for a in (t, s)]
    np.testing.assert_allclose(m_c.numpy(), (channel[0] + channel[1]) / 2, rtol=RTOL)


def _set_random(layer, rng):
    values = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.weights]
    layer.set_weights(values)
    return values


def _np_nonlocal(x, params, mode):
    wt, bt, wp, bp, wg, bg, wo, bo = params
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c).astype(np.float64)
    theta = flat @ wt[0, 0] + bt
    phi = flat @ wp[0, 0] + bp
    g = flat @ wg[0, 0] + bg
    aff = np.einsum("bni,bmi->bnm", theta, phi)
    aff = _softmax(aff, -1) if mode == "embedded_gaussian" else aff / (h * w)
    y = np.einsum("bnm,bmi->bni", aff, g)
    return (y @ wo[0, 0] + bo).reshape(b, h, w, c)


@pytest.mark.parametrize("distance,mode", [("squared", "embedded_gaussian"), ("norm", "dot_product")])
def test_skd_paper_hand_value(distance, mode):
    rng = np.random.default_rng(13)
    t, s = _maps(14), _maps(15)
    temp = 0.5
    loss = build_distillation_loss("skd_paper", channels=C, num_levels=2, distance=distance, nonlocal_mode=mode,
                                   nonlocal_pool=1, temperature=temp)
    expected = {"at": 0.0, "am": 0.0, "nld": 0.0}
    dist = (lambda a, b: ((a - b) ** 2).reshape(len(a), -1).sum(1)) if distance == "squared" else (
        lambda a, b: np.sqrt(((a - b) ** 2).reshape(len(a), -1).sum(1)))
    for level, (a_t, a_s) in enumerate(zip(t, s)):
        w_am, b_am = _set_random(loss.am_adapters[level], rng)
        w_sp, b_sp = _set_random(loss.spatial_adapters[level], rng)
        w_fc, b_fc = _set_random(loss.channel_adapters[level], rng)
        w_nl, b_nl = _set_random(loss.nld_adapters[level], rng)
        nl_t = _set_random(loss.teacher_blocks[level], rng)
        nl_s = _set_random(loss.student_blocks[level], rng)
        b, h, w, c = a_t.shape
        gs_t, gs_s = np.abs(a_t).mean(-1), np.abs(a_s).mean(-1)
        gc_t, gc_s = np.abs(a_t).mean((1, 2)), np.abs(a_s).mean((1, 2))
        m_s = (h * w * (_softmax(gs_t.reshape(b, -1) / temp) + _softmax(gs_s.reshape(b, -1) / temp)) / 2)
        m_c = c * (_softmax(gc_t / temp) + _softmax(gc_s / temp)) / 2
        diff = (a_t - (a_s @ w_am[0, 0] + b_am)) ** 2 * m_s.reshape(b, h, w, 1) * m_c[:, None, None, :]
        expected["am"] += np.sqrt(diff.reshape(b, -1).sum(1)).mean()
        spatial = _conv_same(gs_s[..., None], w_sp, b_sp)[..., 0]
        expected["at"] += (dist(spatial, gs_t) + dist(gc_s @ w_fc + b_fc, gc_t)).mean()
        r_t = _np_nonlocal(a_t, nl_t, mode)
        r_s = _np_nonlocal(a_s, nl_s, mode) @ w_nl[0, 0] + b_nl
        expected["nld"] += dist(r_s, r_t).mean()
    terms = loss.terms(_tf(t), _tf(s))
    for key in expected:
        np.testing.assert_allclose(float(terms[key]), expected[key], rtol=RTOL, err_msg=key)
    total = 4e-4 * expected["at"] + 2e-2 * expected["am"] + 4e-4 * expected["nld"]
    np.testing.assert_allclose(float(loss(_tf(t), _tf(s))), total, rtol=RTOL)


def test_skd_paper_weights_and_identity_start():
    loss = build_distillation_loss("skd_paper", channels=C, num_levels=2)
    assert loss.training_only
    assert len(loss.trainable_weights) == 2 * (2 + 2 + 2 + 2 + 8)
    assert len(loss.non_trainable_weights) == 2 * 8
    inter = C // 2
    nonlocal_params = 3 * (C * inter + inter) + inter * C + C
    per_level = (C * C + C) + (9 + 1) + (C * C + C) + (C * C + C) + nonlocal_params
    assert sum(int(np.prod(w.shape)) for w in loss.trainable_weights) == 2 * per_level
    trained = build_distillation_loss("skd_paper", channels=C, num_levels=2, train_teacher_block=True)
    assert len(trained.trainable_weights) == 2 * (2 + 2 + 2 + 2 + 8 + 8)
    x = _tf(_maps(16, [(1, 4, 4, C), (1, 2, 2, C)]))
    terms = loss.terms(x, x)
    for key, value in terms.items():
        assert float(value) == pytest.approx(0.0, abs=1e-6), key
    other = _tf(_maps(17, [(1, 4, 4, C), (1, 2, 2, C)]))
    assert np.isfinite(float(loss(x, other))) and float(loss(x, other)) > 0


OPTIONS = {
    "msad_l1": dict(tau=2.0),
    "msad_l1_norm": dict(tau=1.5),
    "msad_l1_fg": dict(tau=0.5),
    "mse": dict(weight=0.3),
    "output_kd": dict(temperature=2.0, weight=0.5),
    "fgfi": dict(weight=2.0, box_expand=1.2, shared_adapter=True),
    "podnet": dict(weight=0.7),
    "skd": dict(preset="two_stage", temperature=0.2, channel_mask=True, nonlocal_pool=[2, 1], inter_channels=[1, 2],
                adapter_init="identity"),
    "skd_paper": dict(temperature=0.1, distance="norm", nonlocal_pool=[2, 1], train_teacher_block=True),
}


@pytest.mark.parametrize("name", sorted(DISTILLATION_LOSSES))
def test_get_config_round_trip(name):
    loss = build_distillation_loss(name, channels=C, num_levels=2, num_classes=3, aligned=False,
                                   **OPTIONS[name])
    config = loss.get_config()
    for key, value in OPTIONS[name].items():
        assert config[key] == value
    assert config["aligned"] is False
    clone = type(loss).from_config(config)
    assert clone.get_config() == config
    assert len(clone.trainable_weights) == len(loss.trainable_weights)


def test_two_replicas_sum_to_the_global_batch_value():
    rng = np.random.default_rng(18)
    shapes = [(4, 4, 4, C), (4, 2, 2, C)]
    t = [rng.normal(size=sh).astype(np.float32) for sh in shapes]
    s = [rng.normal(size=sh).astype(np.float32) for sh in shapes]
    zt = [rng.normal(size=sh[:3] + (3,)).astype(np.float32) for sh in shapes]
    zs = [rng.normal(size=sh[:3] + (3,)).astype(np.float32) for sh in shapes]
    # boxes only in images 0 and 1: replica 1 has an empty FGFI mask.
    boxes = np.zeros((4, 1, 4), np.float32)
    boxes[0, 0] = [0, 0, 16, 16]
    boxes[1, 0] = [8, 8, 32, 32]
    classes = np.array([[0], [1], [-1], [-1]], np.int32)
    batch = dict(t=t, s=s, zt=zt, zs=zs, boxes=boxes, classes=classes)
    names = sorted(DISTILLATION_LOSSES)
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        losses = {name: build_distillation_loss(name, channels=C, num_levels=2, num_classes=3)
                  for name in names}

    def all_losses(data):
        return {
            name: loss(data["t"], data["s"], teacher_outputs=[{"cls_logits": z} for z in data["zt"]],
                       student_outputs=[{"cls_logits": z} for z in data["zs"]], boxes=data["boxes"],
                       classes=data["classes"], strides=[8, 16])
            for name, loss in losses.items()
        }

    single = {k: float(v) for k, v in all_losses(tf.nest.map_structure(tf.constant, batch)).items()}

    def shard(context):
        i = context.replica_id_in_sync_group
        return tf.nest.map_structure(lambda a: tf.constant(a[2 * i:2 * i + 2]), batch)

    per_replica = strategy.experimental_distribute_values_from_function(shard)
    results = strategy.run(tf.function(all_losses), args=(per_replica,))
    for name in names:
        summed = float(strategy.reduce(tf.distribute.ReduceOp.SUM, results[name], axis=None))
        np.testing.assert_allclose(summed, single[name], rtol=1e-5, err_msg=name)
