"""SKD as its authors coded it (msad_tf.losses.skd) against numpy references written here."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_model_config, toy_batch
from msad_tf.losses.distillation import build_distillation_loss
from msad_tf.losses.skd import SKD_PRESETS, TERMS, NonLocalBlock, SKDLoss, attention_masks
from msad_tf.modeling.detector import FCOSDetector
from msad_tf.training.distiller import Distiller, initialize_student
from msad_tf.training.strategy import mirrored_strategy

C = 4
SHAPES = [(2, 4, 4, C), (2, 2, 2, C)]
POOLS = [2, 1]
INTER = [2, 1]
EPS = 1e-8
RTOL = 1e-4


def _maps(seed, shapes=SHAPES, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(scale * rng.normal(size=shape)).astype(np.float32) for shape in shapes]


def _tf(arrays):
    return [tf.constant(a) for a in arrays]


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_masks(t, s, temp):
    """M^s [B, h, w], M^c [B, C]: averages of teacher and student softmax attention."""
    b, h, w, c = t.shape

    def spatial(a):
        return (h * w * _softmax(np.abs(a).mean(axis=3).reshape(b, h * w) / temp)).reshape(b, h, w)

    def channel(a):
        return c * _softmax(np.abs(a).mean(axis=(1, 2)) / temp)

    return (spatial(t) + spatial(s)) / 2, (channel(t) + channel(s)) / 2


def _np_1x1(x, kernel, bias):
    return np.einsum("bhwi,io->bhwo", x.astype(np.float64), kernel[0, 0]) + bias


def _np_3x3_single_channel(x, kernel, bias):
    """[B, h, w] -> [B, h, w]: 3x3 cross-correlation, zero padding 1, kernel [3, 3, 1, 1]."""
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    out = np.zeros(x.shape)
    for dy in range(3):
        for dx in range(3):
            out += kernel[dy, dx, 0, 0] * padded[:, dy:dy + h, dx:dx + w]
    return out + bias[0]


def _np_max_pool(x, k):
    b, h, w, c = x.shape
    return x.reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


def _np_nonlocal(x, p, pool):
    """The authors' block: z = BN(W(theta phi^T / N) g) + x, BN on batch statistics."""
    b, h, w, _ = x.shape
    theta = _np_1x1(x, *p["theta"]).reshape(b, h * w, -1)
    phi = _np_max_pool(_np_1x1(x, *p["phi"]), pool).reshape(b, -1, theta.shape[-1])
    g = _np_max_pool(_np_1x1(x, *p["g"]), pool).reshape(b, -1, theta.shape[-1])
    affinity = theta @ phi.transpose(0, 2, 1) / phi.shape[1]
    y = (affinity @ g).reshape(b, h, w, -1)
    out = _np_1x1(y, *p["out"])
    gamma, beta = p["bn"]
    mean, var = out.mean(axis=(0, 1, 2)), out.var(axis=(0, 1, 2))
    return gamma * (out - mean) / np.sqrt(var + 1e-5) + beta + x


def _randomise(loss, seed):
    """Random weights in every adapter and non-local block (BN gamma/beta too); returns them."""
    rng = np.random.default_rng(seed)

    def draw(layer):
        values = [rng.normal(scale=0.5, size=w.shape).astype(np.float32) for w in layer.weights]
        layer.set_weights(values)
        return values

    params = []
    for level in range(loss.num_levels):
        level_params = {
            "feature": draw(loss.feature_adapters[level]),
            "channel": draw(loss.channel_adapters[level]),
            "spatial": draw(loss.spatial_adapters[level]),
            "nonlocal": draw(loss.nonlocal_adapters[level]),
        }
        for role, block in (("student", loss.student_blocks[level]), ("teacher", loss.teacher_blocks[level])):
            level_params[role] = {name: draw(getattr(block, name)) for name in ("theta", "phi", "g", "out")}
            gamma_beta = [rng.normal(size=C).astype(np.float32) for _ in range(2)]
            block.bn.gamma.assign(gamma_beta[0])
            block.bn.beta.assign(gamma_beta[1])
            level_params[role]["bn"] = gamma_beta
        params.append(level_params)
    return params


