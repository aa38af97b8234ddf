"""The main job on the embedded dataset: the paper's comparison at demo scale.

Generates the synthetic dataset when missing, trains each of its runs (``DEFAULT_RUNS`` unless told:
vanilla multi-scale, the fusion teacher and its two students; single-scale on request; each mode
with its budget from the config's ``train.epochs_scale``), evaluates each at high (H) and low (L = H /
k) resolution with COCOeval, and prints one AP table (also written to OUT/results.json and
OUT/results.md). With ``jobs`` > 1 each run is evaluated in its own training process, while the
other runs train, into the run's evaluation cache (the one ``msad reproduce`` keeps). Finished runs
are reused unless ``force``. When the student is among the runs,
the demo ends with its deployment: the student exported at L as a SavedModel and a float TFLite
model in OUT/export/student (the ``msad export`` layout), and the inference benchmark of the
student at L against the same network at H (``msad benchmark infer``, shortened), printed and
written to OUT/benchmark_infer.json and OUT/results.md.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from msad_tf.config import load_config

DEMO_RUNS = (
    ("single", "single-scale", ["train.mode=single"], ("high", "low")),
    ("vanilla", "vanilla multi-scale", ["train.mode=vanilla_multiscale"], ("high", "low")),
    ("teacher", "fusion teacher", ["train.mode=teacher"], ("high", "low")),
    ("student_no_kd", "student without KD", ["train.mode=student", "train.teacher_run={out}/teacher", "train.gamma=0"],
     ("low",)),
    ("student", "MSAD student", ["train.mode=student", "train.teacher_run={out}/teacher"], ("low",)),
)
STUDENT_RUN = "student"
#: The runs ``msad demo`` trains unless told otherwise: those its claims read. Single-scale (the
#: paper's Table 1 baseline, ``msad demo --runs`` adds it; ``msad reproduce`` trains it on 3 seeds)
#: would add about a third to the training time and break the 15-minute budget of ``make demo``.
DEFAULT_RUNS = ("vanilla", "teacher", "student_no_kd", "student")
# The demo's deployment step stays short (about a minute on 2 cores): float TFLite only, fewer
# timed calls; `msad benchmark infer` is the thorough version.
DEMO_EXPORT = {"quantizations": ("none",), "warmup": 3, "repeats": 20, "num_threads": (1, 2)}
#: ``msad demo --plateau``: where the twice-as-long twins train (under OUT), and how close (relative)
#: a twin's AP must be to its run's for the run to count as trained to its plateau.
PLATEAU_DIR = "plateau"
PLATEAU_TOLERANCE = 0.10


def select_runs(names=DEFAULT_RUNS) -> tuple:
    """The entries of ``DEMO_RUNS`` named in ``names`` ("all": every one), in table order; a
    student brings its teacher."""
    known = [run[0] for run in DEMO_RUNS]
    if "all" in names:
        return DEMO_RUNS
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(f"unknown demo run(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    wanted = set(names)
    for name, _, run_overrides, _ in DEMO_RUNS:
        if name in wanted:
            wanted.update(o.split("{out}/", 1)[1] for o in run_overrides if o.startswith("train.teacher_run={out}/"))
    return tuple(run for run in DEMO_RUNS if run[0] in wanted)


def _row_label(label, resolution, branch) -> str:
    tag = "H" if resolution == "high" else "L"
    if branch == "fused":
        return f"{label} (H&L fused)"
    if branch in ("high", "low"):
        return f"{label}, {branch}-res branch @{tag}"
    return f"{label} @{tag}"


def evaluate_run(label, run_dir, dataset, resolutions) -> tuple[dict, dict]:
    """({table row: metrics}, {"resolution/branch": metrics}) of a finished run at ``resolutions``
    (a teacher: fused and its H branch at H, its L branch at L), from the run's evaluation cache
    (``msad_tf.reproduce.evaluate_cached``; evaluated into it when missing) and recorded in its
    metrics.json."""
    from msad_tf.reproduce import evaluate_cached
    from msad_tf.resolution import branches_for
    from msad_tf.training import runs

    _, model, _, _ = runs.load_run(run_dir)
    evals = [(resolution, branch) for resolution in resolutions for _, branch in branches_for(model, resolution)]
    keyed = evaluate_cached(Path(run_dir), evals, dataset, model=model)
    rows = {_row_label(label, r, b): keyed[f"{r}/{b or '-'}"] for r, b in evals}
    for row, metrics in rows.items():
        runs.update_metrics(run_dir, row, metrics)
    return rows, keyed


def _forget_evaluations(run_dir: Path) -> None:
    """Before a run (re)trains: its cached evaluations are of weights about to be replaced."""
    from msad_tf.reproduce import EVAL_CACHE

    (Path(run_dir) / EVAL_CACHE).unlink(missing_ok=True)


def demo_claims(by_run: dict) -> list[dict]:
    """The reproduction's claims read on the demo's single-seed runs (no seed spread: a claim
    holds when its margin is positive). Without an ``aligned`` run, the aligned rows are the
    teacher's own H and L branches (aligned multi-scale training plus fusion)."""
    from msad_tf.reproduce import claims_from

    rows = {(name, 0): metrics for name, metrics in by_run.items()}
    if "aligned" not in by_run and "teacher" in by_run:
        teacher = by_run["teacher"]
        rows[("aligned", 0)] = {k.replace("/low", "/-").replace("/high", "/-"): v for k, v in teacher.items()
                                if k in ("high/high", "low/low")}
    return claims_from(rows, (0,))


