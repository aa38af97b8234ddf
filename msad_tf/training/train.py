"""Training entry point: config -> datasets -> model under a strategy -> model.fit -> run dir."""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import tensorflow as tf
import yaml

from msad_tf.config import Config
from msad_tf.keras_private import in_multi_worker_mode, strategy_from_scope
from msad_tf.training import runs
from msad_tf.training.callbacks import (
    Backup,
    EpochWeights,
    NonFiniteLossError,
    NonFiniteLossGuard,
    StepBackup,
    StepTimer,
    list_backups,
    nonfinite_variables,
)
from msad_tf.training.schedules import WarmupStepDecay
from msad_tf.training.strategy import get_strategy, is_chief, worker_index

log = logging.getLogger("msad_tf.train")

NO_WEIGHT_DECAY = ["bias", "gamma", "beta", "scales"]
BACKUPS_KEPT = 2


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
    """Repeated, shuffled, jittered training batches of ``global_batch`` images at the training
    resolution.

    Under a multi-worker strategy every worker builds this same stream and keeps its own slice
    of each global batch (``AutoShardPolicy.DATA``: worker i of N trains on images
    i * B / N .. (i + 1) * B / N - 1 of batch B), so N workers train on exactly the batches of one
    worker. Each worker reads and decodes every image for that.
    """
    from msad_tf.data import build_dataset
    from msad_tf.data.pipeline import use_image_cache
    from msad_tf.data.preprocess import resolve_input_norm

    short_side, max_side = train_resolution(config)
    d = config.data
    source = d.train_tfrecords or train_data
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
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
        input_norm=resolve_input_norm(config.model),
        cache_images=use_image_cache(d.cache_images, source),
    ).with_options(options)