def _np_skd_terms(t, s, params, preset):
    """{log name: value} of the weighted terms, norms over the whole batch tensor."""
    constants = SKD_PRESETS[preset]
    expected = {}
    for level, (a_t, a_s) in enumerate(zip(t, s)):
        p = params[level]
        m_s, m_c = _np_masks(a_t, a_s, constants["temperature"])
        mask = m_s[..., None] * (m_c[:, None, None, :] if constants["channel_mask"] else 1.0)
        sums = {
            "feature": ((a_t - _np_1x1(a_s, *p["feature"])) ** 2 * mask).sum(),
            "channel": ((a_t.mean(axis=(1, 2)) - (a_s.mean(axis=(1, 2)) @ p["channel"][0] + p["channel"][1])) ** 2).sum(),
            "spatial": ((a_t.mean(axis=3) - _np_3x3_single_channel(a_s.mean(axis=3), *p["spatial"])) ** 2).sum(),
            "nonlocal": ((_np_1x1(_np_nonlocal(a_s, p["student"], POOLS[level]), *p["nonlocal"])
                          - _np_nonlocal(a_t, p["teacher"], POOLS[level])) ** 2).sum(),
        }
        for term, total in sums.items():
            expected[f"skd_{term}_l{level}"] = constants[f"{term}_weight"] * np.sqrt(total + EPS)
    return expected


def _loss(preset="one_stage", **options):
    return build_distillation_loss("skd", channels=C, num_levels=2, preset=preset, nonlocal_pool=POOLS,
                                   inter_channels=INTER, **options)


def test_presets_are_the_authors_constants():
    one = _loss()
    assert (one.temperature, one.channel_mask) == (0.1, True)
    np.testing.assert_allclose([one.feature_weight, one.channel_weight, one.spatial_weight, one.nonlocal_weight],
                               [6 * 7e-5, 6 * 4e-3, 6 * 4e-3, 6 * 7e-5])
    two = _loss("two_stage")
    assert (two.temperature, two.channel_mask) == (0.5, False)
    np.testing.assert_allclose([two.feature_weight, two.channel_weight, two.spatial_weight, two.nonlocal_weight],
                               [7e-5, 4e-3, 4e-3, 7e-5])
    override = _loss("two_stage", temperature=0.3, channel_mask=True)
    assert (override.temperature, override.channel_mask, override.feature_weight) == (0.3, True, 7e-5)
    default = build_distillation_loss("skd", channels=256, num_levels=5)
    assert default.preset == "one_stage"
    assert default.inter_channels == [64, 64, 128, 128, 128]
    assert default.nonlocal_pool == [8, 4, 2, 2, 2]
    with pytest.raises(ValueError, match="one_stage"):
        _loss("three_stage")


def test_masks_hand_value_and_no_gradient():
    t, s = _maps(0), _maps(1)
    for temp in (0.1, 0.5):
        m_s, m_c = attention_masks(tf.constant(t[0]), tf.constant(s[0]), temp)
        ref_s, ref_c = _np_masks(t[0], s[0], temp)
        np.testing.assert_allclose(m_s.numpy(), ref_s, rtol=RTOL)
        np.testing.assert_allclose(m_c.numpy(), ref_c, rtol=RTOL)
        np.testing.assert_allclose(m_s.numpy().sum(axis=(1, 2)), [16.0, 16.0], rtol=RTOL)
        np.testing.assert_allclose(m_c.numpy().sum(axis=1), [C, C], rtol=RTOL)
    student = tf.constant(s[0])
    with tf.GradientTape() as tape:
        tape.watch(student)
        m_s, m_c = attention_masks(tf.constant(t[0]), student, 0.1)
        masked = tf.reduce_sum(m_s) + tf.reduce_sum(m_c)
    assert tape.gradient(masked, student) is None


@pytest.mark.parametrize("preset", ["one_stage", "two_stage"])
def test_mask_maxima_are_logged_per_level(preset):
    t, s = _maps(2), _maps(3)
    loss = _loss(preset)
    _, logs = loss(_tf(t), _tf(s), return_logs=True)
    for level, (a_t, a_s) in enumerate(zip(t, s)):
        m_s, m_c = _np_masks(a_t, a_s, SKD_PRESETS[preset]["temperature"])
        np.testing.assert_allclose(float(logs[f"skd_spatial_mask_max_l{level}"]), m_s.max(), rtol=RTOL)
        if preset == "one_stage":
            np.testing.assert_allclose(float(logs[f"skd_channel_mask_max_l{level}"]), m_c.max(), rtol=RTOL)
        else:
            assert f"skd_channel_mask_max_l{level}" not in logs


