"""Experiment configuration: dataclasses loaded from YAML with ``--set key=value`` overrides.

A config has four sections (``model``, ``data``, ``train``, ``eval``). Unknown keys are errors,
so a typo never silently falls back to a default. The resolved config is written into every
run directory and is enough to rebuild the model of that run.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

FPN_INITS = ("c2_xavier", "he_uniform")
ARCHS = ("fcos", "retinanet")
#: The authors' LR warm-up and KD ramp: 500 of 90k iterations.
AUTHORS_WARMUP = 500 / 90000


class ConfigError(ValueError):
    """A config file or override that cannot be used."""


@dataclass
class ModelConfig:
    """Detector architecture.

    ``head_levels`` are the pyramid levels the head reads at high resolution; the aligned
    low-resolution branch reads them shifted down by m = log2(k).
    ``bn_momentum`` is Keras's BatchNorm momentum (0.9 = PyTorch's 0.1, as in Detectron2);
    ``fpn_init`` the FPN conv initializer: ``c2_xavier`` (Detectron2's c2_xavier_fill, uniform
    with bound sqrt(3 / fan_in)) or ``he_uniform`` (sqrt(2) larger).
    Speed-ups that do not change the model's function (``msad benchmark train`` measures
    them): ``fused_bn`` trains BatchNorm with TensorFlow's fused kernel; ``batch_heads`` runs
    the head once over the batch concatenation of branches whose levels have equal sizes
    (aligned high/low, teacher high/low/fused): GroupNorm is per image, so this is exact.
    ``arch`` is the detector on the shared ResNet-FPN: ``fcos`` (``size_ranges``,
    ``center_radius``; GIoU box loss) or ``retinanet`` (anchors of ``anchor_size`` x stride at
    ``anchor_scales`` and ``anchor_aspect_ratios``; IoU matching at ``positive_iou`` /
    ``negative_iou``; ``box_loss`` smooth_l1 (``smooth_l1_beta``) or giou; ``head_norm`` gn or
    none). ``nms_iou`` null takes the detector's own (FCOS 0.6, RetinaNet 0.5).
    ``input_norm`` normalises the input pixels everywhere (training, evaluation, exports):
    ``imagenet_std`` ((RGB - mean) / std), ``caffe`` (BGR minus the ImageNet mean, what
    keras.applications ImageNet weights expect) or ``auto`` (caffe when ``backbone_weights``
    is ``imagenet``, imagenet_std otherwise). ``backbone_weights``: null (random init),
    ``imagenet`` (keras.applications, width-1.0 ResNet-50/101) or a ``msad pretrain`` file
    (a path, or the name of a shipped one in ``msad_tf/weights/``).
    """

    arch: str = "fcos"
    backbone: str = "resnet50"
    width: float = 1.0
    backbone_weights: str | None = None
    norm: str = "sync_bn"
    bn_momentum: float = 0.9
    fpn_channels: int = 256
    fpn_init: str = "c2_xavier"
    head_levels: list[int] = field(default_factory=lambda: [3, 4, 5, 6, 7])
    k: int = 2
    head_convs: int = 4
    gn_groups: int = 32
    size_ranges: list[list[float]] = field(
        default_factory=lambda: [[0, 64], [64, 128], [128, 256], [256, 512], [512, 1e8]]
    )
    center_radius: float = 1.5
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    prior_prob: float = 0.01
    score_threshold: float = 0.05
    pre_nms_topk: int = 1000
    nms_iou: float | None = None
    max_detections: int = 100
    fusion: str = "cff"
    fusion_reduction: int = 16
    fusion_shared: bool = True
    fused_bn: bool = True
    batch_heads: bool = True
    input_norm: str = "auto"
    anchor_size: float = 4.0
    anchor_scales: list[float] = field(default_factory=lambda: [1.0, 2.0 ** (1 / 3), 2.0 ** (2 / 3)])
    anchor_aspect_ratios: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    positive_iou: float = 0.5
    negative_iou: float = 0.4
    box_loss: str = "smooth_l1"
    smooth_l1_beta: float = 0.1
    head_norm: str = "gn"


@dataclass
class DataConfig:
    """Dataset location and input pipeline.

    ``short_side``/``max_side`` define the high resolution H; the low resolution L is H / k.
    ``cache_images`` keeps decoded training images in memory (``auto``: when a folder
    dataset's decoded images fit in 2 GiB; TFRecord shards are never cached).
    """

    root: str = "data/msad_synth"
    train_split: str = "train"
    val_split: str = "val"
    train_tfrecords: str | None = None
    short_side: int = 800
    max_side: int = 1333
    jitter: list[float] = field(default_factory=lambda: [0.8, 1.0])
    flip: bool = True
    pad_multiple: int = 256
    max_boxes: int = 100
    shuffle_buffer: int = 512
    num_parallel_calls: int = -1
    cache_images: bool | str = "auto"
    check_images: bool = True

    def ann_file(self, split: str) -> str:
        return str(Path(self.root) / "annotations" / f"instances_{split}.json")

    def image_dir(self, split: str) -> str:
        return str(Path(self.root) / split)


#: What ``train.mode`` can train (``TrainConfig``); ``train.epochs_scale`` is keyed by them.
TRAIN_MODES = ("single", "vanilla_multiscale", "aligned", "teacher", "student")


@dataclass
class TrainConfig:
    """Optimisation and schedule.

    ``mode`` chooses what is trained: ``single`` (one resolution, ``input`` high or low),
    ``vanilla_multiscale`` (shared weights on H and on L, both through the normal levels),
    ``aligned`` (shared weights on H and on the stride-k subsample through shifted levels),
    ``teacher`` (aligned + crossing feature-level fusion), ``student`` (a student distilled from
    ``teacher_run``: L_S = gamma * ramp * L_KD + det_weight * L_det). ``student_input``: ``low``
    (MSAD: the student sees the stride-k subsample) or ``high`` (same-resolution distillation,
    e.g. a larger teacher into a smaller student on the same image: the student reads P3..P7 of
    the high-res image and is deployed at H). ``distill_options``: keyword arguments of the
    ``distill_loss`` layer (e.g. ``{temperature: 0.5}`` for skd; ``tau`` wins for msad_l1).
    The learning rate scales linearly with the global batch: lr = base_lr * batch_size / base_batch.
    ``clipnorm`` bounds the global gradient norm, ``clipvalue`` each gradient element (one of
    them). ``optimizer``: ``sgd`` (momentum; the authors') or ``adamw`` (decoupled weight decay
    ``weight_decay``, which then is AdamW's coefficient). ``epochs_scale`` gives each mode its
    own budget: {mode: factor} multiplies ``epochs`` and ``lr_decay_epochs`` of a run of that mode
    when the config is loaded (e.g. ``{single: 1.5, student: 0.5}``), after which it is empty, so
    that a run's config.yaml holds the epochs it trained. ``backup_every`` backs up model and
    optimizer every that many steps in RUN_DIR/backup so that a killed run resumes where it
    stopped (0: off). ``fused_optimizer`` updates each variable with one TensorFlow kernel
    instead of Keras's chain of small ops (same numbers to float round-off; ``false``: Keras's).
    """

    mode: str = "single"
    input: str = "high"
    batch_size: int = 16
    epochs: int = 12
    epochs_scale: dict = field(default_factory=dict)
    steps_per_epoch: int | None = None
    base_lr: float = 0.01
    base_batch: int = 16
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    weight_decay_mode: str = "coupled"
    warmup: float = AUTHORS_WARMUP
    warmup_steps: int | None = None
    warmup_factor: float = 0.001
    lr_decay_epochs: list[float] = field(default_factory=lambda: [8, 11])
    lr_decay_factor: float = 0.1
    clipnorm: float | None = None
    clipvalue: float | None = None
    backup_every: int = 50
    fusion_weight: float = 0.4
    schedule: str = "joint"
    stage2_epochs: int = 0
    seed: int = 0
    strategy: str = "default"
    jit_compile: bool = False
    fused_optimizer: bool = True
    precision: str = "float32"
    eval_every: int = 0
    teacher_run: str | None = None
    teacher_target: str = "fused"
    teacher_bn_training: bool = False
    distill_loss: str = "msad_l1"
    distill_options: dict = field(default_factory=dict)
    aligned: bool = True
    gamma: float = 0.2
    tau: float = 3.0
    det_weight: float | None = 1.0
    kd_warmup: float = AUTHORS_WARMUP
    kd_warmup_steps: int | None = None
    student_init: str = "teacher"
    student_input: str = "low"


@dataclass
class EvalConfig:
    """Evaluation: batch size, the resolutions the in-training evaluation callback reports,
    and an optional cap on the number of val images.

    ``low_input`` is how the image at L is made (evaluate, sweep, predict, exports):
    ``subsample`` (resize to H, normalise, zero pad, then x[:, ::k, ::k], the operator the
    low-resolution branch trains on) or ``resize`` (antialiased resize straight to H / k).
    """

    batch_size: int = 8
    resolutions: list[str] = field(default_factory=lambda: ["high", "low"])
    max_images: int | None = None
    low_input: str = "subsample"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def low_resolution(self) -> tuple[int, int]:
        """(short_side, max_side) of the low resolution L = H / k."""
        k = self.model.k
        return self.data.short_side // k, self.data.max_side // k

    def high_resolution(self) -> tuple[int, int]:
        return self.data.short_side, self.data.max_side

    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run (both stages of a two-step teacher)."""
        t = self.train
        epochs = t.epochs + (t.stage2_epochs if t.mode == "teacher" and t.schedule == "two_step" else 0)
        return epochs * steps_per_epoch

    def warmup_steps(self, steps_per_epoch: int) -> int:
        """LR warm-up in steps: ``train.warmup_steps`` or ``train.warmup`` x the run's steps."""
        t = self.train
        if t.warmup_steps is not None:
            return int(t.warmup_steps)
        return int(round(t.warmup * self.total_steps(steps_per_epoch)))

    def kd_warmup_steps(self, steps_per_epoch: int) -> int:
        """KD ramp in steps: ``train.kd_warmup_steps`` or ``train.kd_warmup`` x the run's steps."""
        t = self.train
        if t.kd_warmup_steps is not None:
            return int(t.kd_warmup_steps)
        return int(round(t.kd_warmup * self.total_steps(steps_per_epoch)))

    def det_weight(self) -> float:
        """Weight of the student's detection loss (``train.det_weight``, null: 1 - gamma)."""
        t = self.train
        return 1.0 - t.gamma if t.det_weight is None else float(t.det_weight)


_SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _section_class(name: str):
    return {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig}[name]


def _build_section(cls, values: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}"
        )
    return cls(**values)