def make_optimizer(config: Config, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with momentum, weight decay on kernels (coupled L2 by default, see
    ``msad_tf.training.optimizers``), warm-up and step decay; or AdamW (``train.optimizer``)
    with the same schedule and decoupled decay. ``train.fused_optimizer`` (default) updates each
    variable with one TensorFlow kernel (``msad_tf.training.optimizers``; SGD with decoupled decay
    stays Keras's).

    The learning rate scales linearly with the global batch (base_lr at base_batch).
    ``train.clipnorm`` clips the global norm of the gradients, ``train.clipvalue`` each element.
    Keras clips before the cross-replica all-reduce, so with R replicas the bound holds per
    replica (the summed gradient's norm is at most R * clipnorm).
    """
    from msad_tf.training.optimizers import CoupledSGD, FusedAdamW

    t = config.train
    lr = t.base_lr * t.batch_size / t.base_batch
    schedule = WarmupStepDecay(
        lr,
        boundaries=[round(e * steps_per_epoch) for e in t.lr_decay_epochs],
        decay_factor=t.lr_decay_factor,
        warmup_steps=config.warmup_steps(steps_per_epoch),
        warmup_factor=t.warmup_factor,
    )
    clipping = dict(global_clipnorm=t.clipnorm, clipvalue=t.clipvalue)
    if t.optimizer == "adamw" and t.fused_optimizer:
        return FusedAdamW(schedule, decay=t.weight_decay or 0.0, decay_exclude=NO_WEIGHT_DECAY, **clipping)
    if t.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=t.weight_decay or 0.0, **clipping)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        return optimizer
    if not t.weight_decay or t.weight_decay_mode == "coupled":
        return CoupledSGD(schedule, momentum=float(t.momentum), l2=t.weight_decay or 0.0,
                          l2_exclude=NO_WEIGHT_DECAY, fused=t.fused_optimizer, **clipping)
    optimizer = keras.optimizers.SGD(
        schedule, momentum=float(t.momentum), weight_decay=t.weight_decay or None, **clipping
    )
    optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
    return optimizer


def build_distiller(config: Config, train_data, steps_per_epoch: int = 1):
    """Distiller for ``train.mode = student``: loads the teacher run, builds and initialises
    the student, and the configured distillation loss."""
    from msad_tf.training.distiller import initialize_student

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
    return make_distiller(config, teacher, student, steps_per_epoch)


def make_distiller(config: Config, teacher, student, steps_per_epoch: int = 1):
    """The Distiller of ``teacher`` and ``student`` with the configured loss, weights and ramp."""
    from msad_tf.losses.distillation import build_distillation_loss
    from msad_tf.training.distiller import Distiller

    t = config.train
    loss = build_distillation_loss(
        t.distill_loss,
        channels=teacher.model_config.fpn_channels,
        num_levels=teacher.pyramid.num_levels,
        num_classes=student.cls_channels,
        aligned=t.aligned or t.student_input == "high",
        **{**t.distill_options, **({"tau": t.tau} if t.distill_loss.startswith("msad_l1") else {})},
    )
    return Distiller(
        teacher, student, loss, gamma=t.gamma, kd_warmup_steps=config.kd_warmup_steps(steps_per_epoch),
        teacher_target=t.teacher_target, teacher_bn_training=t.teacher_bn_training, aligned=t.aligned,
        det_weight=config.det_weight(), student_input=t.student_input,
    )


def optimized_variables(model) -> list:
    """The variables ``model.train_step`` updates (the optimizer's slots are built for these)."""
    select = getattr(model, "trainable_student_variables", None)
    return select() if select is not None else model.trainable_variables


def training_stages(config: Config) -> list[tuple[str | None, int, int]]:
    """(teacher stage or None, first epoch, end epoch) of each ``fit`` of a run."""
    t = config.train
    if t.mode == "teacher" and t.schedule == "two_step":
        return [("align", 0, t.epochs), ("fusion", t.epochs, t.epochs + t.stage2_epochs)]
    return [(None, 0, t.epochs)]


def config_digest(config: Config) -> str:
    """Digest of everything in a config that a resumed run must share (not the strategy)."""
    values = config.to_dict()
    values["train"] = {k: v for k, v in values["train"].items() if k != "strategy"}
    return hashlib.sha1(yaml.safe_dump(values, sort_keys=True).encode()).hexdigest()[:12]


def _is_multi_worker(strategy) -> bool:
    """Whether ``strategy`` spans several worker processes (the test Keras uses for its logs)."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and in_multi_worker_mode(strategy)


def _common_backup_step(strategy, steps: list[int], keep: int) -> int | None:
    """Newest backup step that every worker has (workers can be one backup apart after a kill)."""
    if not _is_multi_worker(strategy):
        return max(steps, default=None)
    local = tf.constant((sorted(steps, reverse=True) + [-1] * keep)[:keep], tf.int64)
    gathered = strategy.gather(strategy.experimental_distribute_values_from_function(lambda _: local), axis=0)
    per_replica = gathered.numpy().reshape(-1, keep)
    common = set.intersection(*({int(s) for s in row if s >= 0} for row in per_replica))
    return max(common, default=None)


def find_resume_backup(strategy, backup_dir: Path, config: Config) -> Backup | None:
    """The backup to resume from, agreed by every worker; None to start from scratch."""
    local = list_backups(backup_dir)
    step = _common_backup_step(strategy, [b.step for b in local], BACKUPS_KEPT)
    if step is None:
        if local:
            log.warning("backups in %s are not shared by every worker: training starts at step 0", backup_dir)
        elif backup_dir.is_dir() and any(backup_dir.glob("step_*")):
            log.warning("no complete backup in %s: training starts at step 0", backup_dir)
        return None
    backup = next(b for b in local if b.step == step)
    if backup.meta.get("config_sha") != config_digest(config):
        log.warning(
            "resuming from %s, written with a different config (delete %s to start over)",
            backup.weights, backup_dir,
        )
    return backup


def _fit(model, strategy, dataset, **kwargs):
    """``model.fit`` under ``strategy`` without Keras's symbolic build.

    Keras 3.15 (``_maybe_symbolic_build``) draws one batch from the training iterator before
    the first step when the model was created under a strategy: that batch is never trained on
    (so the data stream would depend on the strategy and a resume could not line up), and
    reducing it fails for dict batches under MultiWorkerMirroredStrategy. The models and their
    optimizers are built before fit, so the model takes its strategy from the scope instead.

    Under MultiWorkerMirroredStrategy Keras averages the per-replica logs with
    ``strategy.reduce("MEAN", logs, axis=0)``, which rejects scalars: the logs of each step are
    then returned with shape [1] (and averaged to scalars by that reduce).
    """
    if _is_multi_worker(strategy):
        step = type(model).train_step.__get__(model)
        model.train_step = lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}
    try:
        with strategy_from_scope(model), strategy.scope():
            return model.fit(dataset, shuffle=False, **kwargs)
    finally:
        model.__dict__.pop("train_step", None)


def _fit_epochs(model, strategy, make_dataset, step, first_epoch, end_epoch, steps_per_epoch, callbacks,
                verbose):
    """Train from global ``step`` to the end of epoch ``end_epoch - 1`` of a stage that began at
    ``first_epoch``.

    Every stage reads the training stream from its start, so the batch of a step depends only on
    the seed and the step. ``make_dataset()`` builds a new stream for each fit: iterators of one
    tf.data object share its shuffle's seed generator, so a second iterator would see another
    order. A resumed stage skips the batches it has already trained on.
    """
    epoch, done = divmod(step, steps_per_epoch)
    if epoch >= end_epoch:
        return
    consumed = step - first_epoch * steps_per_epoch
    for callback in callbacks:
        if hasattr(callback, "start"):
            callback.start(epoch, done)
    common = dict(callbacks=callbacks, verbose=verbose)
    if done:
        _fit(model, strategy, make_dataset().skip(consumed), initial_epoch=epoch, epochs=epoch + 1,
             steps_per_epoch=steps_per_epoch - done, **common)
        epoch, consumed = epoch + 1, consumed + steps_per_epoch - done
        for callback in callbacks:
            if isinstance(callback, keras.callbacks.CSVLogger):
                callback.append = True
        if epoch >= end_epoch:
            return
    _fit(model, strategy, make_dataset().skip(consumed), initial_epoch=epoch,
         epochs=end_epoch, steps_per_epoch=steps_per_epoch, **common)


def train(config: Config, run_dir: str | Path, progress: bool = True, callbacks=None):
    """Train the model a config describes and write a run directory. Returns the model.

    With ``train.backup_every`` > 0 the model and optimizer state is backed up every that many
    steps in RUN_DIR/backup; the same command run again after an interruption resumes from the
    newest complete backup, at the same step and on the same batches as an uninterrupted run.
    Under ``multi_worker`` only the chief (worker 0) writes RUN_DIR; the other workers write
    their outputs to a temporary directory (deleted at the end) and their backups to
    RUN_DIR/backup/worker_<i>.
    """
    run_dir = Path(run_dir)
    keras.utils.set_random_seed(config.train.seed)
    previous_policy = keras.mixed_precision.global_policy().name
    out_dir = None
    chief = True
    try:
        strategy = get_strategy(config.train.strategy)
        chief = is_chief(strategy)
        if chief:
            out_dir, backup_dir = run_dir, run_dir / "backup"
        else:
            index = worker_index(strategy)
            out_dir = Path(tempfile.mkdtemp(prefix=f"msad_worker{index}_"))
            backup_dir = run_dir / "backup" / f"worker_{index}"
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "checkpoints").mkdir(exist_ok=True)
        keras.mixed_precision.set_global_policy(config.train.precision)
        return _train(config, strategy, out_dir, backup_dir, progress, callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if not chief and out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)


def _train(config: Config, strategy, run_dir: Path, backup_dir: Path, progress: bool, callbacks):
    t = config.train
    train_data = load_split(config, config.data.train_split)
    runs.record_train_data(run_dir, train_data)
    config.save(run_dir / runs.CONFIG_FILE)
    global_batch = t.batch_size
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(
            f"train.batch_size {global_batch} is not divisible by the "
            f"{strategy.num_replicas_in_sync} replicas"
        )
    steps_per_epoch = t.steps_per_epoch or max(len(train_data.records) // global_batch, 1)

    def make_dataset():
        return make_train_dataset(config, train_data, global_batch)

    with strategy.scope():
        if t.mode == "student":
            model = build_distiller(config, train_data, steps_per_epoch)
        else:
            model = runs.build_model(config, train_data.num_classes)
    stages = training_stages(config)
    resume = find_resume_backup(strategy, backup_dir, config) if t.backup_every else None
    start_step = resume.step if resume else 0

    backup = None
    if t.backup_every:
        backup = StepBackup(backup_dir, t.backup_every, steps_per_epoch, keep=BACKUPS_KEPT,
                            meta={"config_sha": config_digest(config)})

    def last_good():
        found = list_backups(backup_dir) if backup else []
        return f"the last good backup {found[0].weights} (step {found[0].step})" if found else None

    csv_logger = keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=resume is not None)
    timer = StepTimer()
    all_callbacks = [
        NonFiniteLossGuard(steps_per_epoch, last_good=last_good),
        EpochWeights(str(run_dir / "checkpoints" / "epoch_{epoch:03d}.weights.h5")),
        keras.callbacks.TensorBoard(str(run_dir / "logs"), update_freq=max(steps_per_epoch // 10, 1)),
        csv_logger,
        timer,
    ]
    if backup is not None:
        all_callbacks.append(backup)
        if resume is not None:
            backup.restore_metrics(resume)
    if t.eval_every:
        from msad_tf.evaluation.evaluator import COCOEvalCallback

        val_data = load_split(config, config.data.val_split)
        all_callbacks.insert(1, COCOEvalCallback(val_data, config, t.eval_every, config.eval.resolutions))
    all_callbacks += list(callbacks or [])

    log.info(
        "training %s (%s) for %d epochs x %d steps, global batch %d on %d replica(s)%s",
        type(model).__name__, t.mode, stages[-1][2], steps_per_epoch, global_batch,
        strategy.num_replicas_in_sync, f", resuming after step {start_step}" if resume else "",
    )
    start = time.time()
    for index, (stage, first_epoch, end_epoch) in enumerate(stages):
        if resume is not None and index < resume.stage:
            continue
        if index > 0:
            log.info("two-step schedule, stage 2: training the fusion layer only for %d epochs",
                     end_epoch - first_epoch)
        with strategy.scope():
            if stage is not None:
                model.set_stage(stage)
            model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=t.jit_compile)
            model.optimizer.build(optimized_variables(model))
            if resume is not None and index == resume.stage:
                log.info("restoring %s (step %d)", resume.weights, resume.step)
                model.load_weights(str(resume.weights))
        if backup is not None:
            backup.stage = index
        _fit_epochs(model, strategy, make_dataset, max(start_step, first_epoch * steps_per_epoch), first_epoch,
                    end_epoch, steps_per_epoch, all_callbacks, 1 if progress else 2)
        csv_logger.append = True
    elapsed = time.time() - start
    bad = nonfinite_variables(model.trainable_variables)
    loss = float(model.loss_trackers["loss"].result().numpy())
    if bad or not math.isfinite(loss):
        raise NonFiniteLossError(
            f"training diverged: loss {loss}, {len(bad)} non-finite weights; "
            f"{last_good() or 'the last epoch checkpoint'} is kept in {run_dir}"
        )
    deployable = getattr(model, "student", model)
    deployable.save_weights(str(run_dir / runs.WEIGHTS_FILE))
    total_steps = stages[-1][2] * steps_per_epoch
    runs.update_metrics(run_dir, "train", {
        "seconds": elapsed, "steps": total_steps, "resumed_from_step": start_step,
        "replicas": strategy.num_replicas_in_sync, **timer.summary(),
    })
    if backup is not None:
        _remove_backups(backup_dir)
    return model


def _remove_backups(backup_dir: Path) -> None:
    """Delete this worker's backups after a finished run (other workers delete theirs)."""
    if not backup_dir.is_dir():
        return
    for path in backup_dir.iterdir():
        if path.is_file():
            path.unlink(missing_ok=True)
    try:
        backup_dir.rmdir()
        if backup_dir.parent.name == "backup":
            backup_dir.parent.rmdir()
    except OSError:
        pass