def export_and_benchmark(run_dir, out, name: str = STUDENT_RUN, **benchmark_args) -> tuple[dict, str]:
    """Exports ``run_dir`` at its deployment resolution to ``OUT/export/NAME`` (SavedModel
    ``1/`` and ``tflite/``) and benchmarks it at L against the same network at H; writes
    ``OUT/benchmark_infer.json``. Returns (result, table text)."""
    from msad_tf.export.benchmark_infer import (
        benchmark_infer,
        format_benchmark,
        write_json,
    )

    args = dict(DEMO_EXPORT, **benchmark_args)
    result = benchmark_infer(run_dir, export_out=Path(out) / "export", export_name=name,
                             progress=False, **args)
    write_json(Path(out) / "benchmark_infer.json", result)
    return result, format_benchmark(result)


def _values(values) -> str:
    """'400' for one value, '400 / 800 / 1600' when the runs of a table differ."""
    return " / ".join(str(v) for v in sorted(values))


def _train_run(config_path, overrides, run_dir, label=None, resolutions=()) -> None:
    """Trains one run, then evaluates it at ``resolutions`` into its evaluation cache: in a
    process of its own (``jobs`` > 1) the evaluation overlaps the other runs' training."""
    from msad_tf.training.train import load_split, train

    config = load_config(config_path, overrides)
    _forget_evaluations(run_dir)
    train(config, run_dir, progress=False)
    if resolutions:
        evaluate_run(label, run_dir, load_split(config, config.data.val_split), resolutions)


def _reusable(run_dir: Path, config) -> bool:
    """Whether ``run_dir`` holds this config's finished run. A run trained with another config
    (e.g. after the demo's config changed) is moved aside to ``<run>.previous[N]``, not lost, and
    trained again."""
    import shutil

    from msad_tf.config import ConfigError
    from msad_tf.training import runs

    try:
        return runs.is_finished(run_dir, config)
    except ConfigError as error:
        aside = run_dir.with_name(run_dir.name + ".previous")
        count = 1
        while aside.exists():
            count += 1
            aside = run_dir.with_name(f"{run_dir.name}.previous{count}")
        shutil.move(str(run_dir), str(aside))
        print(f"== {run_dir.name}: {error}; moved to {aside}, training it again", flush=True)
        return False