def config_from_dict(values: dict[str, Any], where: str = "config", scale: bool = True) -> Config:
    """Build a Config from nested dicts, rejecting unknown sections and keys."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping of sections, got {type(values).__name__}")
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown section(s) {', '.join(unknown)}; valid: {', '.join(_SECTIONS)}"
        )
    sections = {}
    for name in _SECTIONS:
        section = values.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}: section '{name}' must be a mapping")
        sections[name] = _build_section(_section_class(name), section, f"{where} [{name}]")
    config = Config(**sections)
    validate(config)
    return apply_epochs_scale(config) if scale else config


def apply_epochs_scale(config: Config) -> Config:
    """``train.epochs`` and ``train.lr_decay_epochs`` times ``train.epochs_scale[train.mode]``
    (1 for a mode not named; epochs rounded half up to a whole number, at least 1), and
    ``epochs_scale`` emptied: the one place a mode's budget is decided."""
    t = config.train
    factor = (t.epochs_scale or {}).get(t.mode, 1)
    if factor != 1:
        t.epochs = max(1, math.floor(t.epochs * factor + 0.5))
        t.lr_decay_epochs = [e * factor for e in t.lr_decay_epochs]
    t.epochs_scale = {}
    return config


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (value parsed as YAML) to a nested dict."""
    values = copy.deepcopy(values)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) != 2:
            raise ConfigError(f"override '{item}': key must be section.key, e.g. train.epochs=2")
        section, name = parts
        if section not in _SECTIONS:
            raise ConfigError(f"override '{item}': unknown section '{section}'")
        known = {f.name for f in dataclasses.fields(_section_class(section))}
        if name not in known:
            raise ConfigError(
                f"override '{item}': unknown key '{name}' in [{section}]; "
                f"valid keys: {', '.join(sorted(known))}"
            )
        values.setdefault(section, {})
        values[section][name] = yaml.safe_load(raw)
    return values


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, scale: bool = True) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides, then
    ``train.epochs_scale`` (``apply_epochs_scale``; ``scale=False``: left as written, for code
    that derives other runs' budgets from it)."""
    values: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        where = str(path)
    values = apply_overrides(values, overrides or [])
    return config_from_dict(values, where, scale)


