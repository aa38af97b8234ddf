"""The ``msad`` command.

  msad make-dataset      write the embedded synthetic dataset (COCO layout)
  msad make-tfrecords    convert a COCO dataset to sharded TFRecords
  msad pretrain          pre-train a backbone on single-object images (the ImageNet stand-in)
  msad train             train a detector or teacher from a YAML config
  msad distill           train a student from a teacher run (low-res MSAD or same resolution)
  msad evaluate          COCO AP of a run at high and/or low resolution
  msad predict           detections on image files (JSON + PNG)
  msad fusion-analysis   C-FF weight vs object size for a teacher run
  msad export            SavedModel (TF Serving) or TFLite (none/fp16/dynamic/int8) of a run
  msad benchmark train   tf.data and train-step throughput, as ratios
  msad benchmark data    tf.data training-pipeline images/s vs num_parallel_calls (folder, TFRecords)
  msad benchmark infer   Keras / SavedModel / TFLite latency at H and L, sizes, FLOPs
  msad demo              the main job on the embedded dataset
  msad ablation SUITE    the paper's ablation tables at demo scale (teacher, student, budget)
  msad reproduce         the paper's tables and claims at a converged budget, 3 seeds (resumable)

Every command takes ``--help``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _add_config_args(parser, default_config=None):
    parser.add_argument("--config", default=default_config, help="YAML config (configs/*.yaml)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=2 (repeatable)",
    )


def _resolve_config(args):
    from msad_tf.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "strategy", None):
        overrides.append(f"train.strategy={args.strategy}")
    return load_config(args.config, overrides)


def cmd_make_dataset(args):
    from msad_tf.data.synthetic import make_synthetic_dataset

    paths = make_synthetic_dataset(
        args.out, num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
        seed=args.seed, progress=not args.quiet, object_scale=args.object_scale,
    )
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))


def cmd_pretrain(args):
    from msad_tf.training.pretrain import pretrain_backbone

    record = pretrain_backbone(
        args.out, backbone=args.backbone, width=args.width, images=args.images,
        image_size=args.image_size, object_scale=args.object_scale, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, progress=not args.quiet,
    )
    print(json.dumps(record, indent=2))


def cmd_make_tfrecords(args):
    from msad_tf.data import CocoDataset
    from msad_tf.data.tfrecords import write_tfrecords

    dataset = CocoDataset(args.ann, args.images, check_images=True)
    paths = write_tfrecords(dataset, args.out, args.shards, progress=True)
    print(f"wrote {len(paths)} shards, {len(dataset.records)} images: {args.out}-*-of-{args.shards:05d}.tfrecord")


def cmd_train(args):
    from msad_tf.training.train import train

    config = _resolve_config(args)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config or "default").stem)
    train(config, run_dir, progress=not args.quiet)
    print(f"run directory: {run_dir}")


def cmd_distill(args):
    args.overrides = ["train.mode=student", f"train.teacher_run={args.teacher}"] + list(args.overrides)
    if args.student_input:
        args.overrides.append(f"train.student_input={args.student_input}")
    if args.run_dir is None:
        args.run_dir = str(Path(args.teacher).parent / f"{Path(args.teacher).name}_student")
    cmd_train(args)


def _evaluate_run(run_dir, split, resolutions, max_images, progress=True, categories="class"):
    from msad_tf.evaluation.evaluator import evaluate_model
    from msad_tf.resolution import branches_for
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    config, model, _, _ = runs.load_run(run_dir)
    dataset = load_split(config, split)
    runs.check_categories(run_dir, dataset)
    rows = {}
    for resolution in resolutions:
        for label, branch in branches_for(model, resolution):
            metrics = evaluate_model(model, dataset, config, resolution, branch=branch, max_images=max_images,
                                     progress=progress, categories=categories)
            rows[label] = metrics
            scope = split if categories == "class" else f"{split}/{categories}"
            runs.update_metrics(run_dir, f"{scope}/{label}", metrics)
    return rows


def cmd_evaluate(args):
    from msad_tf.evaluation.coco_eval import format_table, write_metrics

    if args.categories != "class" and (args.corruption or args.sweep or args.checkpoints):
        raise ValueError("--categories applies to the plain evaluation, not to --corruption, --sweep or --checkpoints")
    if args.corruption:
        if args.sweep:
            raise ValueError("--corruption and --sweep are separate evaluations: run one at a time")
        return _evaluate_corruptions(args)
    if args.severity:
        raise ValueError("--severity needs --corruption NAME (or all)")
    if args.sweep:
        return _sweep(args)
    if args.checkpoints:
        return _evaluate_checkpoints(args)

    rows = _evaluate_run(args.run, args.split, args.resolutions, args.max_images, not args.quiet, args.categories)
    scored = "" if args.categories == "class" else f", {args.categories} AP"
    print(format_table(rows, title=f"{args.run} ({args.split}{scored})"))
    suffix = "" if args.categories == "class" else f"_{args.categories}"
    out = Path(args.json or Path(args.run) / f"eval_{args.split}{suffix}.json")
    write_metrics(out, rows)
    print(f"metrics written to {out}")


def _evaluate_checkpoints(args):
    """AP of every epoch checkpoint of a run (AP against training steps): a table, and
    RUN/eval_<split>_checkpoints.json {step: {row: metrics}} (or --json)."""
    from msad_tf.evaluation.evaluator import evaluate_model
    from msad_tf.resolution import branches_for
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    run = Path(args.run)
    checkpoints = sorted((run / "checkpoints").glob("epoch_*.weights.h5"))
    if not checkpoints:
        raise ValueError(f"{run}/checkpoints holds no epoch_*.weights.h5 (the run saves one per epoch)")
    config = runs.load_config(run / runs.CONFIG_FILE)
    dataset = load_split(config, args.split)
    runs.check_categories(run, dataset)
    result = {}
    for path in checkpoints:
        step = int(path.name.split("_")[1].split(".")[0]) * config.train.steps_per_epoch
        _, model, _, _ = runs.load_run(run, path)
        rows = {}
        for resolution in args.resolutions:
            for label, branch in branches_for(model, resolution):
                rows[label] = evaluate_model(model, dataset, config, resolution, branch=branch,
                                             max_images=args.max_images, progress=False)
        result[step] = rows
        print(f"step {step:>7}: " + "  ".join(f"{label} {m['AP']:.2f}" for label, m in rows.items()), flush=True)
    out = Path(args.json or run / f"eval_{args.split}_checkpoints.json")
    out.write_text(json.dumps({str(k): v for k, v in result.items()}, indent=1))
    print(f"AP of {len(result)} checkpoints written to {out}")


def _evaluate_corruptions(args):
    """COCO-C style robustness: every row of ``msad evaluate`` clean and under each corruption
    family at each severity; prints the per-family AP table, writes the metrics (JSON + CSV)
    and merges them into RUN/metrics.json under SPLIT/ROW/FAMILY/sSEVERITY."""
    from tqdm import tqdm

    from msad_tf.evaluation import corruptions
    from msad_tf.evaluation.coco_eval import write_metrics
    from msad_tf.evaluation.evaluator import (
        evaluate_model,
        evaluation_batches,
    )
    from msad_tf.resolution import branches_for
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    families = corruptions.FAMILIES if "all" in args.corruption else tuple(dict.fromkeys(args.corruption))
    severities = tuple(sorted(set(args.severity or corruptions.SEVERITIES)))
    plan = [corruptions.Corruption("none", 0)]
    plan += [corruptions.Corruption(family, severity) for family in families for severity in severities]
    config, model, _, _ = runs.load_run(args.run)
    dataset = load_split(config, args.split)
    runs.check_categories(args.run, dataset)
    rows_to_evaluate = [(label, resolution, branch) for resolution in args.resolutions
                        for label, branch in branches_for(model, resolution)]
    total = len(rows_to_evaluate) * len(plan) * evaluation_batches(dataset, config, args.max_images)
    rows = {}
    with tqdm(total=total, unit="batch", disable=args.quiet, dynamic_ncols=True) as bar:
        for label, resolution, branch in rows_to_evaluate:
            for corruption in plan:
                bar.set_description(f"{label} {corruption.label}")
                rows[f"{label}/{corruption.label}"] = evaluate_model(
                    model, dataset, config, resolution, branch=branch, max_images=args.max_images,
                    progress=False, corruption=corruption, bar=bar,
                )
    rows = corruptions.summarize(rows)
    print(corruptions.robustness_table(rows, title=f"{args.run} ({args.split}): AP under corruption"))
    tag = "all" if families == corruptions.FAMILIES else "+".join(families)
    if severities != corruptions.SEVERITIES:
        tag += "_s" + "".join(str(s) for s in severities)
    out = Path(args.json or Path(args.run) / f"eval_{args.split}_corruption_{tag}.json")
    write_metrics(out, rows)
    corruptions.write_csv(out.with_suffix(".csv"), rows)
    for key, metrics in rows.items():
        runs.update_metrics(args.run, f"{args.split}/{key}", metrics)
    print(f"metrics written to {out} and {out.with_suffix('.csv')}")
    return rows


def _sweep(args):
    from msad_tf.evaluation.sweep import resolution_sweep
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    config, model, _, _ = runs.load_run(args.run)
    dataset = load_split(config, args.split)
    runs.check_categories(args.run, dataset)
    rows = resolution_sweep(model, dataset, config, args.sweep, model.shift_for("low"),
                            Path(args.run), max_images=args.max_images, progress=not args.quiet)
    for row in rows:
        stride = f" /{row['stride']}" if row["stride"] > 1 else ""
        print(f"{row['short_side']:5d}px{stride}  AP {row['AP']:6.2f}  APs {row['APs']:6.2f}  "
              f"APm {row['APm']:6.2f}  APl {row['APl']:6.2f}")
    print(f"written {args.run}/resolution_sweep.csv and resolution_sweep.png")


def cmd_predict(args):
    from msad_tf.data.preprocess import resolve_input_norm
    from msad_tf.resolution import input_geometry
    from msad_tf.evaluation.predict import predict_files
    from msad_tf.training import runs

    config, model, ids, names = runs.load_run(args.run)
    short_side, max_side, stride = input_geometry(config, args.resolution)
    summary = predict_files(
        model, args.images, args.out, short_side=short_side, max_side=max_side,
        shift=model.shift_for(args.resolution), category_ids=ids, names=names,
        score_threshold=args.score_threshold, pad_multiple=config.data.pad_multiple,
        stride=stride, input_norm=resolve_input_norm(config.model),
    )
    for entry in summary:
        print(json.dumps(entry))
    if all("error" in entry for entry in summary):
        sys.exit(1)


def cmd_fusion_analysis(args):
    from msad_tf.evaluation.fusion_analysis import fusion_analysis
    from msad_tf.training import runs
    from msad_tf.training.train import load_split

    config, model, _, _ = runs.load_run(args.run)
    if not hasattr(model, "fusion_weights"):
        raise SystemExit(f"{args.run} is not a fusion teacher run (train.mode teacher)")
    dataset = load_split(config, args.split)
    runs.check_categories(args.run, dataset)
    out = fusion_analysis(model, dataset, config, args.out or Path(args.run) / "fusion_analysis",
                          max_images=args.max_images)
    print(json.dumps(out, indent=2, default=str))


def cmd_anchors(args):
    from msad_tf.modeling.retinanet_detector import dataset_anchor_coverage

    config = _resolve_config(args)
    sizes = args.sizes or [config.model.anchor_size]
    result = dataset_anchor_coverage(config, sizes, args.split, progress=not args.quiet)
    print(f"anchor coverage of {config.data.ann_file(args.split)} at {config.data.short_side} px "
          f"(positive IoU >= {config.model.positive_iou}; a box below it gets its best anchors anyway)")
    print(f"{'anchor_size':>11} {'boxes':>7} {'covered':>8} {'best IoU':>9} {'pos/box':>8}")
    for size, row in result.items():
        print(f"{size:>11g} {row['boxes']:>7d} {row['covered']:>8.3f} {row['mean_best_iou']:>9.3f} "
              f"{row['positives_per_box']:>8.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"split": args.split, "coverage": result}, indent=2) + "\n")


def cmd_benchmark(args):
    from msad_tf.evaluation.benchmark import benchmark_train, format_train_benchmark

    config = _resolve_config(args)
    if args.profile:
        from msad_tf.evaluation.benchmark import format_profile, profile_train

        result = profile_train(config, modes=args.modes, steps=args.steps, trace_dir=args.profile)
        print(format_profile(result))
    elif args.threads:
        from msad_tf.evaluation.benchmark import benchmark_threads, format_thread_benchmark

        result = benchmark_threads(config, modes=args.modes, steps=args.steps, rounds=args.rounds,
                                   compare=args.compare)
        print(format_thread_benchmark(result))
    elif args.processes:
        from msad_tf.evaluation.benchmark import (
            benchmark_processes,
            format_process_benchmark,
        )

        result = {}
        for mode in args.modes:
            result[mode] = benchmark_processes(config, mode, steps=args.steps, rounds=args.rounds,
                                               processes=tuple(args.processes))
            print(format_process_benchmark(result[mode]), flush=True)
    else:
        result = benchmark_train(config, modes=args.modes, steps=args.steps, speedups=args.speedups,
                                 rounds=args.rounds, losses=args.losses, compare=args.compare)
        print(format_train_benchmark(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def cmd_benchmark_data(args):
    from msad_tf.evaluation.benchmark import benchmark_data, format_data_benchmark

    config = _resolve_config(args)
    calls = [-1 if c.lower() == "autotune" else int(c) for c in args.parallel_calls]
    result = benchmark_data(config, parallel_calls=calls, sources=args.sources, batches=args.batches,
                            rounds=args.rounds, shards=args.shards)
    print(format_data_benchmark(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


def cmd_demo(args):
    from msad_tf.demo import run_demo, select_runs

    run_demo(config_path=args.config, out=args.out, data_root=args.data, overrides=args.overrides,
             force=args.force, jobs=args.jobs, plateau=args.plateau, runs_to_do=select_runs(args.runs))


def cmd_ablation(args):
    from msad_tf.ablation import run_ablation

    for suite in args.suite:
        run_ablation(suite, config_path=args.config, out=args.out, data_root=args.data, overrides=args.overrides,
                     force=args.force, only=args.only)


def cmd_reproduce(args):
    from msad_tf.reproduce import default_paths, run_reproduce

    out, keep = default_paths(args.config)
    run_reproduce(config_path=args.config, out=args.out or out, data_root=args.data, overrides=args.overrides,
                  seeds=tuple(args.seeds), variants=not args.no_variants, plateau=not args.no_plateau,
                  curves=not args.no_curves, jobs=args.jobs, report_only=args.report_only,
                  keep=(keep if args.keep is None else args.keep) or None, extensions=not args.no_extensions,
                  tables=args.tables, runs=args.runs)


_JOBS_HELP = ("runs trained at once, each in its own process with its share of the cores as threads (default 2: "
              "on a quiet 2-core CPU two processes train at 1.2-1.5x the images/s of one, `msad benchmark train "
              "--processes 1 2`; use 1 on a single GPU)")


def build_parser() -> argparse.ArgumentParser:
    from msad_tf.config import TRAIN_MODES
    from msad_tf.demo import DEFAULT_RUNS, DEMO_RUNS

    parser = argparse.ArgumentParser(prog="msad", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-dataset", help="write the embedded synthetic dataset")
    p.add_argument("--out", default="data/msad_synth128")
    p.add_argument("--num-train", type=int, default=800)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--image-size", type=int, default=128, help="the demo's dataset is 128 px (the 256-px set "
                   "of earlier sessions: --image-size 256 --object-scale 1)")
    p.add_argument("--object-scale", type=float, default=0.75,
                   help="multiplier of the object size bands (image-size / 256 keeps objects' relative size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_make_dataset)

    p = sub.add_parser("make-tfrecords", help="convert a COCO dataset to sharded TFRecords")
    p.add_argument("--ann", required=True, help="instances json")
    p.add_argument("--images", required=True, help="image folder")
    p.add_argument("--out", required=True, help="output prefix, e.g. data/tfr/train")
    p.add_argument("--shards", type=int, default=8)
    p.set_defaults(func=cmd_make_tfrecords)

    p = sub.add_parser(
        "pretrain", help="pre-train a backbone on single-object images (the ImageNet stand-in)",
        description="Trains a backbone to classify generated single-object images (class labels "
                    "only, a seed stream disjoint from the detection dataset's) and writes OUT "
                    "(.weights.h5, for model.backbone_weights) and OUT with .json.",
    )
    p.add_argument("--out", default="msad_tf/weights/resnet_tiny_w0.5_synth.weights.h5")
    p.add_argument("--backbone", default="resnet_tiny")
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--images", type=int, default=20000, help="training images (rendered once, in memory)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--object-scale", type=float, default=0.75, help="as the dataset's (make-dataset)")
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3, help="AdamW peak (5%% warm-up, cosine decay)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("train", help="train from a YAML config")
    _add_config_args(p)
    p.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"])
    p.add_argument("--quiet", action="store_true", help="one line per epoch instead of a progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("distill", help="train a student from a teacher run (low-res MSAD, or same resolution)")
    p.add_argument("--teacher", required=True, help="teacher run directory")
    p.add_argument("--student-input", choices=["low", "high"],
                   help="low: the student sees the stride-k subsample (MSAD, default); high: the same "
                        "high-res image as the teacher (same-resolution distillation, e.g. a larger "
                        "teacher into a smaller student; use --set train.teacher_target=high for a "
                        "single-resolution teacher)")
    _add_config_args(p)
    p.add_argument("--run-dir", help="student run directory (default TEACHER_student)")
    p.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"])
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("evaluate", help="COCO AP of a run")
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--split", default="val")
    p.add_argument("--resolutions", nargs="+", default=["high", "low"], choices=["high", "low"])
    p.add_argument("--max-images", type=int)
    p.add_argument("--sweep", nargs="+", type=float, metavar="FRACTION",
                   help="AP vs inference resolution: short sides FRACTION * L, read at the model's "
                        "low-resolution levels (writes resolution_sweep.csv/png), e.g. --sweep 0.5 0.75 1. "
                        "With eval.low_input subsample (default) the image is resized to FRACTION * H "
                        "and subsampled by k, so FRACTION 1 is exactly the evaluation at L; with "
                        "resize it is resized to FRACTION * L")
    from msad_tf.evaluation.corruptions import FAMILIES as corruption_families

    p.add_argument("--corruption", nargs="+", metavar="NAME",
                   choices=[*corruption_families, "all"],
                   help="robustness (COCO-C style): evaluate clean and with each original image "
                        "corrupted by NAME (" + ", ".join(corruption_families) + ", or all) at "
                        "--severity; prints AP per family and severity, mean and rPC; writes "
                        "RUN/eval_<split>_corruption_<NAME|all>.json and .csv")
    p.add_argument("--severity", nargs="+", type=int, choices=range(1, 6), metavar="1..5",
                   help="corruption severities (default 1 2 3 4 5)")
    p.add_argument("--checkpoints", action="store_true",
                   help="evaluate every epoch checkpoint (AP against training steps; "
                        "writes RUN/eval_<split>_checkpoints.json)")
    p.add_argument("--categories", default="class", choices=["class", "supercategory", "agnostic"],
                   help="score by class (COCO AP), with the classes of a supercategory merged, or "
                        "class-agnostic: separates locating from naming (writes "
                        "RUN/eval_<split>_<categories>.json)")
    p.add_argument("--json", help="where to write the metrics (default RUN/eval_<split>.json)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="detections on image files")
    p.add_argument("--run", required=True)
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="predictions")
    p.add_argument("--resolution", default="high", choices=["high", "low"])
    p.add_argument("--score-threshold", type=float, default=0.3)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("fusion-analysis", help="C-FF low-res weight vs object size (teacher runs)")
    p.add_argument("--run", required=True)
    p.add_argument("--split", default="val")
    p.add_argument("--out")
    p.add_argument("--max-images", type=int)
    p.set_defaults(func=cmd_fusion_analysis)

    p = sub.add_parser("anchors", help="how well RetinaNet anchors of each size cover a dataset's boxes",
                       description="For each model.anchor_size: the fraction of boxes whose best anchor "
                                   "reaches model.positive_iou, the mean best IoU and the anchors per box "
                                   "at that IoU, on the boxes as the pipeline resizes them.")
    _add_config_args(p, default_config="configs/reproduce.yaml")
    p.add_argument("--sizes", nargs="+", type=float, help="anchor sizes in strides (default: the config's)")
    p.add_argument("--split", default="train")
    p.add_argument("--json")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_anchors)

    p = sub.add_parser("benchmark", help="throughput benchmarks")
    bench = p.add_subparsers(dest="what", required=True)
    b = bench.add_parser("train", help="tf.data images/s and train-step images/s per mode")
    _add_config_args(b, default_config="configs/demo.yaml")
    b.add_argument("--modes", nargs="+",
                   default=list(TRAIN_MODES),
                   choices=list(TRAIN_MODES),
                   help="training modes to time (ratios are against 'single'; student = one "
                        "distillation step with a fusion teacher)")
    b.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the variants")
    speedups = ("fused_bn", "batch_heads", "fused_optimizer", "precision", "jit_compile")
    b.add_argument("--speedups", nargs="*", default=list(speedups), choices=list(speedups),
                   help="speed-ups to switch one at a time (besides 'default' and 'before')")
    b.add_argument("--compare", nargs="+", default=[], metavar="SECTION.KEY=VALUE",
                   help="config overrides timed as extra variants of every mode (also with --threads), "
                        "with their step time and images/s over the default's, e.g. --compare "
                        "model.arch=retinanet or train.batch_size=16 (timed on a batch of that size)")
    b.add_argument("--losses", nargs="+", default=[], metavar="LOSS",
                   help="distillation losses timed as extra variants of the student mode, with their "
                        "step time over the default loss's, e.g. --losses skd fgfi")
    b.add_argument("--processes", nargs="+", type=int,
                   help="instead: throughput of P runs at once in separate processes, e.g. --processes 1 2 "
                        "(what --jobs of the demo and of msad reproduce uses), ratios against the first P")
    b.add_argument("--threads", action="store_true",
                   help="instead: the step as configured and before the speed-ups under TensorFlow's thread "
                        "pools and under msad's (one thread per op on a small CPU, msad_tf/cpu_threads.py), "
                        "each in its own process, ratios against TensorFlow's pools before the speed-ups")
    b.add_argument("--profile", metavar="TRACE_DIR",
                   help="instead: trace --steps steps of each mode with TensorFlow's profiler into TRACE_DIR/<mode> "
                        "and print where the step's CPU time goes (op self-times by op type and by model part)")
    b.add_argument("--json")
    b.set_defaults(func=cmd_benchmark)
    b = bench.add_parser("data", help="training-pipeline images/s per num_parallel_calls, folder and TFRecords")
    _add_config_args(b, default_config="configs/demo.yaml")
    b.add_argument("--parallel-calls", nargs="+", default=["1", "2", "4", "autotune"],
                   help="num_parallel_calls values (ratios are against 1)")
    b.add_argument("--sources", nargs="+", default=["folder", "tfrecord"], choices=["folder", "tfrecord"])
    b.add_argument("--batches", type=int, default=30, help="timed batches per pipeline and round")
    b.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    b.add_argument("--shards", type=int, default=8, help="TFRecord shards written when data.train_tfrecords is unset")
    b.add_argument("--json")
    b.set_defaults(func=cmd_benchmark_data)
    from msad_tf.export import add_benchmark_infer_parser, add_export_parser

    add_benchmark_infer_parser(bench)
    add_export_parser(sub)

    p = sub.add_parser("demo", help="the main job on the embedded dataset")
    _add_config_args(p, default_config="configs/demo.yaml")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--data", default="data/msad_synth128")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.add_argument("--jobs", type=int, default=2, help=_JOBS_HELP)
    p.add_argument("--runs", nargs="+", metavar="RUN", default=list(DEFAULT_RUNS),
                   choices=[r[0] for r in DEMO_RUNS] + ["all"],
                   help=f"the runs to train and evaluate (default: {' '.join(DEFAULT_RUNS)}: those the claims "
                        "read; 'all' adds the single-scale baseline, about a third more training time; a student "
                        "brings its teacher)")
    p.add_argument("--plateau", action="store_true",
                   help="then train every run again at twice its steps (OUT/plateau; students from the demo's own "
                        "teacher) and write OUT/plateau.{json,md}: each row's AP at 1x and 2x, at its plateau when "
                        "within 10%%")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ablation", help="ablation suites (paper Tables 1-3) at demo scale")
    _add_config_args(p, default_config="configs/demo.yaml")
    p.add_argument("suite", nargs="+", choices=["teacher", "student", "budget", "equal", "k4", "seeds"],
                   help="teacher: aligned + fusion variants; student: distillation losses, teacher "
                        "targets, no-KD control; budget: vanilla vs aligned at 2x steps; equal: teacher + student vs vanilla at equal total steps; k4: teacher and student with k = 4; seeds: seed-1 repeats (run-to-run spread)")
    p.add_argument("--out", default="runs/demo", help="run directory shared with the demo (runs are reused)")
    p.add_argument("--data", default="data/msad_synth128")
    p.add_argument("--only", nargs="+", help="run names of the suite to do")
    p.add_argument("--force", action="store_true", help="retrain runs that already finished")
    p.set_defaults(func=cmd_ablation)

    p = sub.add_parser(
        "reproduce",
        help="the paper's tables (1, 2a-c, 3a, 4) and claims at a converged budget with seeds; resumable",
        description="Trains (or reuses, or resumes) every run in OUT, evaluates each once (cached), "
                    "and writes OUT/reproduce.{json,md}, OUT/reproduce_curves.png and "
                    "OUT/reproduce_claims.png. Run it again after an interruption to continue.",
    )
    _add_config_args(p, default_config="configs/reproduce.yaml")
    p.add_argument("--out", help="run directory (runs are reused; default runs/reproduce for "
                                 "configs/reproduce.yaml, runs/reproduce_NAME for configs/NAME.yaml)")
    p.add_argument("--data", default="data/msad_synth128",
                   help="the embedded dataset at 128 px, objects 0.75x (generated when missing)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--no-variants", action="store_true", help="skip the seed-0 variant rows (Tables 2, 2c, 3a)")
    p.add_argument("--no-plateau", action="store_true", help="skip the 2x-budget plateau runs")
    p.add_argument("--no-curves", action="store_true", help="skip AP of the epoch checkpoints")
    p.add_argument("--jobs", type=int, default=2, help=_JOBS_HELP)
    p.add_argument("--no-extensions", action="store_true",
                   help="skip same-resolution SKD (3 seeds), the SKD paper's Fig. 7 and RetinaNet's Table 4")
    p.add_argument("--keep",
                   help="where each finished run's evaluations and history are copied (kept in the "
                        "repository; the report reads them when OUT lacks a run; default "
                        "docs/results/reproduce_runs for configs/reproduce.yaml, "
                        "docs/results/reproduce_NAME_runs for configs/NAME.yaml); '' for nowhere")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report of the runs finished so far")
    from msad_tf.reproduce import TABLES

    p.add_argument("--tables", nargs="+", metavar="TABLE",
                   help="only the runs of these tables and the teachers they need "
                        f"({', '.join(name for name, _ in TABLES)}); the report then shows only them")
    p.add_argument("--runs", nargs="+", metavar="RUN",
                   help="only these runs (names without the _sN seed suffix, e.g. student_skd "
                        "student_skd_na) and the teachers they need; with --tables, the runs of either")
    p.set_defaults(func=cmd_reproduce)
    return parser


def start_tensorflow(verbose: bool = False) -> None:
    """TensorFlow as every command starts it: thread pools set (``cpu_threads``), and unless
    ``verbose`` its native start-up lines held back. With TF_CONFIG set (a multi-worker
    worker) the runtime is left unstarted, for the strategy to configure its collectives."""
    if verbose:
        from msad_tf.cpu_threads import configure_threads

        configure_threads()
    else:
        from msad_tf.native_logs import load_tensorflow_quietly

        load_tensorflow_quietly(initialize="TF_CONFIG" not in os.environ)


def main(argv=None):
    args = build_parser().parse_args(argv)
    start_tensorflow(args.verbose)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        for backend in ("tensorflow", "absl"):
            logging.getLogger(backend).setLevel(logging.WARNING)
    from msad_tf.config import ConfigError

    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if args.verbose:
            raise
        print(f"msad {args.command}: error: {err}", file=sys.stderr)
        sys.exit(2)
    except FloatingPointError as err:
        if args.verbose:
            raise
        print(f"msad {args.command}: training diverged: {err}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
