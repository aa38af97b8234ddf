"""Throughput benchmarks measured in one process, reported as ratios (the machine is noisy).

``benchmark_train`` times the tf.data pipeline alone and one optimizer step of each requested
training mode on the same cached batch, so every ratio compares like with like.
"""
from __future__ import annotations

import logging
import time

import keras
import numpy as np
import tensorflow as tf


def time_calls(fn, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def pipeline_images_per_second(dataset, batch_size: int, num_batches: int = 20, warmup: int = 3) -> float:
    """Images/s of a tf.data pipeline alone (the batches are materialised and dropped)."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(iterator)
    return num_batches * batch_size / (time.perf_counter() - start)


def _step_function(model, batch):
    """() -> one compiled train step of ``model`` on a fixed ``batch``."""
    model.make_train_function()
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    return lambda: model.train_function(iterator)


#: Training speed-ups that ``msad benchmark train`` switches: name -> (overrides that turn it
#: off when it is on by default, or on when it is off by default).
SPEEDUPS = {
    "fused_bn": ["model.fused_bn=false"],
    "batch_heads": ["model.batch_heads=false"],
    "fused_optimizer": ["train.fused_optimizer=false"],
    "precision": ["train.precision=FLIP"],
    "jit_compile": ["train.jit_compile=true"],
}
#: The train step as it was before the speed-ups (the issue's baseline): unfused BatchNorm,
#: one head pass per branch, Keras's optimizers, no XLA, the config's precision.
BEFORE = ["model.fused_bn=false", "model.batch_heads=false", "train.fused_optimizer=false", "train.jit_compile=false"]


def _speedup_overrides(config, name):
    """Overrides that switch speed-up ``name`` relative to ``config`` (``precision``: float32
    <-> mixed_bfloat16)."""
    flipped = "float32" if config.train.precision != "float32" else "mixed_bfloat16"
    return [o.replace("FLIP", flipped) for o in SPEEDUPS[name]]


def _variant_config(config, overrides):
    """A copy of ``config`` with ``section.key=value`` overrides applied."""
    from msad_tf.config import apply_overrides, config_from_dict

    return config_from_dict(apply_overrides(config.to_dict(), overrides))


def _build_for_step(config, mode, num_classes, build_model):
    """The model of ``mode`` (a Distiller for ``student``), built under the config's precision
    and compiled."""
    from msad_tf.training.train import make_optimizer

    config.train.mode = mode
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(config.train.precision)
    try:
        keras.utils.set_random_seed(config.train.seed)
        if mode == "student":
            model = _benchmark_distiller(config, num_classes)
        else:
            model = build_model(config, num_classes)
        model.compile(optimizer=make_optimizer(config, 100), jit_compile=config.train.jit_compile)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return model


def benchmark_train(config, modes=("single",), steps: int = 10, pipeline_batches: int = 20,
                    build_model=None, progress=True, speedups=tuple(SPEEDUPS), rounds: int = 3,
                    losses=(), compare=()) -> dict:
    """Pipeline images/s and per-mode train-step images/s, with and without each speed-up.

    For every mode, the step is timed as configured (``default``), as it was before the
    speed-ups (``before``: ``BEFORE``), and with each of ``speedups`` switched
    (``SPEEDUPS``: off when it is on by default, on when off). All variants of a mode are timed
    in ``rounds`` interleaved rounds of ``steps`` steps on the same batch (a variant that sets
    ``train.batch_size`` or a ``data`` key on a batch made that way), so a busy machine slows
    them alike; the median wall and process CPU time per step are kept (a mean would carry the
    slow first step after each switch of variant). The pipeline is timed with and without the decoded image cache.

    Returns dict(batch_size, resolution, image_shape, pipeline={cache: images/s, ...},
    pipeline_images_per_second, modes={mode: {variant: {batch_size, step_seconds,
    images_per_second, cpu_seconds, speedup and cpu_speedup (per image, over before)}}}, and
    ratio_to_single / pipeline_over_single_step for the
    defaults. ``losses``: distillation losses timed as extra variants of the ``student`` mode
    (``loss <name>``, with ``relative_to_default``: its step time over the default loss's).
    ``compare``: ``section.key=value`` overrides, each timed as an extra variant of every mode
    (``with <override>``, with ``relative_to_default``), e.g. ``model.arch=retinanet``.
    """
    from msad_tf.training.runs import build_model as default_build

    build_model = build_model or default_build
    tf_logger = logging.getLogger("tensorflow")
    level = tf_logger.level
    tf_logger.setLevel(logging.ERROR)
    try:
        return _benchmark_train(config, modes, steps, pipeline_batches, build_model, progress, speedups, rounds,
                                losses, compare)
    finally:
        tf_logger.setLevel(level)


def _benchmark_train(config, modes, steps, pipeline_batches, build_model, progress, speedups, rounds, losses=(),
                     compare=()):
    """``benchmark_train`` with TensorFlow's retracing warnings (one trace per variant) muted."""
    from msad_tf.training.train import load_split, make_train_dataset

    train_data = load_split(config, config.data.train_split)
    batch_size = config.train.batch_size
    pipeline = {}
    for cache in (False, True):
        variant = _variant_config(config, [f"data.cache_images={str(cache).lower()}"])
        dataset = make_train_dataset(variant, train_data, batch_size)
        warmup = len(train_data.records) // batch_size + 1 if cache else 3
        pipeline["cache" if cache else "no_cache"] = pipeline_images_per_second(
            dataset, batch_size, pipeline_batches, warmup=warmup)
    batches = {}

    def batch_of(variant):
        key = (variant.train.batch_size, repr(variant.data))
        if key not in batches:
            batches[key] = next(iter(make_train_dataset(variant, train_data, variant.train.batch_size)))
        return batches[key]

    batch = batch_of(config)
    result = {
        "batch_size": batch_size,
        "resolution": list(config.high_resolution()),
        "image_shape": [int(v) for v in batch["images"].shape[1:3]],
        "pipeline": pipeline,
        "pipeline_images_per_second": pipeline["cache" if _cache_default(config, train_data) else "no_cache"],
        "modes": {},
    }
    variants = {"default": [], "before": BEFORE}
    for name in speedups:
        variants[name] = _speedup_overrides(config, name)
    for mode in modes:
        steps_fns = {}
        mode_variants = dict(variants)
        if mode == "student":
            mode_variants.update({f"loss {loss}": [f"train.distill_loss={loss}"] for loss in losses})
        mode_variants.update({f"with {override}": [override] for override in compare})
        sizes = {}
        for name, overrides in mode_variants.items():
            variant = _variant_config(config, overrides)
            model = _build_for_step(variant, mode, train_data.num_classes, build_model)
            steps_fns[name] = _step_function(model, batch_of(variant))
            sizes[name] = variant.train.batch_size
            time_calls(steps_fns[name], 2, 0)
        times = {name: [] for name in mode_variants}
        cpu = {name: [] for name in mode_variants}
        for _ in range(rounds):
            for name, fn in steps_fns.items():
                for _ in range(steps):
                    start = time.process_time()
                    times[name] += time_calls(fn, 0, 1)
                    cpu[name].append(time.process_time() - start)
        entry = {}
        for name in mode_variants:
            seconds = float(np.median(times[name]))
            entry[name] = {"batch_size": sizes[name], "step_seconds": seconds,
                           "images_per_second": sizes[name] / seconds, "cpu_seconds": float(np.median(cpu[name]))}
        for name in mode_variants:
            before, this = entry["before"], entry[name]
            this["speedup"] = this["images_per_second"] / before["images_per_second"]
            this["cpu_speedup"] = ((before["cpu_seconds"] / before["batch_size"])
                                   / (this["cpu_seconds"] / this["batch_size"]))
            if name.startswith(("loss ", "with ")):
                this["relative_to_default"] = this["step_seconds"] / entry["default"]["step_seconds"]
                this["images_relative_to_default"] = this["images_per_second"] / entry["default"]["images_per_second"]
        result["modes"][mode] = entry
        if progress:
            print(f"  {mode:<20} {entry['default']['step_seconds'] * 1000:8.1f} ms/step, "
                  f"{entry['default']['speedup']:.2f}x the step before the speed-ups", flush=True)
    if "single" in result["modes"]:
        base = result["modes"]["single"]["default"]["step_seconds"]
        for entry in result["modes"].values():
            entry["default"]["ratio_to_single"] = entry["default"]["step_seconds"] / base
        result["pipeline_over_single_step"] = (
            result["pipeline_images_per_second"] / result["modes"]["single"]["default"]["images_per_second"]
        )
    return result


def _cache_default(config, train_data) -> bool:
    from msad_tf.data.pipeline import use_image_cache

    return use_image_cache(config.data.cache_images, config.data.train_tfrecords or train_data)


def _benchmark_distiller(config, num_classes):
    """A Distiller over a freshly built ``model.arch`` fusion teacher (step time does not depend
    on weights)."""
    import copy

    from msad_tf.training.runs import build_model, build_student
    from msad_tf.training.train import make_distiller

    teacher_config = copy.deepcopy(config)
    teacher_config.train.mode = "teacher"
    teacher = build_model(teacher_config, num_classes)
    return make_distiller(config, teacher, build_student(config, num_classes))


def format_train_benchmark(result: dict) -> str:
    lines = [
        f"batch {result['batch_size']}, padded input {result['image_shape']}",
        "tf.data pipeline alone: " + ", ".join(
            f"{name.replace('_', ' ')} {value:.1f} images/s" for name, value in result["pipeline"].items()),
        "",
        "ms/step of each mode as configured (default), before the speed-ups (before: unfused BN,",
        "one head pass per branch), and with one speed-up switched; x before = images/s over before's;",
        "CPU ms/step is the process's CPU time per step (less sensitive to other processes; its x before",
        "is per image)",
        f"{'mode':<20} {'variant':<22} {'ms/step':>9} {'images/s':>9} {'x before':>9} {'CPU ms':>8} {'x before':>9}",
    ]
    labels = {"default": "default", "before": "before", "fused_bn": "without fused_bn",
              "batch_heads": "without batch_heads", "precision": "other precision",
              "jit_compile": "with jit_compile"}
    for mode, entries in result["modes"].items():
        for name, entry in entries.items():
            lines.append(f"{mode:<20} {labels.get(name, name):<22} {entry['step_seconds'] * 1000:9.1f} "
                         f"{entry['images_per_second']:9.1f} {entry['speedup']:9.2f} "
                         f"{entry['cpu_seconds'] * 1000:8.1f} {entry['cpu_speedup']:9.2f}")
    for mode, entries in result["modes"].items():
        for name, entry in entries.items():
            if "relative_to_default" in entry:
                against = "the default loss" if name.startswith("loss ") else "the config as given"
                images = entry["images_relative_to_default"]
                lines.append(f"{mode} {name}: {entry['relative_to_default']:.2f}x the step time of {against}"
                             + (f" (batch {entry['batch_size']}: {images:.2f}x its images/s)"
                                if entry["batch_size"] != entries["default"]["batch_size"] else ""))
    if "pipeline_over_single_step" in result:
        ratios = ", ".join(f"{mode} {entries['default']['ratio_to_single']:.2f}"
                           for mode, entries in result["modes"].items())
        lines.append(f"default step time relative to single: {ratios}")
        lines.append(
            f"pipeline / single-step throughput: {result['pipeline_over_single_step']:.1f}x "
            "(>= 3x means the model never waits for data)"
        )
    return "\n".join(lines)


DATA_PARALLEL_CALLS = (1, 2, 4, tf.data.AUTOTUNE)


def _parallel_label(value: int) -> str:
    return "AUTOTUNE" if value == tf.data.AUTOTUNE else str(value)


def _time_pipeline(dataset, batch_size: int, batches: int, warmup: int) -> tuple[float, float]:
    """(images/s, cores used = process CPU seconds per wall second) over ``batches`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(iterator)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return batches * batch_size / wall, cpu / wall


def benchmark_data(config, parallel_calls=DATA_PARALLEL_CALLS, sources=("folder", "tfrecord"),
                   batches: int = 30, warmup: int = 5, rounds: int = 3, shards: int = 8,
                   progress: bool = True) -> dict:
    """Images/s of the training input pipeline per source and ``num_parallel_calls``.

    The pipeline is ``make_train_dataset`` (decode, jitter-resize, flip, normalize, batch,
    pad; shuffled and repeated) on the configured train split, read from the image folder and
    from TFRecord shards (``data.train_tfrecords``, or ``shards`` shards written to a temporary
    directory). Every (source, num_parallel_calls) pipeline is timed ``rounds`` times, the
    rounds interleaved so the machine's drift spreads evenly, and the median is kept; ratios
    are against num_parallel_calls = 1 of the same source.

    Returns dict(batch_size, resolution, jitter, images (in the split), cpu_count, batches,
    rounds, tfrecords, rows=[{source, num_parallel_calls, images_per_second, cores_used
    (process CPU seconds per wall second, median), rounds: [images/s...], ratio_to_1}]).
    """
    import copy
    import os
    import tempfile

    from msad_tf.data.tfrecords import write_tfrecords
    from msad_tf.training.train import load_split, make_train_dataset

    if not parallel_calls:
        raise ValueError("parallel_calls is empty")
    unknown = sorted(set(sources) - {"folder", "tfrecord"})
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}: choose folder and/or tfrecord")
    train_data = load_split(config, config.data.train_split)
    batch_size = config.train.batch_size
    with tempfile.TemporaryDirectory(prefix="msad_bench_data_") as tmp:
        tfrecords = config.data.train_tfrecords
        tfrecords_label = tfrecords if "tfrecord" in sources else None
        if "tfrecord" in sources and not tfrecords:
            tfrecords_label = f"{shards} shards written to a temporary directory"
            prefix = os.path.join(tmp, "train")
            write_tfrecords(train_data, prefix, shards, progress=False)
            tfrecords = f"{prefix}-*-of-{shards:05d}.tfrecord"
        variants = []
        for source in sources:
            for calls in parallel_calls:
                variant = copy.deepcopy(config)
                variant.data.train_tfrecords = tfrecords if source == "tfrecord" else None
                variant.data.num_parallel_calls = int(calls)
                variants.append((source, int(calls), make_train_dataset(variant, train_data, batch_size)))
        times = {(source, calls): [] for source, calls, _ in variants}
        cores = {(source, calls): [] for source, calls, _ in variants}
        for round_index in range(rounds):
            order = variants if round_index % 2 == 0 else variants[::-1]
            for source, calls, dataset in order:
                ips, used = _time_pipeline(dataset, batch_size, batches, warmup)
                times[(source, calls)].append(ips)
                cores[(source, calls)].append(used)
                if progress:
                    print(f"  round {round_index + 1}/{rounds} {source:<9} "
                          f"{_parallel_label(calls):>8}  {ips:7.1f} images/s  {used:4.2f} cores",
                          flush=True)
    rows = []
    for source, calls, _ in variants:
        rows.append({
            "source": source,
            "num_parallel_calls": _parallel_label(calls),
            "images_per_second": float(np.median(times[(source, calls)])),
            "cores_used": float(np.median(cores[(source, calls)])),
            "rounds": times[(source, calls)],
        })
    for row in rows:
        base = [r for r in rows if r["source"] == row["source"] and r["num_parallel_calls"] == "1"]
        row["ratio_to_1"] = row["images_per_second"] / base[0]["images_per_second"] if base else None
    return {
        "batch_size": batch_size,
        "resolution": list(config.high_resolution()),
        "jitter": list(config.data.jitter),
        "images": len(train_data.records),
        "cpu_count": os.cpu_count(),
        "batches": batches,
        "rounds": rounds,
        "tfrecords": tfrecords_label,
        "rows": rows,
    }


def format_data_benchmark(result: dict) -> str:
    lines = [
        f"training pipeline: {result['images']} images, batch {result['batch_size']}, "
        f"short/max side {result['resolution']}, jitter {result['jitter']}, "
        f"{result['cpu_count']} CPU cores; median of {result['rounds']} rounds x "
        f"{result['batches']} batches; TFRecords: {result['tfrecords']}",
        f"{'source':<9} {'num_parallel_calls':>18} {'images/s':>9} {'x calls=1':>10} {'cores used':>11}",
    ]
    for row in result["rows"]:
        ratio = row["ratio_to_1"]
        lines.append(
            f"{row['source']:<9} {row['num_parallel_calls']:>18} {row['images_per_second']:9.1f} "
            + (f"{ratio:10.2f}" if ratio is not None else f"{'-':>10}")
            + f" {row['cores_used']:11.2f}"
        )
    return "\n".join(lines)


def _results_of_processes(tasks, paths, jobs: int, what: str) -> list[dict]:
    """Runs ``tasks`` (each writes a JSON result to its entry of ``paths``) ``jobs`` at a time,
    each in its own process, and returns the results; raises naming ``what`` if one fails."""
    import json
    from pathlib import Path

    from msad_tf.training.parallel import run_in_processes

    codes = run_in_processes(tasks, jobs=jobs, progress=False, poll=0.2)
    if any(codes.values()):
        raise RuntimeError(f"the benchmark process of {what} failed: {codes}")
    return [json.loads(Path(path).read_text()) for path in paths]


def _time_steps_in_process(config_dict, mode, steps, rounds, barrier_dir, index, count) -> None:
    """One process of ``benchmark_processes``: builds ``mode``, warms it up, waits until all
    ``count`` processes are ready, then times ``rounds`` x ``steps`` steps and writes
    BARRIER_DIR/result_<index>.json (start, end, per-round step seconds)."""
    import json
    from pathlib import Path

    from msad_tf.config import config_from_dict
    from msad_tf.training.train import load_split, make_train_dataset

    config = config_from_dict(config_dict)
    train_data = load_split(config, config.data.train_split)
    batch = next(iter(make_train_dataset(config, train_data, config.train.batch_size)))
    from msad_tf.training.runs import build_model

    model = _build_for_step(config, mode, train_data.num_classes, build_model)
    step = _step_function(model, batch)
    time_calls(step, 3, 0)
    barrier = Path(barrier_dir)
    (barrier / f"ready_{index}").touch()
    while len(list(barrier.glob("ready_*"))) < count:
        time.sleep(0.01)
    start = time.time()
    per_round = [float(np.mean(time_calls(step, 0, steps))) for _ in range(rounds)]
    (barrier / f"result_{index}.json").write_text(json.dumps({"start": start, "end": time.time(),
                                                               "step_seconds": per_round}))


def benchmark_processes(config, mode="single", steps: int = 20, rounds: int = 3, processes=(1, 2),
                        progress=True) -> dict:
    """Training throughput with P runs at once, each in its own process (``--jobs`` of the
    demo and of ``msad reproduce``): for each P, P processes time ``rounds`` x ``steps`` train
    steps of ``mode`` at the same moment. Returns dict(mode, batch_size, processes={P: {
    step_seconds (median over processes and rounds), images_per_second (all processes
    together), speedup (images/s over that of 1 process)}})."""
    import tempfile
    from pathlib import Path

    from msad_tf.training.parallel import Task

    result = {"mode": mode, "batch_size": config.train.batch_size, "steps": steps, "rounds": rounds,
              "processes": {}}
    for count in processes:
        with tempfile.TemporaryDirectory() as barrier:
            tasks = [Task(f"bench_{i}", _time_steps_in_process,
                          (config.to_dict(), mode, steps, rounds, barrier, i, count)) for i in range(count)]
            runs = _results_of_processes(tasks, [Path(barrier, f"result_{i}.json") for i in range(count)], count,
                                         f"{count} processes at once")
        seconds = float(np.median([s for r in runs for s in r["step_seconds"]]))
        result["processes"][count] = {"step_seconds": seconds,
                                      "images_per_second": count * config.train.batch_size / seconds}
        if progress:
            print(f"  {count} process(es): {seconds * 1000:.1f} ms/step each", flush=True)
    base = result["processes"][processes[0]]["images_per_second"]
    for entry in result["processes"].values():
        entry["speedup"] = entry["images_per_second"] / base
    return result


def format_process_benchmark(result: dict) -> str:
    lines = [f"train step of {result['mode']}, batch {result['batch_size']}, runs at once in separate processes "
             f"({result['rounds']} rounds of {result['steps']} steps, median)",
             f"{'processes':>10} {'ms/step each':>13} {'images/s (all)':>15} {'x 1 process':>12}"]
    for count, entry in result["processes"].items():
        lines.append(f"{count:>10} {entry['step_seconds'] * 1000:13.1f} {entry['images_per_second']:15.1f} "
                     f"{entry['speedup']:12.2f}")
    return "\n".join(lines)


#: Thread-pool settings ``msad benchmark train --threads`` compares, each in its own processes:
#: name -> environment of the process (``msad_tf.cpu_threads``).
THREAD_SETTINGS = {
    "TensorFlow's": {"MSAD_THREADS": "default", "TF_NUM_INTRAOP_THREADS": None, "TF_NUM_INTEROP_THREADS": None},
    "msad (auto)": {"MSAD_THREADS": "auto", "TF_NUM_INTRAOP_THREADS": None, "TF_NUM_INTEROP_THREADS": None},
}


def _train_benchmark_in_process(config_dict, modes, steps, path, compare=()) -> None:
    """One process of ``benchmark_threads``: ``benchmark_train`` of ``modes`` (default, before
    and ``compare``, one round) with this process's thread pools, written to ``path`` with them."""
    import json
    from pathlib import Path

    from msad_tf.config import config_from_dict
    from msad_tf.cpu_threads import current_threads

    result = benchmark_train(config_from_dict(config_dict), modes=modes, steps=steps, speedups=(), rounds=1,
                             progress=False, compare=tuple(compare))
    result["threads"] = list(current_threads())
    Path(path).write_text(json.dumps(result))


def benchmark_threads(config, modes=("single",), steps: int = 10, rounds: int = 3, settings=None,
                      progress=True, compare=()) -> dict:
    """Train-step time of each mode, as configured (``default``) and before the speed-ups
    (``before``), under each thread-pool setting of ``settings`` (``THREAD_SETTINGS``). The
    pools are fixed when TensorFlow starts, so every (round, setting) is its own process, the
    settings interleaved over ``rounds`` so that a busy machine slows them alike; the median
    round is kept. ``compare``: ``section.key=value`` overrides timed as extra variants
    (``with <override>``) of the configured step, e.g. ``train.batch_size=16``. ``speedup`` is
    each row's images/s over the first setting's ``before``: the total gain of the speed-ups, of
    the thread pools (and of the override). Returns dict(batch_size, settings={name: {threads:
    [intra, inter] (0: TensorFlow's default), modes={mode: {variant: {batch_size, step_seconds,
    images_per_second, speedup}}}}})."""
    import tempfile
    from pathlib import Path

    from msad_tf.training.parallel import Task

    settings = THREAD_SETTINGS if settings is None else settings
    runs = {name: [] for name in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for round_index in range(rounds):
            for index, (name, env) in enumerate(settings.items()):
                path = Path(tmp, f"r{round_index}_{index}.json")
                task = Task(f"threads_{index}", _train_benchmark_in_process,
                            (config.to_dict(), tuple(modes), steps, str(path), tuple(compare)), env=dict(env))
                runs[name] += _results_of_processes([task], [path], 1, f"thread setting {name!r}")
                if progress:
                    steps_ms = ", ".join(f"{mode} {entry['default']['step_seconds'] * 1000:.1f}"
                                         for mode, entry in runs[name][-1]["modes"].items())
                    print(f"  round {round_index + 1}/{rounds}, threads {name}: {steps_ms} ms/step", flush=True)
    result = {"batch_size": config.train.batch_size, "steps": steps, "rounds": rounds, "settings": {}}
    for name, done in runs.items():
        entry = {"threads": done[0]["threads"], "modes": {}}
        for mode in modes:
            entry["modes"][mode] = {}
            for variant in ("before", "default") + tuple(f"with {o}" for o in compare):
                size = done[0]["modes"][mode][variant]["batch_size"]
                seconds = float(np.median([r["modes"][mode][variant]["step_seconds"] for r in done]))
                entry["modes"][mode][variant] = {"batch_size": size, "step_seconds": seconds,
                                                 "images_per_second": size / seconds}
        result["settings"][name] = entry
    first = next(iter(result["settings"].values()))
    for entry in result["settings"].values():
        for mode, variants in entry["modes"].items():
            for row in variants.values():
                row["speedup"] = row["images_per_second"] / first["modes"][mode]["before"]["images_per_second"]
    return result


def format_thread_benchmark(result: dict) -> str:
    names = list(result["settings"])
    width = max(len(v) for entry in result["settings"].values() for m in entry["modes"].values() for v in m)
    lines = [f"train step, batch {result['batch_size']}, per thread-pool setting (intra-op, inter-op threads; "
             f"0 = one per core), each in its own process, {result['rounds']} interleaved rounds of "
             f"{result['steps']} steps (median)",
             f"x before = this row's images/s over the step's before the speed-ups with {names[0]} threads",
             f"{'mode':<20} {'threads':<22} {'variant':<{width}} {'ms/step':>9} {'images/s':>9} {'x before':>9}"]
    for mode in next(iter(result["settings"].values()))["modes"]:
        for name, entry in result["settings"].items():
            threads = f"{name} ({entry['threads'][0]}, {entry['threads'][1]})"
            for variant, row in entry["modes"][mode].items():
                lines.append(f"{mode:<20} {threads:<22} {variant:<{width}} {row['step_seconds'] * 1000:9.1f} "
                             f"{row['images_per_second']:9.1f} {row['speedup']:9.2f}")
    return "\n".join(lines)


def _op_self_times(trace_dir) -> list[tuple[str, str, int]]:
    """(op name, op type, self time in ps) of every op executed on TensorFlow's compute threads in
    the trace under ``trace_dir`` (an event's self time excludes the events nested in it)."""
    from pathlib import Path

    paths = sorted(Path(trace_dir).rglob("*.xplane.pb"))
    if not paths:
        raise RuntimeError(f"no profiler trace (*.xplane.pb) under {trace_dir}")
    from msad_tf.keras_private import profiler_trace_proto

    space = profiler_trace_proto().XSpace()
    space.ParseFromString(paths[-1].read_bytes())
    ops = []
    for plane in space.planes:
        names = plane.event_metadata
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            events = sorted(line.events, key=lambda e: e.offset_ps)
            self_ps = [e.duration_ps for e in events]
            open_events = []
            for i, event in enumerate(events):
                while open_events and (events[open_events[-1]].offset_ps + events[open_events[-1]].duration_ps
                                       <= event.offset_ps):
                    open_events.pop()
                if open_events:
                    self_ps[open_events[-1]] -= event.duration_ps
                open_events.append(i)
            for event, own in zip(events, self_ps):
                name = names[event.metadata_id].name
                ops.append((name.split(":")[0], name.split(":")[-1], own))
    return ops


def _scope(op_name: str) -> str:
    """'backward resnet_tiny_w0.5' for 'StatefulPartitionedCall/gradient_tape/resnet_tiny_w0.5_1/conv1/...'."""
    import re

    parts = [p for p in op_name.split("/") if p != "StatefulPartitionedCall"]
    backward = bool(parts) and parts[0] == "gradient_tape"
    parts = parts[1:] if backward else parts
    scope = re.sub(r"_\d+$", "", parts[0]) if len(parts) > 1 else "(step)"
    return ("backward " if backward else "forward ") + scope


def profile_train(config, modes=("single",), steps: int = 5, trace_dir="runs/profile", build_model=None,
                  top: int = 12) -> dict:
    """Where the train step's CPU time goes: ``steps`` steps of each mode traced by TensorFlow's
    profiler (after 3 untimed), op self-times summed over its compute threads. Returns dict(
    batch_size, modes={mode: {step_seconds (median, unprofiled), busy_ms (per step, all threads),
    ops_per_step, by_type: [[op type, ms per step, count per step]], by_scope: [[scope, conv?,
    ms, count]]}}) with the ``top`` rows of each table; the trace stays in TRACE_DIR/<mode>
    (TensorBoard's profiler opens it)."""
    import collections
    import shutil
    from pathlib import Path

    from msad_tf.training.runs import build_model as default_build
    from msad_tf.training.train import load_split, make_train_dataset

    build_model = build_model or default_build
    train_data = load_split(config, config.data.train_split)
    batch = next(iter(make_train_dataset(config, train_data, config.train.batch_size)))
    result = {"batch_size": config.train.batch_size, "steps": steps, "modes": {}}
    for mode in modes:
        step = _step_function(_build_for_step(_variant_config(config, []), mode, train_data.num_classes, build_model),
                              batch)
        seconds = float(np.median(time_calls(step, 3, max(steps, 5))))
        target = Path(trace_dir, mode)
        shutil.rmtree(target, ignore_errors=True)
        tf.profiler.experimental.start(str(target))
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        by_type, by_scope = collections.Counter(), collections.Counter()
        type_count, scope_count = collections.Counter(), collections.Counter()
        ops = _op_self_times(target)
        for name, kind, own in ops:
            scope = (_scope(name), "Conv" in kind)
            by_type[kind] += own
            type_count[kind] += 1
            by_scope[scope] += own
            scope_count[scope] += 1
        per_step = 1e9 * steps
        result["modes"][mode] = {
            "step_seconds": seconds, "busy_ms": sum(by_type.values()) / per_step, "ops_per_step": len(ops) / steps,
            "by_type": [[k, v / per_step, type_count[k] / steps] for k, v in by_type.most_common(top)],
            "by_scope": [[k[0], k[1], v / per_step, scope_count[k] / steps] for k, v in by_scope.most_common(top)],
            "trace": str(target),
        }
    return result


def format_profile(result: dict) -> str:
    lines = [f"op self-times per train step (batch {result['batch_size']}, {result['steps']} steps traced), "
             "summed over TensorFlow's compute threads"]
    for mode, entry in result["modes"].items():
        lines += ["", f"{mode}: {entry['step_seconds'] * 1000:.1f} ms/step unprofiled; traced: {entry['busy_ms']:.1f} "
                  f"busy ms/step over {entry['ops_per_step']:.0f} op events/step (trace: {entry['trace']})",
                  f"  {'op type':<44} {'ms/step':>8} {'per step':>9}"]
        lines += [f"  {kind[:44]:<44} {ms:8.2f} {count:9.0f}" for kind, ms, count in entry["by_type"]]
        lines.append(f"  {'scope (conv: convolutions only)':<44} {'ms/step':>8} {'per step':>9}")
        lines += [f"  {(scope + (' [conv]' if conv else ''))[:44]:<44} {ms:8.2f} {count:9.0f}"
                  for scope, conv, ms, count in entry["by_scope"]]
    return "\n".join(lines)
