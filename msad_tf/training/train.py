"""Training entry point: config -> datasets -> model under a strategy -> model.fit -> run dir."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import keras
import tensorflow as tf

from msad_tf.config import Config
from msad_tf.training import runs
from msad_tf.training.schedules import WarmupStepDecay
from msad_tf.training.strategy import get_strategy

log = logging.getLogger("msad_tf.train")

NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "scales"]


def load_split(config: Config, split: str):
    """CocoDataset of a split of the configured dataset."""
    from msad_tf.data import CocoDataset

    return CocoDataset(
        config.data.ann_file(split), config.data.image_dir(split), check_images=config.data.check_images
    )


def train_resolution(config: Config) -> tuple[int, int]:
    if config.train.mode == "single" and config.train.input == "low":
        return config.low_resolution()
    return config.high_resolution()


def make_train_dataset(config: Config, train_data, global_batch: int):
    """Repeated, shuffled, jittered training batches at the training resolution."""
    from msad_tf.data import build_dataset

    short_side, max_side = train_resolution(config)
    d = config.data
    source = d.train_tfrecords or train_data
    return build_dataset(
        source,
        short_side=short_side,
        max_side=max_side,
        batch_size=global_batch,
        training=True,
        jitter=tuple(d.jitter),
        flip=d.flip,
        max_boxes=d.max_boxes,
        pad_multiple=d.pad_multiple,
        shuffle_buffer=d.shuffle_buffer,
        seed=config.train.seed,
        num_parallel_calls=d.num_parallel_calls if d.num_parallel_calls > 0 else tf.data.AUTOTUNE,
        repeat=True,
    )


def make_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum, decoupled weight decay on kernels, warm-up and step decay.

    The learning rate scales linearly with the global batch (base_lr at base_batch).
    """
    t = config.train
    lr = t.base_lr * t.batch_size / t.base_batch
    schedule = WarmupStepDecay(
        lr,
        boundaries=[round(e * steps_per_epoch) for e in t.lr_decay_epochs],
        decay_factor=t.lr_decay_factor,
        warmup_steps=t.warmup_steps,
        warmup_factor=t.warmup_factor,
    )
    optimizer = keras.optimizers.SGD(
        schedule, momentum=t.momentum, weight_decay=t.weight_decay or None, global_clipnorm=t.clipnorm
    )
    if t.weight_decay:
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def build_distiller(config: Config, train_data):
    """Distiller for ``train.mode = student``: loads the teacher run, builds and initialises
    the student, and the configured distillation loss."""
    from msad_tf.losses.distillation import build_distillation_loss
    from msad_tf.training.distiller import Distiller, initialize_student

    t = config.train
    if not t.teacher_run:
        raise ValueError("train.mode student needs a teacher run: msad distill --teacher RUN_DIR")
    _, teacher, teacher_ids, _ = runs.load_run(t.teacher_run)
    if list(teacher_ids) != list(train_data.category_ids):
        raise ValueError(
            f"the teacher run {t.teacher_run} was trained on categories {teacher_ids}, "
            f"this dataset has {train_data.category_ids}"
        )
    student = runs.build_student(config, train_data.num_classes)
    if t.student_init == "teacher":
        counts = initialize_student(student, teacher)
        log.info("student initialised from the teacher: %d layers copied, %d kept", counts["copied"],
                 counts["skipped"])
    loss = build_distillation_loss(
        t.distill_loss,
        channels=teacher.model_config.fpn_channels,
        num_levels=teacher.pyramid.num_levels,
        num_classes=train_data.num_classes,
        aligned=t.aligned,
        **({"tau": t.tau} if t.distill_loss == "msad_l1" else {}),
    )
    return Distiller(
        teacher, student, loss, gamma=t.gamma, kd_warmup_steps=t.kd_warmup_steps,
        teacher_target=t.teacher_target, teacher_bn_training=t.teacher_bn_training, aligned=t.aligned,
    )


def train(config: Config, run_dir: str | Path, progress: bool = True, callbacks=None):
    """Train the model a config describes and write a run directory. Returns the model."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    config.save(run_dir / runs.CONFIG_FILE)
    keras.utils.set_random_seed(config.train.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        return _train(config, run_dir, progress, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config: Config, run_dir: Path, progress: bool, callbacks):
    strategy = get_strategy(config.train.strategy)
    train_data = load_split(config, config.data.train_split)
    runs.write_categories(run_dir, train_data.category_ids, train_data.category_names)
    global_batch = config.train.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"train.batch_size {global_batch} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    steps_per_epoch = config.train.steps_per_epoch or max(len(train_data.records) // global_batch, 1)
    dataset = make_train_dataset(config, train_data, global_batch)

    with strategy.scope():
        if config.train.mode == "student":
            model = build_distiller(config, train_data)
        else:
            model = runs.build_model(config, train_data.num_classes)
        two_step = config.train.mode == "teacher" and config.train.schedule == "two_step"
        if two_step:
            model.set_stage("align")
        model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=config.train.jit_compile)

    all_callbacks = [
        keras.callbacks.ModelCheckpoint(
            str(run_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5"),
            save_weights_only=True,
            save_freq="epoch",
        ),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq=max(steps_per_epoch // 10, 1)),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        keras.callbacks.TerminateOnNaN(),
    ]
    if config.train.eval_every:
        from msad_tf.evaluation.evaluator import COCOEvalCallback

        val_data = load_split(config, config.data.val_split)
        all_callbacks.insert(0, COCOEvalCallback(val_data, config, config.train.eval_every, config.eval.resolutions))
    all_callbacks += list(callbacks or [])

    log.info(
        "training %s (%s) for %d epochs x %d steps, global batch %d on %d replica(s)",
        type(model).__name__, config.train.mode, config.train.epochs, steps_per_epoch,
        global_batch, strategy.num_replicas_in_sync,
    )
    start = time.time()
    model.fit(
        dataset,
        epochs=config.train.epochs,
        steps_per_epoch=steps_per_epoch,
        callbacks=all_callbacks,
        verbose=1 if progress else 2,
    )
    if two_step and config.train.stage2_epochs > 0:
        log.info("two-step schedule, stage 2: training the fusion layer only for %d epochs",
                 config.train.stage2_epochs)
        with strategy.scope():
            model.set_stage("fusion")
            model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=config.train.jit_compile)
        model.fit(
            dataset,
            initial_epoch=config.train.epochs,
            epochs=config.train.epochs + config.train.stage2_epochs,
            steps_per_epoch=steps_per_epoch,
            callbacks=all_callbacks,
            verbose=1 if progress else 2,
        )
    elapsed = time.time() - start
    loss = model.loss_trackers["loss"].result().numpy()
    if not math.isfinite(loss):
        raise FloatingPointError(f"training diverged: loss {loss}; last checkpoint kept in {run_dir}")
    deployable = getattr(model, "student", model)
    deployable.save_weights(str(run_dir / runs.WEIGHTS_FILE))
    runs.update_metrics(run_dir, "train", {"seconds": elapsed, "steps": config.train.epochs * steps_per_epoch})
    return model