@pytest.mark.parametrize("preset", ["one_stage", "two_stage"])
@pytest.mark.parametrize("term", TERMS)
def test_term_hand_value(term, preset):
    t, s = _maps(4), _maps(5)
    loss = _loss(preset)
    params = _randomise(loss, 6)
    _, logs = loss(_tf(t), _tf(s), return_logs=True)
    expected = _np_skd_terms(t, s, params, preset)
    for level in range(2):
        key = f"skd_{term}_l{level}"
        np.testing.assert_allclose(float(logs[key]), expected[key], rtol=RTOL, err_msg=key)


def test_logs_cover_every_term_and_level_and_sum_to_the_loss():
    t, s = _maps(7), _maps(8)
    loss = _loss()
    _randomise(loss, 9)
    total, logs = loss(_tf(t), _tf(s), return_logs=True)
    names = [f"skd_{term}_l{level}" for level in range(2) for term in TERMS]
    masks = [f"skd_{kind}_mask_max_l{level}" for level in range(2) for kind in ("spatial", "channel")]
    assert set(logs) == set(names) | set(masks) == set(loss.log_names)
    assert all(logs[name].shape == () for name in logs)
    np.testing.assert_allclose(float(total), sum(float(logs[name]) for name in names), rtol=1e-6)
    np.testing.assert_allclose(float(loss(_tf(t), _tf(s))), float(total), rtol=1e-6)


def test_gradient_is_finite_when_student_equals_teacher():
    x = _tf(_maps(10))
    loss = _loss(adapter_init="identity")
    sqrt_eps = np.sqrt(EPS) * sum(loss.weights_by_term.values()) * 2

    def value_and_gradients(layer):
        student = [tf.identity(a) for a in x]
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = layer(x, student)
        return value, tape.gradient(value, student + layer.trainable_weights)

    value, grads = value_and_gradients(loss)
    np.testing.assert_allclose(float(value), sqrt_eps, rtol=1e-3)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
    no_epsilon = _loss(adapter_init="identity", epsilon=0.0)
    _, grads = value_and_gradients(no_epsilon)
    assert not all(np.all(np.isfinite(g.numpy())) for g in grads)


def test_gradient_is_that_of_the_plain_norm():
    t, s = _tf(_maps(16)), _tf(_maps(17))
    loss = _loss()
    _randomise(loss, 18)
    weights = loss.weights_by_term

    def gradients(value_of):
        student = [tf.identity(a) for a in s]
        with tf.GradientTape() as tape:
            tape.watch(student)
            value = value_of(student)
        return value, tape.gradient(value, student + loss.trainable_weights)

    def plain_norms(student):
        total = 0.0
        for level, (a_t, a_s) in enumerate(zip(t, student)):
            sums, _, _ = loss.level_sums(level, a_t, a_s)
            total += sum(weights[term] * tf.sqrt(sums[term] + EPS) for term in TERMS)
        return total

    value, grads = gradients(lambda student: loss(t, student))
    expected_value, expected = gradients(plain_norms)
    np.testing.assert_allclose(float(value), float(expected_value), rtol=1e-6)
    for grad, ref in zip(grads, expected):
        np.testing.assert_allclose(grad.numpy(), ref.numpy(), rtol=1e-4, atol=1e-8)


def test_nonlocal_block_starts_as_identity_and_both_blocks_train():
    x = tf.constant(_maps(11, [(2, 4, 4, C)])[0])
    block = NonLocalBlock(C, 2, pool=2)
    np.testing.assert_allclose(block(x).numpy(), x.numpy(), atol=1e-6)
    assert [w.name for w in block.trainable_weights][-2:] == ["gamma", "beta"]
    assert NonLocalBlock.from_config(block.get_config()).get_config() == block.get_config()
    loss = _loss()
    t, s = _tf(_maps(12)), _tf(_maps(13))
    with tf.GradientTape() as tape:
        value = loss(t, s)
    teacher_vars = [w for block in loss.teacher_blocks for w in block.trainable_weights]
    assert teacher_vars and all(w.trainable for w in teacher_vars)
    grads = tape.gradient(value, teacher_vars)
    assert all(g is not None for g in grads)
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads)


