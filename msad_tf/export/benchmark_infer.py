"""Exported models measured: COCO AP of every export format, and inference latency per format
at high and at low resolution.

``export_ap_report`` evaluates Keras, the SavedModel (``image_bytes`` signature) and the TFLite
models (each quantization) on the run's val split with ``evaluate_coco`` and checks each AP
against the Keras AP. ``benchmark_infer`` times the same formats at H (shift 0) and at L (the
run's low shift) in one process, H and L in turns, and reports the low/high latency ratio of
each format.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from msad_tf.export import BENCHMARK_FORMATS, QUANTIZATIONS
from msad_tf.export.saved_model import (
    ExportSpec,
    directory_size,
    export_saved_model,
    export_spec,
    original_pixel_boxes,
)

AP_FORMATS = ("keras", "saved_model") + tuple(f"tflite_{q}" for q in QUANTIZATIONS)
AP_TOLERANCES = {
    "saved_model": 0.01,
    "tflite_none": 0.3,
    "tflite_fp16": 0.5,
    "tflite_dynamic": 2.0,
    "tflite_int8": 2.0,
}


def coco_results(image_id: int, boxes, scores, category_ids) -> list[dict]:
    """Detections of one image ([ymin, xmin, ymax, xmax] original pixels, scores, dataset
    category ids) -> COCO result dicts."""
    results = []
    for box, score, category in zip(np.asarray(boxes, np.float64), scores, category_ids):
        ymin, xmin, ymax, xmax = box.tolist()
        results.append(
            {
                "image_id": int(image_id),
                "category_id": int(round(float(category))),
                "bbox": [round(xmin, 2), round(ymin, 2), round(xmax - xmin, 2), round(ymax - ymin, 2)],
                "score": round(float(score), 5),
            }
        )
    return results


def saved_model_results(export_dir, records, spec: ExportSpec, batch_size: int) -> list[dict]:
    """COCO results of a SavedModel's ``image_bytes`` signature on image records (batches of
    ``batch_size`` in record order, as ``predict_coco`` batches them)."""
    serve = tf.saved_model.load(str(export_dir)).signatures["image_bytes"]
    results = []
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        encoded = tf.constant([Path(r.path).read_bytes() for r in batch])
        out = {k: v.numpy() for k, v in serve(image_bytes=encoded).items()}
        for i, record in enumerate(batch):
            n = int(out["num_detections"][i])
            boxes = original_pixel_boxes(out["detection_boxes"][i, :n], record.height, record.width, spec)
            results += coco_results(
                record.image_id, boxes, out["detection_scores"][i, :n], out["detection_classes"][i, :n]
            )
    return results


def tflite_results(path, records, num_threads: int | None = None) -> list[dict]:
    """COCO results of a .tflite detection model on image records, one image at a time."""
    from msad_tf.export.tflite import TFLiteDetector

    detector = TFLiteDetector(path, num_threads)
    results = []
    for record in records:
        image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False)
        boxes, scores, ids = detector.detect_image(image)
        results += coco_results(record.image_id, boxes, scores, ids)
    return results


def export_ap_report(run_dir, resolution: str | None = None, formats=AP_FORMATS, workdir=None,
                     max_images: int | None = None, representative_images: int = 100,
                     pad_multiple: int | None = None, tolerances=None, num_threads: int | None = None,
                     progress: bool = False) -> dict:
    """COCO AP of each export format of a run on its val split, checked against Keras.

    Every format sees the same images at the same ExportSpec (resolution, resize target,
    subsample, normalisation, shift, padding). The Keras row runs ``predict_coco`` with the
    export's padding; if that differs from ``msad evaluate``'s (``data.pad_multiple`` before the
    subsample), ``keras_msad_evaluate`` gives the AP ``msad evaluate`` reports.

    Args:
      run_dir: a run directory (``load_run``).
      resolution: ``high`` or ``low`` (default: the run's deployment resolution).
      formats: subset of ``AP_FORMATS`` (``keras`` is always evaluated: it is the reference).
      workdir: where the exports are written (default: a temporary directory, removed after).
      max_images: evaluate the first images of the split only (whole Keras batches).
      representative_images: training images calibrating the int8 model.
      tolerances: format -> allowed |AP - AP_keras| (default ``AP_TOLERANCES``).
    Returns:
      dict(run, spec, images, metrics={format: COCO metrics}, checks={format: dict(delta_AP,
      tolerance, ok)}, ok, seconds={format: evaluation seconds}[, keras_msad_evaluate]).
    """
    from msad_tf.evaluation.coco_eval import evaluate_coco
    from msad_tf.evaluation.evaluator import predict_coco
    from msad_tf.export.tflite import export_tflite, representative_dataset
    from msad_tf.training.runs import load_run
    from msad_tf.training.train import load_split

    tolerances = dict(AP_TOLERANCES, **(tolerances or {}))
    unknown = sorted(set(formats) - set(AP_FORMATS))
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}: choose from {AP_FORMATS}")
    config, model, ids, names = load_run(run_dir)
    spec = export_spec(model, config, resolution, pad_multiple)
    dataset = load_split(config, config.data.val_split)
    batch_size = config.eval.batch_size
    max_images = max_images if max_images is not None else config.eval.max_images

    def keras_metrics(pad):
        results, image_ids = predict_coco(
            model, dataset, short_side=spec.short_side, max_side=spec.max_side, shift=spec.shift,
            batch_size=batch_size, pad_multiple=pad, max_images=max_images, progress=progress,
            stride=spec.subsample, input_norm=spec.input_norm,
        )
        return evaluate_coco(dataset.coco, results, np.unique(image_ids)), image_ids

    report = {"run": str(run_dir), "spec": spec.as_dict(), "metrics": {}, "checks": {}, "seconds": {}}
    start = time.perf_counter()
    report["metrics"]["keras"], image_ids = keras_metrics(spec.input_multiple)
    report["seconds"]["keras"] = time.perf_counter() - start
    if spec.input_multiple != config.data.pad_multiple:
        report["keras_msad_evaluate"] = keras_metrics(config.data.pad_multiple)[0]
    records = dataset.records[: len(image_ids)]
    if [r.image_id for r in records] != [int(i) for i in image_ids]:
        raise RuntimeError("the Keras evaluation did not read the split in record order")
    report["images"] = len(records)
    evaluated = np.unique(image_ids)

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(workdir or scratch)
        for name in formats:
            if name == "keras":
                continue
            start = time.perf_counter()
            if name == "saved_model":
                export_dir = root / f"saved_model_{spec.resolution}"
                if not (export_dir / "saved_model.pb").is_file():
                    export_saved_model(model, export_dir, spec, ids, names, source_run=run_dir)
                results = saved_model_results(export_dir, records, spec, batch_size)
            else:
                quantize = name[len("tflite_"):]
                path = root / f"model_{spec.resolution}_{quantize}.tflite"
                if not path.is_file():
                    side = spec.canvas_side
                    data = (
                        representative_dataset(config, spec, (side, side), representative_images)
                        if quantize == "int8"
                        else None
                    )
                    export_tflite(model, path, spec, ids, names, quantize, data, source_run=run_dir)
                results = tflite_results(path, records, num_threads)
            report["metrics"][name] = evaluate_coco(dataset.coco, results, evaluated)
            report["seconds"][name] = time.perf_counter() - start
            delta = report["metrics"][name]["AP"] - report["metrics"]["keras"]["AP"]
            report["checks"][name] = {
                "delta_AP": delta,
                "tolerance": tolerances[name],
                "ok": abs(delta) <= tolerances[name],
            }
    report["ok"] = all(check["ok"] for check in report["checks"].values())
    return report


def format_ap_report(report: dict) -> str:
    """The AP report as a plain-text table."""
    from msad_tf.evaluation.coco_eval import format_table

    rows = dict(report["metrics"])
    if "keras_msad_evaluate" in report:
        rows["keras (msad evaluate padding)"] = report["keras_msad_evaluate"]
    spec = report["spec"]
    lines = [
        format_table(
            rows,
            title=f"{report['run']}: {spec['resolution']} ({spec['short_side']}/{spec['max_side']}"
            f"{' subsampled /' + str(spec['subsample']) if spec.get('subsample', 1) > 1 else ''}, "
            f"shift {spec['shift']}, pad {spec['pad_multiple']}), {report['images']} val images",
        ),
        "",
    ]
    for name, check in report["checks"].items():
        verdict = "ok" if check["ok"] else "FAIL"
        lines.append(
            f"{name:<16} AP - AP_keras = {check['delta_AP']:+.3f} (tolerance {check['tolerance']}) {verdict}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ latency
def latency_seconds(fn, warmup: int, repeats: int) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    return interleaved_latency({"fn": fn}, warmup, repeats)["fn"]["wall"]


def interleaved_latency(calls: dict, warmup: int, repeats: int) -> dict:
    """Wall-clock and process-CPU seconds of each callable in ``calls``, timed in turns.

    Every round calls each function once (the order reversed every other round), so a change
    of the machine's load during the measurement hits all of them alike and their ratios stay
    fair; ``warmup`` untimed rounds first. Returns {name: {"wall": [s], "cpu": [s]}}. The CPU
    time is the whole process's (all threads): for a single-threaded interpreter it is the
    compute time without the time the thread waited for a core.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times = {name: {"wall": [], "cpu": []} for name in names}
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else names[::-1]:
            wall, cpu = time.perf_counter(), time.process_time()
            calls[name]()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times


def network_flops(model, shift: int, height: int, width: int) -> int:
    """Floating-point operations of backbone + FPN + head for one [1, height, width, 3] input,
    counted by the TF profiler (tf.compat.v1.profiler, ``float_operation``: a multiply-add
    counts as 2) on the traced graph. Post-processing is not counted."""
    from msad_tf.export.tflite import head_outputs_at

    function = tf.function(lambda images: head_outputs_at(model, images, shift))
    graph = function.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options["output"] = "none"
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")
    try:
        return int(tf.compat.v1.profiler.profile(graph=graph, options=options).total_float_ops)
    finally:
        logger.setLevel(level)


def benchmark_image(config, spec: ExportSpec, seed: int = 0):
    """uint8 [h, w, 3]: the first val image resized to the spec's resolution (a seeded noise
    image of size short_side x max_side when the dataset is not there)."""
    from msad_tf.data.preprocess import resize_image
    from msad_tf.training.train import load_split

    try:
        record = load_split(config, config.data.val_split).records[0]
        image = tf.io.decode_image(tf.io.read_file(record.path), channels=3, expand_animations=False)
    except (FileNotFoundError, OSError, ValueError, IndexError):
        rng = np.random.default_rng(seed)
        image = tf.constant(rng.integers(0, 256, (spec.short_side, spec.max_side, 3), dtype=np.uint8))
    resized, _ = resize_image(image, spec.short_side, spec.max_side)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8).numpy()