def _train_in_processes(config_path, base, runs_to_do, out: Path, force: bool, jobs: int) -> dict:
    """Trains the runs of ``runs_to_do`` that need it, ``jobs`` at a time (``training.parallel``),
    teachers first (the students wait for them: the longest chain), each student once its
    teacher's weights exist, students that distil before the no-KD controls (gamma 0: the teacher
    is not run, the shortest runs, last to keep the tail short). Returns {name: seconds}."""
    from msad_tf.training import runs
    from msad_tf.training.parallel import Task, run_in_processes

    tasks, without_kd = [], set()
    for name, label, run_overrides, resolutions in runs_to_do:
        run_dir = out / name
        overrides = base + [o.format(out=out) for o in run_overrides]
        config = load_config(config_path, overrides)
        if not force and _reusable(run_dir, config):
            continue
        if config.train.mode == "student" and config.train.gamma == 0:
            without_kd.add(name)
        teacher = next((Path(o.split("=", 1)[1]) for o in overrides if o.startswith("train.teacher_run=")), None)
        ready = (lambda path: lambda: path is None or (path / runs.WEIGHTS_FILE).is_file())(teacher)
        trained_here = teacher is not None and teacher.parent == out
        tasks.append(Task(name, _train_run, (str(config_path), overrides, run_dir, label, resolutions),
                          log=out / f"{name}.log",
                          needs=teacher.name if trained_here else None, ready=ready))
        if force and run_dir.exists():
            (run_dir / runs.WEIGHTS_FILE).unlink(missing_ok=True)
    needed = {task.needs for task in tasks}
    tasks.sort(key=lambda task: (task.key not in needed, task.key in without_kd))
    seconds = {}
    codes = run_in_processes(tasks, jobs, on_done=lambda key, code, took: seconds.__setitem__(key, took))
    failed = [key for key, code in codes.items() if code != 0]
    if failed:
        raise RuntimeError(f"training failed for {failed}: see {', '.join(str(out / f'{k}.log') for k in failed)}")
    return seconds


def twice_runs(runs_to_do, out, config_path, base=()) -> tuple:
    """``runs_to_do`` at twice the epochs, the LR decay epochs doubled (warm-up and KD ramp are
    fractions of the run; ``train.epochs_scale`` then gives each mode twice its own budget). A
    student keeps the demo's own teacher (OUT/teacher), so that only its own steps change."""
    from msad_tf.reproduce import twice_decay

    config = load_config(config_path, list(base), scale=False)
    twice = [f"train.epochs={2 * config.train.epochs}",
             f"train.lr_decay_epochs={twice_decay(config.train.lr_decay_epochs)}"]
    return tuple((name, label, [o.replace("{out}", str(out)) for o in run_overrides] + twice, resolutions)
                 for name, label, run_overrides, resolutions in runs_to_do)


def plateau_rows(table: dict, twice_table: dict, tolerance: float = PLATEAU_TOLERANCE) -> list[dict]:
    """Per table row: AP at the run's steps, AP of its twin at twice the steps, the relative
    change, and whether it is within ``tolerance`` (the run is at its plateau). A run at AP 0 has
    no relative change (None) and is not at a plateau."""
    rows = []
    for row, metrics in table.items():
        if row not in twice_table:
            continue
        ap, ap_2x = metrics["AP"], twice_table[row]["AP"]
        change = (ap_2x - ap) / ap if ap > 0 else None
        rows.append({"row": row, "AP": ap, "AP_2x": ap_2x, "change": change,
                     "plateau": change is not None and abs(change) <= tolerance})
    return rows


def format_plateau(rows: list[dict], steps: str, tolerance: float = PLATEAU_TOLERANCE) -> str:
    lines = [f"Plateau: each model at {steps} steps against its twin at twice the steps "
             f"(at its plateau when AP changes by at most {tolerance:.0%})",
             f"{'row':<42} {'AP':>7} {'AP 2x':>7} {'change':>8}  plateau"]
    for r in rows:
        change = "n/a" if r["change"] is None else f"{r['change']:+.1%}"
        lines.append(f"{r['row']:<42} {r['AP']:7.2f} {r['AP_2x']:7.2f} {change:>8}  "
                     f"{'yes' if r['plateau'] else 'no'}")
    held = sum(r["plateau"] for r in rows)
    lines.append(f"{held} of {len(rows)} rows at their plateau")
    return "\n".join(lines)


