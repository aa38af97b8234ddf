"""Structured knowledge distillation (SKD; Zhang and Ma, ICLR 2021 / TPAMI 2023), per FPN level.

Two registered variants (``msad_tf.losses.distillation.build_distillation_loss``):

  ``skd``        ``SKDLoss``, the loss as the authors coded it (their ICLR 2021 code, ported in
                 mmrazor as FBKD; see ../shared/papers/REFERENCE_NOTES.md section 5): norms over
                 the whole batch, attention terms on raw pooled features, trainable teacher and
                 student non-local blocks with a zero-initialised BatchNorm and a residual.
  ``skd_paper``  ``SKDPaperLoss``, the paper's equations read literally (squared distances, a
                 frozen teacher relation module without residual). Kept for comparison: in
                 the Table 3a ablation (docs/RESULTS.md) it went NaN at step 86 without
                 gradient clipping.

Both follow the ``DistillationLoss`` call convention: lists over levels of [B, h, w, C] teacher
and student maps, teacher without gradient, one scalar per replica (summed over the replicas it
is the loss of the global batch). Their adapters and non-local blocks are training-only weights
of the loss layer (``training_only = True``), built in ``__init__`` and trained with the student
(``Distiller.trainable_student_variables``); the exported model is the student alone.
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from msad_tf.losses.distillation import (
    _PACKAGE,
    DistillationLoss,
    _built_conv,
    _built_dense,
    _safe_sqrt,
    global_counts,
    register,
)
from msad_tf.losses.fcos import global_sum, num_replicas

TERMS = ("feature", "channel", "spatial", "nonlocal")

#: The authors' constants. ``two_stage``: their Faster R-CNN code; ``one_stage``: their RetinaNet
#: code (every weight x6, channel mask applied), the setting for FCOS.
SKD_PRESETS = {
    "one_stage": {
        "temperature": 0.1,
        "feature_weight": 7e-5 * 6,
        "channel_weight": 4e-3 * 6,
        "spatial_weight": 4e-3 * 6,
        "nonlocal_weight": 7e-5 * 6,
        "channel_mask": True,
    },
    "two_stage": {
        "temperature": 0.5,
        "feature_weight": 7e-5,
        "channel_weight": 4e-3,
        "spatial_weight": 4e-3,
        "nonlocal_weight": 7e-5,
        "channel_mask": False,
    },
}


def spatial_attention(features):
    """G^s(A) = mean over channels of |A| (SKD eq. 1): [B, h, w, C] -> [B, h, w]."""
    return tf.reduce_mean(tf.abs(features), axis=-1)


def channel_attention(features):
    """G^c(A) = mean over h, w of |A| (SKD eq. 1): [B, h, w, C] -> [B, C]."""
    return tf.reduce_mean(tf.abs(features), axis=[1, 2])


def spatial_pool(features):
    """Mean over channels, no absolute value (the authors' spatial term): [B, h, w, C] -> [B, h, w]."""
    return tf.reduce_mean(features, axis=-1)


def channel_pool(features):
    """Mean over h, w, no absolute value (the authors' channel term): [B, h, w, C] -> [B, C]."""
    return tf.reduce_mean(features, axis=[1, 2])


def attention_masks(teacher, student, temperature: float):
    """SKD attention masks, without gradient (both variants).

    M^s = h w softmax(G^s / T) over the h * w locations, M^c = C softmax(G^c / T) over the C
    channels, each computed for teacher and student and averaged (the text of the paper's III-A
    and the authors' code; eq. 2 as printed puts the sum inside one softmax).

    Args: teacher, student [B, h, w, C]. Returns M^s [B, h, w] (sums to h * w per sample) and
    M^c [B, C] (sums to C per sample).
    """
    shape = tf.shape(teacher)
    b, h, w, c = shape[0], shape[1], shape[2], shape[3]
    hw = tf.cast(h * w, tf.float32)

    def spatial(a):
        logits = tf.reshape(spatial_attention(a) / temperature, [b, -1])
        return tf.reshape(hw * tf.nn.softmax(logits, axis=-1), [b, h, w])

    def channel(a):
        return tf.cast(c, tf.float32) * tf.nn.softmax(channel_attention(a) / temperature, axis=-1)

    m_s = (spatial(teacher) + spatial(student)) / 2.0
    m_c = (channel(teacher) + channel(student)) / 2.0
    return tf.stop_gradient(m_s), tf.stop_gradient(m_c)


def _torch_initializers(fan_in: int):
    """PyTorch's default Conv2d / Linear initialisation: kernel and bias U(-1/sqrt(fan_in), +)."""
    bound = 1.0 / math.sqrt(fan_in)
    kernel = keras.initializers.VarianceScaling(1.0 / 3.0, mode="fan_in", distribution="uniform")
    return kernel, keras.initializers.RandomUniform(-bound, bound)


def _conv(filters, kernel_size, in_channels, init, name):
    """Built Conv2D (stride 1, 'same'). ``init``: 'torch' (PyTorch default), 'identity' (copies
    channel c to c at the centre tap, zero bias) or a Keras initializer name (zero bias)."""
    if init != "torch":
        return _built_conv(filters, kernel_size, in_channels, init, name)
    kernel, bias = _torch_initializers(kernel_size * kernel_size * in_channels)
    layer = keras.layers.Conv2D(filters, kernel_size, padding="same", kernel_initializer=kernel,
                                bias_initializer=bias, name=name, dtype="float32")
    layer.build((None, None, None, in_channels))
    return layer


def _dense(units, in_units, init, name):
    """Built Dense; ``init`` as for ``_conv``."""
    if init != "torch":
        return _built_dense(units, in_units, init, name)
    kernel, bias = _torch_initializers(in_units)
    layer = keras.layers.Dense(units, kernel_initializer=kernel, bias_initializer=bias, name=name,
                               dtype="float32")
    layer.build((None, in_units))
    return layer


def _per_level(value, default, num_levels: int, what: str) -> list[int]:
    if value is None:
        value = default
    if isinstance(value, int):
        value = [value] * num_levels
    if len(value) != num_levels:
        raise ValueError(f"{what} has {len(value)} entries for {num_levels} levels")
    return [int(v) for v in value]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class NonLocalBlock(keras.layers.Layer):
    """Non-local block (Wang et al. 2018) for SKD non-local distillation.

    y = f(theta(x), phi(x)) g(x) with 1x1 convs theta, phi, g (C -> C_i); phi(x) and g(x) are
    max-pooled with window = stride = ``pool`` (SAME padding; the authors' MaxPool2d drops a
    remainder instead, which is the same for sizes divisible by ``pool``).
    ``mode='dot_product'``: f = theta phi^T / N (N = number of pooled keys, the authors' block);
    ``'embedded_gaussian'``: f = softmax over the keys of theta phi^T.

    ``residual=True`` (the authors' block): z = BN(W y) + x with W a 1x1 conv (C_i -> C) and a
    BatchNorm whose gamma and beta start at zero, so z = x at initialisation. The block exists
    only for a training loss: the BatchNorm always normalises with the batch statistics.
    ``residual=False`` (the relation r of the paper's eq. 5): z = W y.

    Convolutions start with PyTorch's default initialisation. x [B, h, w, C] -> [B, h, w, C].
    """

    def __init__(self, channels: int, inter_channels: int | None = None, mode: str = "dot_product",
                 pool: int = 1, residual: bool = True, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        if mode not in ("embedded_gaussian", "dot_product"):
            raise ValueError(f"non-local mode {mode!r}: use 'embedded_gaussian' or 'dot_product'")
        self.channels = int(channels)
        self.inter_channels = int(inter_channels or max(self.channels // 2, 1))
        self.mode = mode
        self.pool = int(pool)
        self.residual = bool(residual)
        inner = _torch_initializers(self.channels)
        outer = _torch_initializers(self.inter_channels)

        def conv(filters, inits, name):
            return keras.layers.Conv2D(filters, 1, kernel_initializer=inits[0], bias_initializer=inits[1],
                                       name=name, dtype="float32")

        self.theta = conv(self.inter_channels, inner, "theta")
        self.phi = conv(self.inter_channels, inner, "phi")
        self.g = conv(self.inter_channels, inner, "g")
        self.out = conv(self.channels, outer, "out")
        self.bn = None
        if self.residual:
            self.bn = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, gamma_initializer="zeros", beta_initializer="zeros",
                name="bn", dtype="float32",
            )
        self.build()

    def build(self, input_shape=None):
        for layer in (self.theta, self.phi, self.g):
            layer.build((None, None, None, self.channels))
        self.out.build((None, None, None, self.inter_channels))
        if self.bn is not None:
            self.bn.build((None, None, None, self.channels))
        self.built = True

    def _keys(self, x):
        if self.pool > 1:
            x = tf.nn.max_pool2d(x, self.pool, self.pool, "SAME")
        return tf.reshape(x, [tf.shape(x)[0], -1, self.inter_channels])

    def call(self, x):
        shape = tf.shape(x)
        b, h, w = shape[0], shape[1], shape[2]
        query = tf.reshape(self.theta(x), [b, -1, self.inter_channels])
        key = self._keys(self.phi(x))
        value = self._keys(self.g(x))
        affinity = tf.matmul(query, key, transpose_b=True)
        if self.mode == "embedded_gaussian":
            affinity = tf.nn.softmax(affinity, axis=-1)
        else:
            affinity = affinity / tf.cast(tf.shape(key)[1], tf.float32)
        y = tf.reshape(tf.matmul(affinity, value), [b, h, w, self.inter_channels])
        if not self.residual:
            return self.out(y)
        return self.bn(self.out(y), training=True) + x

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels,
            inter_channels=self.inter_channels,
            mode=self.mode,
            pool=self.pool,
            residual=self.residual,
        )
        return config


def global_norm_shares(local_sums, epsilon: float):
    """Per-replica shares of sqrt(S + epsilon), S the sum over the replicas of ``local_sums``.

    Args: local_sums [K], this replica's sums of squares. Returns [K]: each replica reports
    sqrt(S + eps) / R as value and carries gradient d(local) / (2 sqrt(S + eps)), so values and
    gradients summed over the R replicas (what tf.distribute does) are those of the norm over
    the global batch. One replica: sqrt(local + eps) with its exact gradient. The epsilon keeps
    the gradient finite where S = 0 (student equal to teacher).
    """
    local = tf.convert_to_tensor(local_sums, tf.float32)
    norm = tf.sqrt(global_sum(tf.stop_gradient(local)) + epsilon)
    carrier = local / (2.0 * norm)
    return tf.stop_gradient(norm / float(num_replicas()) - carrier) + carrier


def global_max(values):
    """[K] element-wise maximum over the replicas in sync (identity with one replica)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return tf.reduce_max(context.all_gather(values[None], axis=0), axis=0)


@register("skd")
@keras.saving.register_keras_serializable(package=_PACKAGE)
class SKDLoss(DistillationLoss):
    """Structured knowledge distillation as the authors coded it (registry name ``skd``).

    Per level, with A^T the teacher map (no gradient) and A^S the student map, both [B, h, w, C],
    M^s [B, h, w] and M^c [B, C] from ``attention_masks`` (no gradient) and ||.|| the Frobenius
    norm over the WHOLE batch tensor (torch.dist; not per sample, not divided by B or h w):

      feature   w_f  sqrt( sum_{b,h,w,c} (A^T - adapt_1x1(A^S))^2 M^s [M^c] + eps )
      channel   w_c  || mean_hw(A^T) - fc(mean_hw(A^S)) ||                  ([B, C], raw means)
      spatial   w_s  || mean_c(A^T) - conv_3x3(mean_c(A^S)) ||    ([B, h, w, 1], 1 -> 1 channel)
      nonlocal  w_n  || adapt'_1x1(NL^S(A^S)) - NL^T(A^T) ||

    L = sum over levels of the four terms. Each norm is sqrt(sum of squares + ``epsilon``).
    M^c multiplies the feature term when ``channel_mask``. NL^S and NL^T are
    ``NonLocalBlock(mode='dot_product', residual=True)``, both trainable (z = x at init, so the
    non-local term starts as plain feature imitation through adapt'). Per level i the blocks use
    ``inter_channels[i]`` and key pooling ``nonlocal_pool[i]``; the authors' 5-level defaults are
    C/4, C/4, C/2, C/2, C/2 and 8, 4, 2, 2, 2 (finest level first).

    ``preset`` sets T, the weights and ``channel_mask`` (``SKD_PRESETS``); explicit arguments
    override it:
      one_stage (default; the authors' RetinaNet code, for FCOS): T = 0.1, w_f = w_n = 6 * 7e-5,
        w_c = w_s = 6 * 4e-3, channel mask applied;
      two_stage (their Faster R-CNN code): T = 0.5, w_f = w_n = 7e-5, w_c = w_s = 4e-3, no
        channel mask.
    The authors add L to the detection loss unweighted and without warm-up (Distiller gamma 1,
    det_weight 1, kd_warmup_steps 0).

    Adapters (1x1 conv C -> C, Dense C -> C, 3x3 conv 1 -> 1, 1x1 conv C -> C per level) start
    with PyTorch's default initialisation (``adapter_init='torch'``) or as identities
    (``'identity'``).

    Under tf.distribute the norms are those of the GLOBAL batch: the sums of squares are
    all-reduced and every replica reports its share (``global_norm_shares``), so the loss does not
    depend on how the batch is split (the authors' per-GPU norms did). A norm over the batch grows
    as sqrt(B): the authors' weights were set for per-GPU batches (2 images in mmdetection).

    ``call(..., return_logs=True)`` returns (loss, logs); logs maps ``log_names`` to per-replica
    shares (summed over replicas: the global value): ``skd_<term>_l<i>`` the weighted term of
    level i (they sum to the loss), ``skd_spatial_mask_max_l<i>`` and, with the channel mask,
    ``skd_channel_mask_max_l<i>`` the largest mask value over the batch.
    """

    training_only = True

    def __init__(self, channels, num_levels, preset: str = "one_stage", temperature: float | None = None,
                 feature_weight: float | None = None, channel_weight: float | None = None,
                 spatial_weight: float | None = None, nonlocal_weight: float | None = None,
                 channel_mask: bool | None = None, epsilon: float = 1e-8, inter_channels=None,
                 nonlocal_pool=None, adapter_init: str = "torch", **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        if preset not in SKD_PRESETS:
            raise ValueError(f"skd preset {preset!r}: use {' or '.join(SKD_PRESETS)}")
        self.preset = preset
        given = {
            "temperature": temperature,
            "feature_weight": feature_weight,
            "channel_weight": channel_weight,
            "spatial_weight": spatial_weight,
            "nonlocal_weight": nonlocal_weight,
        }
        for key, value in given.items():
            setattr(self, key, float(SKD_PRESETS[preset][key] if value is None else value))
        self.channel_mask = bool(SKD_PRESETS[preset]["channel_mask"] if channel_mask is None else channel_mask)
        self.epsilon = float(epsilon)
        self.adapter_init = adapter_init
        c, levels = self.channels, range(self.num_levels)
        quarter, half = max(c // 4, 1), max(c // 2, 1)
        self.inter_channels = _per_level(
            inter_channels, ([quarter, quarter] + [half] * self.num_levels)[: self.num_levels],
            self.num_levels, "inter_channels",
        )
        self.nonlocal_pool = _per_level(
            nonlocal_pool, ([8, 4] + [2] * self.num_levels)[: self.num_levels], self.num_levels, "nonlocal_pool"
        )
        self.feature_adapters = [_conv(c, 1, c, adapter_init, f"feature_adapter_{i}") for i in levels]
        self.channel_adapters = [_dense(c, c, adapter_init, f"channel_adapter_{i}") for i in levels]
        self.spatial_adapters = [_conv(1, 3, 1, adapter_init, f"spatial_adapter_{i}") for i in levels]
        self.nonlocal_adapters = [_conv(c, 1, c, adapter_init, f"nonlocal_adapter_{i}") for i in levels]
        self.student_blocks = [
            NonLocalBlock(c, inter, "dot_product", pool, residual=True, name=f"student_nonlocal_{i}")
            for i, (inter, pool) in enumerate(zip(self.inter_channels, self.nonlocal_pool))
        ]
        self.teacher_blocks = [
            NonLocalBlock(c, inter, "dot_product", pool, residual=True, name=f"teacher_nonlocal_{i}")
            for i, (inter, pool) in enumerate(zip(self.inter_channels, self.nonlocal_pool))
        ]

    @property
    def weights_by_term(self) -> dict[str, float]:
        return {
            "feature": self.feature_weight,
            "channel": self.channel_weight,
            "spatial": self.spatial_weight,
            "nonlocal": self.nonlocal_weight,
        }

    @property
    def mask_kinds(self) -> tuple[str, ...]:
        return ("spatial", "channel") if self.channel_mask else ("spatial",)

    @property
    def log_names(self) -> tuple[str, ...]:
        """Keys of the logs of ``call(..., return_logs=True)``, level by level."""
        return tuple(
            name
            for level in range(self.num_levels)
            for name in [f"skd_{term}_l{level}" for term in TERMS]
            + [f"skd_{kind}_mask_max_l{level}" for kind in self.mask_kinds]
        )

    def level_sums(self, level: int, t, s):
        """Local (this replica's) sums of squares of one level and its masks.

        Args: t (no gradient), s: [B, h, w, C]. Returns ({term: scalar} for ``TERMS``, M^s
        [B, h, w], M^c [B, C]).
        """
        m_s, m_c = attention_masks(t, s, self.temperature)
        mask = m_s[..., None]
        if self.channel_mask:
            mask = mask * m_c[:, None, None, :]
        feature = tf.reduce_sum(tf.square(t - self.feature_adapters[level](s)) * mask)
        channel = tf.reduce_sum(tf.square(channel_pool(t) - self.channel_adapters[level](channel_pool(s))))
        spatial_s = self.spatial_adapters[level](spatial_pool(s)[..., None])[..., 0]
        spatial = tf.reduce_sum(tf.square(spatial_pool(t) - spatial_s))
        relation_s = self.nonlocal_adapters[level](self.student_blocks[level](s))
        relation_t = self.teacher_blocks[level](t)
        nonlocal_ = tf.reduce_sum(tf.square(relation_s - relation_t))
        sums = {"feature": feature, "channel": channel, "spatial": spatial, "nonlocal": nonlocal_}
        return sums, m_s, m_c

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None,
             return_logs: bool = False):
        pairs = self.pair_maps(teacher_features, student_features)
        local, maxima = [], []
        for level, (t, s) in enumerate(pairs):
            sums, m_s, m_c = self.level_sums(level, t, s)
            local += [sums[term] for term in TERMS]
            maxima.append(tf.reduce_max(m_s))
            if self.channel_mask:
                maxima.append(tf.reduce_max(m_c))
        weights = tf.constant([self.weights_by_term[term] for term in TERMS] * self.num_levels, tf.float32)
        terms = weights * global_norm_shares(tf.stack(local), self.epsilon)
        total = tf.reduce_sum(terms)
        if not return_logs:
            return total
        maxima = global_max(tf.stack(maxima)) / float(num_replicas())
        per_level = tf.concat(
            [tf.reshape(terms, [self.num_levels, -1]), tf.reshape(maxima, [self.num_levels, -1])], axis=1
        )
        return total, dict(zip(self.log_names, tf.unstack(tf.reshape(per_level, [-1]))))

    def get_config(self):
        config = super().get_config()
        config.update(
            preset=self.preset,
            temperature=self.temperature,
            feature_weight=self.feature_weight,
            channel_weight=self.channel_weight,
            spatial_weight=self.spatial_weight,
            nonlocal_weight=self.nonlocal_weight,
            channel_mask=self.channel_mask,
            epsilon=self.epsilon,
            inter_channels=list(self.inter_channels),
            nonlocal_pool=list(self.nonlocal_pool),
            adapter_init=self.adapter_init,
        )
        return config


@register("skd_paper")
@keras.saving.register_keras_serializable(package=_PACKAGE)
class SKDPaperLoss(DistillationLoss):
    """SKD with the paper's equations read literally (TPAMI 2023, sec. III-C; ``skd_paper``).

    Kept as a comparison to ``SKDLoss`` (the authors' code, registry name ``skd``): with these
    squared distances and weights it went NaN without gradient clipping in the Table 3a ablation.

    With A^T the teacher map, A^S the student map ([B, h, w, C]), masks from
    ``attention_masks`` and per-level training-only adapters (sec. IV-G: 1x1 convs for the
    masked features and the non-local relations, a 3x3 conv on the [h, w, 1] spatial attention,
    a fully connected layer on the [C] channel attention):

      L_AM  = sqrt( sum_{h,w,C} (A^T - adapt_1x1(A^S))^2 M^s M^c )                      (eq. 4)
      L_AT  = D(adapt_3x3(G^s(A^S)), G^s(A^T)) + D(adapt_fc(G^c(A^S)), G^c(A^T))           (eq. 3)
      L_NLD = D(adapt_1x1'(NL^S(A^S)), NL^T(A^T))                                     (III-C.2)

    each computed per sample, summed over the local batch and divided by the global batch size.
    D is the sum of squared differences (``distance='squared'``) or its square root (``'norm'``).

    Total (eq. 6): L = alpha * L_AT + beta * L_AM + gamma * L_NLD, summed over levels, with the
    one-stage settings of sec. IV-A: alpha = gamma = 4e-4 (``at_weight``, ``nld_weight``),
    beta = 2e-2 (``am_weight``), T = 0.5.

    NL^S and NL^T are ``NonLocalBlock(residual=False)`` (the relation r of eq. 5, no BatchNorm);
    NL^T is frozen unless ``train_teacher_block``. NL^S starts as a copy of NL^T, and with
    ``adapter_init='identity'`` the adapters start as identities, so a student equal to its
    teacher starts at zero loss. ``nonlocal_pool``: max-pool size of the non-local keys per level
    (default 4 on the first, finest level and 2 on the others).
    """

    training_only = True

    def __init__(self, channels, num_levels, temperature: float = 0.5, at_weight: float = 4e-4,
                 am_weight: float = 2e-2, nld_weight: float = 4e-4, distance: str = "squared",
                 nonlocal_mode: str = "embedded_gaussian", inter_channels: int | None = None,
                 nonlocal_pool=None, train_teacher_block: bool = False,
                 adapter_init: str = "identity", **kwargs):
        super().__init__(channels, num_levels, **kwargs)
        if distance not in ("squared", "norm"):
            raise ValueError(f"distance {distance!r}: use 'squared' or 'norm'")
        self.temperature = float(temperature)
        self.at_weight = float(at_weight)
        self.am_weight = float(am_weight)
        self.nld_weight = float(nld_weight)
        self.distance = distance
        self.nonlocal_mode = nonlocal_mode
        self.inter_channels = inter_channels
        self.nonlocal_pool = _per_level(
            nonlocal_pool, [4] + [2] * (self.num_levels - 1), self.num_levels, "nonlocal_pool"
        )
        self.train_teacher_block = bool(train_teacher_block)
        self.adapter_init = adapter_init
        c = self.channels
        levels = range(self.num_levels)
        self.am_adapters = [_built_conv(c, 1, c, adapter_init, f"am_adapter_{i}") for i in levels]
        self.spatial_adapters = [
            _built_conv(1, 3, 1, adapter_init, f"spatial_adapter_{i}") for i in levels
        ]
        self.channel_adapters = [
            _built_dense(c, c, adapter_init, f"channel_adapter_{i}") for i in levels
        ]
        self.nld_adapters = [_built_conv(c, 1, c, adapter_init, f"nld_adapter_{i}") for i in levels]
        self.teacher_blocks = []
        self.student_blocks = []
        for i, pool in enumerate(self.nonlocal_pool):
            teacher = NonLocalBlock(c, inter_channels, nonlocal_mode, pool, residual=False,
                                    name=f"teacher_nonlocal_{i}")
            student = NonLocalBlock(c, inter_channels, nonlocal_mode, pool, residual=False,
                                    name=f"student_nonlocal_{i}")
            student.set_weights(teacher.get_weights())
            teacher.trainable = self.train_teacher_block
            self.teacher_blocks.append(teacher)
            self.student_blocks.append(student)

    def _distance(self, a, b):
        sq = tf.reduce_sum(tf.square(a - b), axis=list(range(1, a.shape.rank)))
        return sq if self.distance == "squared" else _safe_sqrt(sq)

    def level_terms(self, level: int, t, s):
        """Per-sample [B] L_AT, L_AM, L_NLD of one level; t (no gradient), s: [B, h, w, C]."""
        m_s, m_c = attention_masks(t, s, self.temperature)
        weighted = tf.square(t - self.am_adapters[level](s)) * m_s[..., None] * m_c[:, None, None, :]
        am = _safe_sqrt(tf.reduce_sum(weighted, axis=[1, 2, 3]))
        spatial_s = self.spatial_adapters[level](spatial_attention(s)[..., None])[..., 0]
        channel_s = self.channel_adapters[level](channel_attention(s))
        at = self._distance(spatial_s, spatial_attention(t))
        at += self._distance(channel_s, channel_attention(t))
        r_t = self.teacher_blocks[level](t)
        if not self.train_teacher_block:
            r_t = tf.stop_gradient(r_t)
        r_s = self.nld_adapters[level](self.student_blocks[level](s))
        nld = self._distance(r_s, r_t)
        return {"at": at, "am": am, "nld": nld}

    def terms(self, teacher_features, student_features):
        """Unweighted L_AT, L_AM, L_NLD summed over levels, each a per-replica batch mean."""
        pairs = self.pair_maps(teacher_features, student_features)
        (batch,) = tf.unstack(global_counts(tf.shape(student_features[0])[0]))
        totals = {"at": 0.0, "am": 0.0, "nld": 0.0}
        for level, (t, s) in enumerate(pairs):
            for key, value in self.level_terms(level, t, s).items():
                totals[key] += tf.reduce_sum(value) / batch
        return totals

    def call(self, teacher_features, student_features, *, teacher_outputs=None,
             student_outputs=None, boxes=None, classes=None, image_shape=None, strides=None):
        terms = self.terms(teacher_features, student_features)
        return (
            self.at_weight * terms["at"]
            + self.am_weight * terms["am"]
            + self.nld_weight * terms["nld"]
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            temperature=self.temperature,
            at_weight=self.at_weight,
            am_weight=self.am_weight,
            nld_weight=self.nld_weight,
            distance=self.distance,
            nonlocal_mode=self.nonlocal_mode,
            inter_channels=self.inter_channels,
            nonlocal_pool=list(self.nonlocal_pool),
            train_teacher_block=self.train_teacher_block,
            adapter_init=self.adapter_init,
        )
        return config