def test_two_replicas_sum_to_the_single_device_logs_and_gradients():
    t, s = _maps(14, [(4, 4, 4, C), (4, 2, 2, C)]), _maps(15, [(4, 4, 4, C), (4, 2, 2, C)])
    strategy = mirrored_strategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        loss = _loss()
    # BatchNorm gamma and beta see per-replica batch statistics (as in the authors' DDP runs).
    compared = [w for w in loss.trainable_weights if w.name not in ("gamma", "beta")]

    def step(data):
        with tf.GradientTape() as tape:
            value, logs = loss(*data, return_logs=True)
        return logs, tape.gradient(value, compared)

    single_logs, single_grads = step((_tf(t), _tf(s)))

    def shard(context):
        i = context.replica_id_in_sync_group
        return [tf.constant(a[2 * i:2 * i + 2]) for a in t], [tf.constant(a[2 * i:2 * i + 2]) for a in s]

    per_replica = strategy.experimental_distribute_values_from_function(shard)
    logs, grads = strategy.run(tf.function(step), args=(per_replica,))
    for name, value in single_logs.items():
        summed = float(strategy.reduce(tf.distribute.ReduceOp.SUM, logs[name], axis=None))
        np.testing.assert_allclose(summed, float(value), rtol=1e-5, err_msg=name)
    for weight, grad, expected in zip(compared, grads, single_grads):
        summed = strategy.reduce(tf.distribute.ReduceOp.SUM, grad, axis=None).numpy()
        np.testing.assert_allclose(summed, expected.numpy(), rtol=1e-4, atol=1e-7, err_msg=weight.path)


def _distiller(seed, loss_name="skd"):
    keras.utils.set_random_seed(seed)
    teacher = FCOSDetector(tiny_model_config(), 3, train_mode="aligned")
    student = FCOSDetector(tiny_model_config(), 3, inference_shift=1)
    initialize_student(student, teacher)
    loss = build_distillation_loss(loss_name, channels=16, num_levels=5)
    return Distiller(teacher, student, loss, gamma=1.0, det_weight=1.0, kd_warmup_steps=0, teacher_target="high")


def test_adapters_and_blocks_train_with_the_student_but_are_not_part_of_it():
    distiller = _distiller(0)
    loss = distiller.distill_loss
    assert loss.training_only
    student_ids = {id(w) for w in distiller.student.weights}
    loss_ids = {id(w) for w in loss.weights}
    assert loss_ids and not loss_ids & student_ids
    trained = {id(w) for w in distiller.trainable_student_variables()}
    assert {id(w) for w in loss.trainable_weights} <= trained


def test_skd_logs_reach_the_fit_history():
    """Every per-level term and mask maximum is a column of the fit history (history.csv), and
    the weighted terms sum to loss_kd."""
    distiller = _distiller(0)
    names = list(distiller.distill_loss.log_names)
    assert any("mask_max" in n for n in names) and any("nonlocal" in n for n in names)
    distiller.compile(optimizer=keras.optimizers.SGD(0.0))
    batch = toy_batch(2, 128)
    history = distiller.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0, shuffle=False).history
    assert set(names) <= set(history)
    terms = sum(history[n][-1] for n in names if "mask_max" not in n)
    np.testing.assert_allclose(terms, history["loss_kd"][-1], rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_100_steps_without_clipping_stay_finite(seed):
    distiller = _distiller(seed)
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    assert optimizer.global_clipnorm is None and optimizer.clipnorm is None and optimizer.clipvalue is None
    distiller.compile(optimizer=optimizer)
    batches = [toy_batch(2, 128, seed=10 * seed + k) for k in range(4)]
    data = tf.data.Dataset.from_tensor_slices(
        {key: tf.stack([b[key] for b in batches]) for key in batches[0]}
    ).repeat(25)
    history = distiller.fit(data, epochs=1, verbose=0, shuffle=False).history
    assert int(distiller.optimizer.iterations) == 100
    for name in ("loss", "loss_kd", "loss_det"):
        assert np.isfinite(history[name][-1]), (name, history[name])
    assert history["loss_kd"][-1] < history["loss_det"][-1]
    variables = distiller.student.weights + distiller.distill_loss.weights
    assert all(np.all(np.isfinite(w.numpy())) for w in variables)
    assert isinstance(distiller.distill_loss, SKDLoss)