def validate(config: Config) -> None:
    """Reject configs that cannot train, before any work starts."""
    m, t, d = config.model, config.train, config.data
    if not isinstance(t.distill_options, dict):
        raise ConfigError(f"train.distill_options = {t.distill_options!r}: must be a mapping, "
                          "e.g. --set 'train.distill_options={temperature: 0.5}'")
    k = m.k
    if k < 1 or (k & (k - 1)) != 0:
        raise ConfigError(f"model.k = {k}: must be a power of two (1, 2, 4, ...)")
    shift = int(math.log2(k))
    if not m.head_levels:
        raise ConfigError("model.head_levels is empty: the head needs at least one pyramid level")
    if min(m.head_levels) - shift < 1:
        available = sum(1 for level in m.head_levels if level - shift >= 1)
        raise ConfigError(
            f"model.k = {k} shifts the head levels {m.head_levels} down by {shift}, below P1: "
            f"the low-resolution branch would have {available} of the {len(m.head_levels)} "
            f"pyramid levels the head needs (the FPN has P1..P7); use k <= "
            f"{2 ** (min(m.head_levels) - 1)}"
        )
    levels = list(m.head_levels)
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ConfigError(f"model.head_levels {levels} must be contiguous")
    if max(levels) > 7:
        raise ConfigError(f"model.head_levels {levels}: the FPN stops at P7")
    if m.arch == "fcos" and len(m.size_ranges) != len(levels):
        raise ConfigError(
            f"model.size_ranges has {len(m.size_ranges)} ranges for {len(levels)} head levels"
        )
    if m.arch not in ARCHS:
        raise ConfigError(f"model.arch '{m.arch}': choose {' or '.join(ARCHS)}")
    if m.arch == "retinanet":
        if m.box_loss not in ("smooth_l1", "giou"):
            raise ConfigError(f"model.box_loss '{m.box_loss}': choose smooth_l1 or giou")
        if m.head_norm not in ("gn", "none"):
            raise ConfigError(f"model.head_norm '{m.head_norm}': choose gn or none")
        if not 0.0 < m.negative_iou <= m.positive_iou <= 1.0:
            raise ConfigError(
                f"model.negative_iou {m.negative_iou} and positive_iou {m.positive_iou} need "
                "0 < negative_iou <= positive_iou <= 1"
            )
        if not m.anchor_scales or not m.anchor_aspect_ratios or min(
            list(m.anchor_scales) + list(m.anchor_aspect_ratios) + [m.anchor_size]
        ) <= 0:
            raise ConfigError("model.anchor_size, anchor_scales and anchor_aspect_ratios must be positive and non-empty")
    if m.nms_iou is not None and not 0.0 < m.nms_iou <= 1.0:
        raise ConfigError(f"model.nms_iou {m.nms_iou} must be in (0, 1] (null: the detector's own)")
    if m.backbone not in ("resnet_tiny", "resnet18", "resnet34", "resnet50", "resnet101"):
        raise ConfigError(f"model.backbone '{m.backbone}' unknown")
    if m.width not in (0.25, 0.5, 0.75, 1.0):
        raise ConfigError(f"model.width {m.width}: choose 0.25, 0.5, 0.75 or 1.0")
    if m.fpn_init not in FPN_INITS:
        raise ConfigError(f"model.fpn_init '{m.fpn_init}': choose {' or '.join(FPN_INITS)}")
    if not 0.0 <= m.bn_momentum < 1.0:
        raise ConfigError(f"model.bn_momentum {m.bn_momentum} must be in [0, 1)")
    if m.norm not in ("sync_bn", "bn", "frozen_bn"):
        raise ConfigError(f"model.norm '{m.norm}': choose sync_bn, bn or frozen_bn")
    if m.fusion not in ("cff", "sigmoid", "channel", "sc_sum", "cc"):
        raise ConfigError(f"model.fusion '{m.fusion}': choose cff, sigmoid, channel, sc_sum or cc")
    if m.fpn_channels % m.gn_groups:
        raise ConfigError(f"model.gn_groups {m.gn_groups} must divide fpn_channels {m.fpn_channels}")
    if config.data.cache_images not in (True, False, "auto"):
        raise ConfigError(f"data.cache_images '{config.data.cache_images}': choose true, false or auto")
    if t.optimizer not in ("sgd", "adamw"):
        raise ConfigError(f"train.optimizer '{t.optimizer}': choose sgd or adamw")
    if t.weight_decay_mode not in ("coupled", "decoupled"):
        raise ConfigError(f"train.weight_decay_mode '{t.weight_decay_mode}': choose coupled or decoupled")
    for name in ("warmup", "kd_warmup"):
        if not 0.0 <= getattr(t, name) <= 1.0:
            raise ConfigError(f"train.{name} {getattr(t, name)} is a fraction of the run: use 0..1")
    for name in ("warmup_steps", "kd_warmup_steps"):
        if getattr(t, name) is not None and getattr(t, name) < 0:
            raise ConfigError(f"train.{name} {getattr(t, name)} must be >= 0")
    if t.det_weight is not None and t.det_weight < 0:
        raise ConfigError(f"train.det_weight {t.det_weight} must be >= 0 (null: 1 - gamma)")
    if t.mode not in TRAIN_MODES:
        raise ConfigError(
            f"train.mode '{t.mode}': choose one of {', '.join(TRAIN_MODES)}"
        )
    if t.student_input not in ("low", "high"):
        raise ConfigError(f"train.student_input '{t.student_input}': choose low (MSAD) or high (same resolution)")
    if t.teacher_target not in ("fused", "high", "low"):
        raise ConfigError(f"train.teacher_target '{t.teacher_target}': choose fused, high or low")
    if t.student_init not in ("teacher", "none"):
        raise ConfigError(f"train.student_init '{t.student_init}': choose teacher or none")
    if not 0.0 <= t.gamma <= 1.0:
        raise ConfigError(f"train.gamma {t.gamma} must be in [0, 1]")
    if t.input not in ("high", "low"):
        raise ConfigError(f"train.input '{t.input}': choose high or low")
    if t.schedule not in ("joint", "two_step"):
        raise ConfigError(f"train.schedule '{t.schedule}': choose joint or two_step")
    if t.precision not in ("float32", "mixed_float16", "mixed_bfloat16"):
        raise ConfigError(
            f"train.precision '{t.precision}': choose float32, mixed_float16 (GPU) or "
            "mixed_bfloat16 (CPUs with AVX512-BF16/AMX, TPUs)"
        )
    if t.schedule == "two_step" and t.stage2_epochs < 1:
        raise ConfigError("train.schedule two_step needs train.stage2_epochs >= 1 (the fusion-only stage)")
    if t.strategy not in ("default", "mirrored", "multi_worker"):
        raise ConfigError(f"train.strategy '{t.strategy}': choose default, mirrored or multi_worker")
    if t.batch_size < 1 or t.epochs < 1:
        raise ConfigError("train.batch_size and train.epochs must be positive")
    if not isinstance(t.epochs_scale or {}, dict):
        raise ConfigError(f"train.epochs_scale {t.epochs_scale!r} must be a mapping mode: factor")
    for mode, factor in (t.epochs_scale or {}).items():
        if mode not in TRAIN_MODES:
            raise ConfigError(f"train.epochs_scale: unknown mode '{mode}'; valid: {', '.join(TRAIN_MODES)}")
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or factor <= 0:
            raise ConfigError(f"train.epochs_scale[{mode}] {factor!r} must be a positive number")
    for name in ("clipnorm", "clipvalue"):
        value = getattr(t, name)
        if value is not None and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"train.{name} {value!r} must be a positive number (or null: off)")
    if t.clipnorm is not None and t.clipvalue is not None:
        raise ConfigError("train.clipnorm and train.clipvalue: set one of them, not both")
    if not isinstance(t.backup_every, int) or t.backup_every < 0:
        raise ConfigError(f"train.backup_every {t.backup_every!r} must be a whole number of steps >= 0 (0: off)")
    if len(d.jitter) != 2 or not 0 < d.jitter[0] <= d.jitter[1]:
        raise ConfigError(f"data.jitter {d.jitter} must be [alpha_min, alpha_max] with 0 < min <= max")
    if d.pad_multiple % (2 ** max(levels)):
        raise ConfigError(
            f"data.pad_multiple {d.pad_multiple} must be a multiple of the coarsest stride "
            f"2^{max(levels)} = {2 ** max(levels)}"
        )
    if m.input_norm not in ("auto", "imagenet_std", "caffe"):
        raise ConfigError(f"model.input_norm '{m.input_norm}': choose auto, imagenet_std or caffe")
    if config.eval.low_input not in ("subsample", "resize"):
        raise ConfigError(f"eval.low_input '{config.eval.low_input}': choose subsample or resize")
    for r in config.eval.resolutions:
        if r not in ("high", "low"):
            raise ConfigError(f"eval.resolutions entry '{r}': choose high or low")