def _timing(times, size_bytes=None) -> dict:
    wall, cpu = np.asarray(times["wall"]), np.asarray(times["cpu"])
    median = float(np.median(wall))
    return {
        "median_ms": median * 1e3,
        "p10_ms": float(np.percentile(wall, 10)) * 1e3,
        "p90_ms": float(np.percentile(wall, 90)) * 1e3,
        "cpu_median_ms": float(np.median(cpu)) * 1e3,
        "images_per_s": 1.0 / median,
        "size_bytes": size_bytes,
    }


def _thread_counts(num_threads) -> list[int]:
    if num_threads is None:
        return [os.cpu_count() or 1]
    if isinstance(num_threads, int):
        return [num_threads]
    return [int(n) for n in num_threads] or [os.cpu_count() or 1]


def tflite_format_name(quantize: str, threads: int, thread_counts) -> str:
    """Row name of a TFLite model: ``tflite_<quantize>``, plus ``/<threads>t`` when several
    thread counts are timed."""
    return f"tflite_{quantize}" + (f"/{threads}t" if len(thread_counts) > 1 else "")


def prepare_resolution(model, config, resolution: str, workdir, category_ids, names, run_dir,
                       quantizations=QUANTIZATIONS, num_threads=None, representative_images: int = 20,
                       formats=BENCHMARK_FORMATS, export_to=None, progress: bool = True) -> dict:
    """The exports of one resolution and a batch-1 callable per format, ready to be timed.

    All formats see the same image, already resized to the spec's resize target: Keras runs
    ``detect_function`` on ``network_input`` of the normalised padded batch (as
    ``predict_coco``); the SavedModel ``serving_default`` (its resize/normalise/pad/subsample
    included) and TFLite the model with an input exactly the padded size (with ``export_to``:
    the deployment canvas, ``ExportSpec.canvas_side`` square).

    Args:
      workdir: exports go to ``workdir/<resolution>/`` (reused when there).
      num_threads: TFLite interpreter threads: an int, a list (one row per count), or None
        (all CPUs).
      formats: subset of ``BENCHMARK_FORMATS``.
      export_to: optional dict(saved_model=DIR, tflite=callable quantize -> PATH): write the
        exports there instead (always afresh), e.g. in the ``msad export`` layout to keep them.
    Returns:
      dict(info=..., calls={format: callable}, sizes={format: bytes}).
    """
    from msad_tf.data.preprocess import network_input, normalize_image, pad_to_multiple
    from msad_tf.export.saved_model import read_export_info
    from msad_tf.export.tflite import (
        TFLiteDetector,
        export_tflite,
        prepare_input,
        representative_dataset,
    )

    spec = export_spec(model, config, resolution)
    image = benchmark_image(config, spec)
    h, w = image.shape[:2]
    multiple = spec.input_multiple
    padded = (-(-h // multiple) * multiple, -(-w // multiple) * multiple)
    network_padded = (padded[0] // spec.subsample, padded[1] // spec.subsample)
    root = Path(workdir) / resolution
    root.mkdir(parents=True, exist_ok=True)
    calls, sizes = {}, {}

    start = time.perf_counter()

    def log(message):
        if progress:
            print(f"[benchmark infer] {resolution} ({time.perf_counter() - start:.0f} s): {message}",
                  flush=True)

    if "keras" in formats:
        batch, image_sizes = network_input(
            pad_to_multiple(normalize_image(tf.constant(image), spec.input_norm)[None], multiple),
            tf.constant([[h, w]], tf.int32),
            spec.subsample,
        )
        detect = model.detect_function(spec.shift)
        weights = Path(run_dir) / "model.weights.h5"
        calls["keras"] = lambda: detect(batch, image_sizes)["num_detections"].numpy()
        sizes["keras"] = weights.stat().st_size if weights.is_file() else None

    if "saved_model" in formats:
        export_dir = Path(export_to["saved_model"]) if export_to else root / "saved_model"
        if export_to or not (export_dir / "saved_model.pb").is_file():
            log(f"export SavedModel to {export_dir}")
            export_saved_model(model, export_dir, spec, category_ids, names, source_run=run_dir)
        serve = tf.saved_model.load(str(export_dir)).signatures["serving_default"]
        images = tf.constant(image[None])
        calls["saved_model"] = lambda: serve(images=images)["num_detections"].numpy()
        sizes["saved_model"] = directory_size(export_dir)

    if "tflite" in formats:
        # A kept export takes the deployment canvas (any resized image fits); a scratch one
        # exactly the padded benchmark image, as Keras sees it.
        side = spec.canvas_side
        input_size = (side, side) if export_to else padded
        thread_counts = _thread_counts(num_threads)
        for quantize in quantizations:
            path = Path(export_to["tflite"](quantize)) if export_to else root / f"model_{quantize}.tflite"
            fresh = bool(export_to) or not path.is_file()
            if not fresh:
                fresh = tuple(read_export_info(path).get("input_size", ())) != tuple(input_size)
            if fresh:
                log(f"export TFLite {quantize} to {path}")
                data = (
                    representative_dataset(config, spec, input_size, representative_images)
                    if quantize == "int8"
                    else None
                )
                export_tflite(model, path, spec, category_ids, names, quantize, data, input_size,
                              source_run=run_dir)
            tflite_input, tflite_size, _ = prepare_input(image, spec, input_size)
            for threads in thread_counts:
                detector = TFLiteDetector(path, threads)
                name = tflite_format_name(quantize, threads, thread_counts)
                calls[name] = lambda detector=detector: detector(tflite_input, tflite_size)
                sizes[name] = path.stat().st_size
    info = {
        "run": str(run_dir),
        "spec": spec.as_dict(),
        "input": [int(h), int(w)],
        "padded_input": [int(padded[0]), int(padded[1])],
        "network_input": [int(network_padded[0]), int(network_padded[1])],
        "gflops": network_flops(model, spec.shift, *network_padded) / 1e9,
    }
    return {"info": info, "calls": calls, "sizes": sizes}


def benchmark_infer(run_dir, runs_high=None, quantizations=QUANTIZATIONS, warmup: int = 5,
                    repeats: int = 50, workdir=None, num_threads=None,
                    representative_images: int = 20, ap: bool = False, ap_images: int | None = None,
                    progress: bool = True, formats=BENCHMARK_FORMATS, export_out=None,
                    export_name: str | None = None) -> dict:
    """Inference latency of every format at high and at low resolution, measured in one process.

    Both resolutions are exported and loaded first; then each format is timed at H and at L in
    turns (``interleaved_latency``), so the L/H ratios do not depend on when the machine was
    busy.

    Args:
      run_dir: the run benchmarked at L with its low shift, and at H with shift 0 (same weights).
      runs_high: optional run benchmarked at H instead (e.g. the single-resolution baseline).
      quantizations: TFLite quantizations to export and time.
      warmup, repeats: untimed and timed calls per format and resolution (median reported).
      workdir: where exports go (default: a temporary directory, removed after).
      num_threads: TFLite interpreter threads: int, list of ints (one row per count) or None
        (all CPUs; TensorFlow uses its default thread pools).
      ap: also run ``export_ap_report`` at the run's deployment resolution.
      formats: subset of ``BENCHMARK_FORMATS`` to time.
      export_out: keep the exports of ``run_dir`` at its deployment resolution in the ``msad
        export`` layout: ``EXPORT_OUT/NAME/1`` (SavedModel) and
        ``EXPORT_OUT/NAME/tflite/model_<resolution>_<quantize>.tflite``; NAME is
        ``export_name`` or the run directory's name.
    Returns:
      dict(resolutions={high, low: info + formats={format: timing}}, ratio_low_over_high={format:
      wall-clock latency ratio}, cpu_ratio_low_over_high, flops_ratio_low_over_high,
      cpu_count, tflite_threads, warmup, repeats[, exports][, ap_report]).
    """
    from msad_tf.export.saved_model import deploy_resolution
    from msad_tf.export.tflite import tflite_path
    from msad_tf.training.runs import load_run

    unknown = sorted(set(formats) - set(BENCHMARK_FORMATS))
    if unknown:
        raise ValueError(f"unknown format(s) {unknown}: choose from {BENCHMARK_FORMATS}")
    loaded = {}

    def run(path):
        key = str(Path(path).resolve())
        if key not in loaded:
            loaded[key] = load_run(path)
        return loaded[key]

    thread_counts = _thread_counts(num_threads)
    result = {
        "cpu_count": os.cpu_count(),
        "tflite_threads": thread_counts[0] if len(thread_counts) == 1 else thread_counts,
        "warmup": warmup,
        "repeats": repeats,
        "resolutions": {},
    }
    deployed = None
    if export_out is not None:
        config, model, _, _ = run(run_dir)
        deployed = deploy_resolution(model, config)
        if deployed == "high" and runs_high:
            raise ValueError(
                "export_out keeps the run's exports at its deployment resolution (high), where "
                "runs_high is benchmarked instead"
            )
        name = export_name or Path(run_dir).resolve().name
        result["exports"] = {
            "resolution": deployed,
            "saved_model": str(Path(export_out) / name / "1"),
            "tflite": {q: str(tflite_path(export_out, name, deployed, q)) for q in quantizations},
        }
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(workdir or scratch)
        prepared = {}
        for resolution in ("high", "low"):
            source = runs_high if (resolution == "high" and runs_high) else run_dir
            config, model, ids, names = run(source)
            export_to = None
            if deployed == resolution and source == run_dir:
                export_to = {
                    "saved_model": result["exports"]["saved_model"],
                    "tflite": lambda q: result["exports"]["tflite"][q],
                }
            prepared[resolution] = prepare_resolution(
                model, config, resolution, root / Path(source).resolve().name, ids, names, source,
                quantizations, thread_counts, representative_images, formats, export_to, progress,
            )
        high, low = prepared["high"], prepared["low"]
        for resolution, entry in prepared.items():
            result["resolutions"][resolution] = dict(entry["info"], formats={})
        for name in high["calls"]:
            if name not in low["calls"]:
                continue
            if progress:
                print(f"[benchmark infer] timing {name}", flush=True)
            times = interleaved_latency(
                {"high": high["calls"][name], "low": low["calls"][name]}, warmup, repeats
            )
            for resolution in ("high", "low"):
                result["resolutions"][resolution]["formats"][name] = _timing(
                    times[resolution], prepared[resolution]["sizes"][name]
                )
        if ap:
            result["ap_report"] = export_ap_report(
                run_dir, workdir=root / "ap", max_images=ap_images, progress=progress,
                num_threads=thread_counts[0],
            )
    high, low = result["resolutions"]["high"], result["resolutions"]["low"]
    for key, ratio in (("median_ms", "ratio_low_over_high"), ("cpu_median_ms", "cpu_ratio_low_over_high")):
        result[ratio] = {
            name: low["formats"][name][key] / high["formats"][name][key]
            for name in high["formats"]
            if name in low["formats"]
        }
    result["flops_ratio_low_over_high"] = low["gflops"] / high["gflops"]
    return result


def format_benchmark(result: dict) -> str:
    """One table: per format, latency and images/s at H and L, the L/H latency ratio (wall
    clock, and process CPU time), sizes."""
    high, low = result["resolutions"]["high"], result["resolutions"]["low"]

    def describe(entry):
        spec = entry["spec"]
        h, w = entry["input"]
        ph, pw = entry["padded_input"]
        nh, nw = entry.get("network_input", (ph, pw))
        step = spec.get("subsample", 1)
        view = f" subsampled /{step} to {nh}x{nw}" if step > 1 else ""
        return (
            f"{spec['resolution']}: {h}x{w} padded {ph}x{pw}{view}, shift {spec['shift']}, "
            f"{entry['gflops']:.3f} GFLOPs (network), run {entry['run']}"
        )

    width = max([16] + [len(name) + 2 for name in high["formats"]])
    header = (
        f"{'format':<{width}}{'H ms':>9}{'L ms':>9}{'L/H':>7}{'L/H cpu':>9}{'H img/s':>10}{'L img/s':>10}"
        f"{'H size':>11}{'L size':>11}"
    )
    lines = [describe(high), describe(low), "", header, "-" * len(header)]
    cpu_ratios = result.get("cpu_ratio_low_over_high", {})
    for name, h in high["formats"].items():
        lo = low["formats"].get(name)
        if lo is None:
            continue
        cpu = f"{cpu_ratios[name]:>9.2f}" if name in cpu_ratios else f"{'-':>9}"
        lines.append(
            f"{name:<{width}}{h['median_ms']:>9.2f}{lo['median_ms']:>9.2f}"
            f"{result['ratio_low_over_high'][name]:>7.2f}{cpu}{h['images_per_s']:>10.1f}"
            f"{lo['images_per_s']:>10.1f}{_size(h['size_bytes']):>11}{_size(lo['size_bytes']):>11}"
        )
    lines += [
        "",
        f"FLOPs L/H: {result['flops_ratio_low_over_high']:.3f}; median of {result['repeats']} runs "
        f"after {result['warmup']} warm-up, H and L timed in turns, batch 1, {result['cpu_count']} "
        f"CPUs, TFLite threads {result['tflite_threads']}; L/H cpu: process CPU time ratio",
    ]
    if "exports" in result:
        exports = result["exports"]
        lines.append(
            f"exports at {exports['resolution']} resolution kept: {exports['saved_model']}, "
            + ", ".join(exports["tflite"].values())
        )
    if "ap_report" in result:
        lines += ["", format_ap_report(result["ap_report"])]
    return "\n".join(lines)


def _size(num_bytes) -> str:
    if num_bytes is None:
        return "-"
    return f"{num_bytes / 1e6:.2f} MB" if num_bytes >= 1e5 else f"{num_bytes / 1e3:.1f} kB"


def write_json(path, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=2))


__all__ = [
    "AP_FORMATS",
    "AP_TOLERANCES",
    "BENCHMARK_FORMATS",
    "benchmark_infer",
    "export_ap_report",
    "format_ap_report",
    "format_benchmark",
    "interleaved_latency",
    "latency_seconds",
    "network_flops",
    "prepare_resolution",
    "tflite_format_name",
]
