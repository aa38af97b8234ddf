"""Deployment: SavedModel (TF Serving) and TFLite exporters, parity checks, inference benchmark.

  msad_tf.export.saved_model     DetectionModule, export_saved_model, export_run_saved_model
  msad_tf.export.tflite          TFLiteDetectionModule, export_tflite, export_run_tflite,
                                 TFLiteDetector, tflite_ops
  msad_tf.export.benchmark_infer export_ap_report, benchmark_infer

The CLI glue lives here (``add_export_parser``, ``add_benchmark_infer_parser``) and imports
TensorFlow only when a command runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = ("none", "fp16", "dynamic", "int8")
BENCHMARK_FORMATS = ("keras", "saved_model", "tflite")


def cmd_export(args) -> None:
    """``msad export``: write a SavedModel to OUT/NAME/VERSION or a .tflite file."""
    if args.format == "saved_model":
        if args.quantize != "none":
            raise ValueError("--quantize applies to --format tflite; a SavedModel stays float32")
        if args.input_size or args.raw_outputs:
            raise ValueError("--input-size and --raw-outputs apply to --format tflite")
        from msad_tf.export.saved_model import export_run_saved_model, read_export_info

        try:
            path = export_run_saved_model(
                args.run, args.out, args.name, args.version, args.resolution, args.pad_multiple
            )
        except FileExistsError as err:
            raise ValueError(str(err)) from err
        info = read_export_info(path)
    else:
        from msad_tf.export.saved_model import read_export_info
        from msad_tf.export.tflite import export_run_tflite

        path = export_run_tflite(
            args.run, args.out, args.name, args.quantize, args.resolution,
            args.representative_images, args.input_size, args.pad_multiple, args.raw_outputs,
        )
        info = read_export_info(path)
    summary = {
        key: info.get(key)
        for key in ("format", "quantize", "resolution", "short_side", "max_side", "subsample",
                    "input_norm", "shift", "pad_multiple", "input_size", "ops")
        if key in info
    }
    print(json.dumps({"path": str(path), **summary}, indent=2))


def add_export_parser(subparsers):
    """Adds ``msad export`` to the ``msad`` subparsers; returns the parser."""
    p = subparsers.add_parser(
        "export",
        help="export a run as a SavedModel (TF Serving) or a TFLite model",
        description=(
            "SavedModel: OUT/NAME/VERSION with signatures serving_default (uint8 images "
            "[batch, height, width, 3], any size) and image_bytes (encoded JPEG/PNG strings "
            "[batch]); pre-processing, network, decoding and NMS in one graph; outputs as the TF "
            "Object Detection API. TFLite: OUT/NAME/tflite/model_<resolution>_<quantize>.tflite "
            "taking a resized uint8 image [1, H, W, 3] and its size int32 [2]; builtin ops only. "
            "Both apply the run's model.input_norm and, at L with eval.low_input subsample, "
            "take a resize to H and subsample it by k (as msad evaluate). "
            "See saved_models/README.md."
        ),
    )
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--format", choices=FORMATS, default="saved_model")
    p.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                   help="TFLite quantization (int8 calibrates on training images)")
    p.add_argument("--out", default="saved_models",
                   help="base directory (default saved_models); for tflite also a .tflite path")
    p.add_argument("--name", help="model name (default: the run directory's name)")
    p.add_argument("--version", type=int, default=1, help="SavedModel version directory (default 1)")
    p.add_argument("--resolution", choices=["high", "low"],
                   help="input resolution (default: the run's deployment resolution: low for a "
                        "student, high otherwise)")
    p.add_argument("--representative-images", type=int, default=100, metavar="N",
                   help="training images calibrating int8 (default 100)")
    p.add_argument("--pad-multiple", type=int,
                   help="pad the resized image to a multiple of this (default data.pad_multiple "
                        "/ 2^shift: the geometry the read levels saw in training)")
    p.add_argument("--input-size", type=int, nargs=2, metavar=("H", "W"),
                   help="TFLite input size (default: a square canvas holding any resized image)")
    p.add_argument("--raw-outputs", action="store_true",
                   help="TFLite: output the head's logits/boxes/centerness instead of detections")
    p.set_defaults(func=cmd_export)
    return p


def cmd_benchmark_infer(args) -> None:
    """``msad benchmark infer``: latency table of every export format at H and L."""
    from msad_tf.export.benchmark_infer import (
        benchmark_infer,
        format_benchmark,
        write_json,
    )

    result = benchmark_infer(
        args.run, runs_high=args.runs_high, quantizations=args.quantize, warmup=args.warmup,
        repeats=args.repeats, workdir=args.workdir, num_threads=args.threads,
        representative_images=args.representative_images, ap=args.ap, ap_images=args.ap_images,
        formats=args.formats, export_out=args.export_out, export_name=args.name,
    )
    print(format_benchmark(result))
    out = Path(args.json or Path(args.run) / "benchmark_infer.json")
    write_json(out, result)
    print(f"written to {out}")
    if args.ap and not result["ap_report"]["ok"]:
        sys.exit(1)


def add_benchmark_infer_parser(benchmark_subparsers):
    """Adds ``infer`` to the ``msad benchmark`` subparsers; returns the parser."""
    p = benchmark_subparsers.add_parser(
        "infer",
        help="latency of Keras, SavedModel and TFLite at high and low resolution",
        description=(
            "Median batch-1 latency (after warm-up) of Keras, the SavedModel and each TFLite "
            "quantization for the same weights at H (shift 0) and at L (the run's low shift), "
            "H and L timed in turns, images/s, file sizes, network FLOPs, and the low/high "
            "latency ratio per format (wall clock, and process CPU time)."
        ),
    )
    p.add_argument("--run", required=True, help="run directory (e.g. the student)")
    p.add_argument("--runs-high", help="run to benchmark at high resolution instead of --run")
    p.add_argument("--quantize", nargs="+", choices=QUANTIZATIONS, default=list(QUANTIZATIONS),
                   help="TFLite quantizations to time (default all)")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--formats", nargs="+", choices=BENCHMARK_FORMATS, default=list(BENCHMARK_FORMATS),
                   help="formats to time (default all)")
    p.add_argument("--threads", type=int, nargs="+",
                   help="TFLite interpreter threads; several counts give one row each "
                        "(default: all CPUs)")
    p.add_argument("--representative-images", type=int, default=20, metavar="N")
    p.add_argument("--workdir", help="keep the exports here (default: a temporary directory)")
    p.add_argument("--export-out", metavar="OUT",
                   help="also keep the exports of the run at its deployment resolution in the "
                        "msad export layout: OUT/NAME/1 and OUT/NAME/tflite/")
    p.add_argument("--name", help="model name under --export-out (default: the run's name)")
    p.add_argument("--ap", action="store_true",
                   help="also check the AP of every format against Keras on the val split")
    p.add_argument("--ap-images", type=int, help="val images for --ap (default all)")
    p.add_argument("--json", help="output JSON (default RUN/benchmark_infer.json)")
    p.set_defaults(func=cmd_benchmark_infer)
    return p


__all__ = [
    "BENCHMARK_FORMATS",
    "FORMATS",
    "QUANTIZATIONS",
    "add_benchmark_infer_parser",
    "add_export_parser",
    "cmd_benchmark_infer",
    "cmd_export",
]