def run_demo(config_path="configs/demo.yaml", out="runs/demo", data_root="data/msad_synth128",
             overrides=None, force=False, runs_to_do=None, results_name="results", title=None,
             export_student: bool = True, jobs: int = 1, plateau: bool = False):
    """Trains (or reuses) and evaluates ``runs_to_do`` (default ``select_runs()``); prints and
    writes the AP table to OUT/<results_name>.{json,md}. ``export_student``: when a run named ``student`` is among
    them, end with its export and inference benchmark (``export_and_benchmark``). ``jobs``:
    runs trained at once, each in its own process with its log in OUT/<run>.log
    (``msad_tf.training.parallel``). ``plateau``: then train each run's twin at twice the steps
    in OUT/plateau (``twice_runs``) and write their comparison to OUT/plateau.{json,md}
    (``plateau_rows``). Returns {row: metrics}."""
    from msad_tf.data.synthetic import make_synthetic_dataset
    from msad_tf.evaluation.coco_eval import format_table
    from msad_tf.reproduce import DATASET
    from msad_tf.training.train import load_split

    start = time.time()
    runs_to_do = select_runs() if runs_to_do is None else runs_to_do
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(data_root, "annotations", "instances_val.json").is_file():
        print(f"== generating the embedded dataset in {data_root}")
        make_synthetic_dataset(data_root, **DATASET)
    base = [f"data.root={data_root}"] + list(overrides or [])
    table = {}
    by_run = {}
    timings = {}
    steps, low_sides = set(), set()
    val = None
    if jobs > 1:
        print(f"== training {len(runs_to_do)} runs, {jobs} at a time (logs in {out}/<run>.log)", flush=True)
        timings = _train_in_processes(config_path, base, runs_to_do, out, force, jobs)
        force = False
    for name, label, run_overrides, resolutions in runs_to_do:
        run_overrides = base + [o.format(out=out) for o in run_overrides]
        config = load_config(config_path, run_overrides)
        run_dir = out / name
        steps.add(config.train.epochs * config.train.steps_per_epoch)
        low_sides.add(config.low_resolution()[0])
        if force or not _reusable(run_dir, config):
            print(f"== training {label} ({config.train.epochs} epochs x {config.train.steps_per_epoch} steps)",
                  flush=True)
            t = time.time()
            _train_run(config_path, run_overrides, run_dir)
            timings[name] = time.time() - t
        if val is None:
            val = load_split(config, config.data.val_split)
        print(f"== evaluating {label} (rows cached by its training process are read)", flush=True)
        rows, by_run[name] = evaluate_run(label, run_dir, val, resolutions)
        table.update(rows)
    text = format_table(table, title=(title or "COCO metrics") + f" on {data_root} (val), "
                        f"H = {config.data.short_side}px, L = {_values(low_sides)}px, "
                        f"{_values(steps)} steps per run")
    claims = demo_claims(by_run) if results_name == "results" else []
    if claims:
        text += "\n\nThe paper's claims on these single-seed runs (msad reproduce reads them over 3 seeds):\n"
        text += "\n".join(f"  {c['text']}: {'holds' if c['holds'] else 'does not hold'} "
                          f"(difference {c['difference']:+.2f} AP, threshold {c['threshold']:+.1f})" for c in claims)
    print()
    print(text)
    (out / f"{results_name}.json").write_text(json.dumps({"table": table, "claims": claims, "train_seconds": timings},
                                                         indent=2))
    (out / f"{results_name}.md").write_text("```\n" + text + "\n```\n")
    if export_student and any(run[0] == STUDENT_RUN for run in runs_to_do):
        print(f"\n== exporting the student to {out}/export/{STUDENT_RUN}, timing it at L and H",
              flush=True)
        t = time.time()
        _, bench = export_and_benchmark(out / STUDENT_RUN, out)
        print()
        print(bench)
        with open(out / f"{results_name}.md", "a") as f:
            f.write("\nDeployment: the student at L against the same network at H "
                    "(`msad benchmark infer`)\n\n```\n" + bench + "\n```\n")
        print(f"(export and benchmark: {time.time() - t:.0f} s)")
    print(f"\nfinished in {time.time() - start:.0f} s; results in {out}/{results_name}.md")
    if plateau:
        print(f"\n== the plateau check: every run again at twice its steps in {out / PLATEAU_DIR}", flush=True)
        twins = twice_runs(runs_to_do, out, config_path, base)
        twice_table = run_demo(config_path, out / PLATEAU_DIR, data_root, overrides, force, twins,
                               results_name="results_2x", title=(title or "COCO metrics") + ", twice the steps",
                               export_student=False, jobs=jobs)
        rows = plateau_rows(table, twice_table)
        text = format_plateau(rows, _values(steps))
        print()
        print(text)
        (out / "plateau.json").write_text(json.dumps({"rows": rows, "tolerance": PLATEAU_TOLERANCE,
                                                      "steps": sorted(steps)}, indent=2))
        (out / "plateau.md").write_text("```\n" + text + "\n```\n")
    return table
