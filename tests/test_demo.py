"""msad demo with its runs trained two at a time in separate processes."""
import json

import pytest


@pytest.mark.slow
def test_demo_trains_its_runs_in_parallel_processes(tiny_data, tmp_path):
    """The default runs (no single-scale), two at a time; each evaluated in its own process
    while the others train: the teacher's rows are cached before its students finish."""
    from conftest import write_tiny_yaml
    from msad_tf.demo import DEFAULT_RUNS, run_demo
    from msad_tf.reproduce import EVAL_CACHE

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    out = tmp_path / "demo"
    table = run_demo(path, out, str(tiny_data), export_student=False, jobs=2)
    assert "MSAD student @L" in table and "vanilla multi-scale @L" in table and "single-scale @H" not in table
    assert not (out / "single").exists()
    teacher_done = (out / "teacher" / "model.weights.h5").stat().st_mtime
    for name in DEFAULT_RUNS:
        assert (out / f"{name}.log").is_file() and (out / name / "model.weights.h5").is_file()
        assert (out / name / EVAL_CACHE).is_file()
    for student in ("student", "student_no_kd"):
        assert (out / student / "config.yaml").stat().st_mtime >= teacher_done
    assert (out / "teacher" / EVAL_CACHE).stat().st_mtime < (out / "student" / "model.weights.h5").stat().st_mtime
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["train_seconds"]) == set(DEFAULT_RUNS)


def test_demo_in_one_process_trains_evaluates_into_the_cache_and_retrains_on_force(tiny_data, tmp_path):
    """jobs=1: each run trains in this process (``_train_run``), its rows cached; ``force``
    retrains it and its cached rows are of the new weights."""
    from conftest import write_tiny_yaml
    from msad_tf.demo import DEMO_RUNS, run_demo
    from msad_tf.reproduce import EVAL_CACHE

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    out = tmp_path / "demo"
    single = tuple(run for run in DEMO_RUNS if run[0] == "single")
    table = run_demo(path, out, str(tiny_data), runs_to_do=single, export_student=False)
    assert set(table) == {"single-scale @H", "single-scale @L"}
    cache = out / "single" / EVAL_CACHE
    weights = out / "single" / "model.weights.h5"
    assert set(json.loads(cache.read_text())) == {"final/high/-/subsample", "final/low/-/subsample"}
    first = weights.stat().st_mtime_ns
    cache.write_text(json.dumps({"final/high/-/subsample": {"AP": -1.0}}))
    assert run_demo(path, out, str(tiny_data), runs_to_do=single, export_student=False)["single-scale @H"] == {
        "AP": -1.0}
    again = run_demo(path, out, str(tiny_data), runs_to_do=single, export_student=False, force=True)
    assert weights.stat().st_mtime_ns > first and again["single-scale @H"]["AP"] >= 0
    assert set(json.loads(cache.read_text())) == {"final/high/-/subsample", "final/low/-/subsample"}


def test_demo_runs_default_to_those_the_claims_read_and_a_student_brings_its_teacher():
    from msad_tf.cli import build_parser
    from msad_tf.demo import DEFAULT_RUNS, DEMO_RUNS, select_runs

    names = lambda runs: [run[0] for run in runs]  # noqa: E731
    assert names(select_runs()) == ["vanilla", "teacher", "student_no_kd", "student"] == list(DEFAULT_RUNS)
    assert select_runs(["all"]) == DEMO_RUNS and names(DEMO_RUNS)[0] == "single"
    assert names(select_runs(["student"])) == ["teacher", "student"]
    assert names(select_runs(["student_no_kd", "single"])) == ["single", "teacher", "student_no_kd"]
    with pytest.raises(ValueError, match="unknown demo run.*aligned"):
        select_runs(["aligned"])
    assert build_parser().parse_args(["demo"]).runs == list(DEFAULT_RUNS)
    assert build_parser().parse_args(["demo", "--runs", "all"]).runs == ["all"]


def test_a_demo_run_is_evaluated_once_into_its_cache_until_it_trains_again(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from msad_tf import demo
    from msad_tf.config import load_config
    from msad_tf.evaluation import evaluator
    from msad_tf.training import runs

    run = tmp_path / "teacher"
    run.mkdir()
    load_config(None, []).save(run / runs.CONFIG_FILE)
    monkeypatch.setattr(runs, "load_run", lambda run_dir, weights=None: (None, SimpleNamespace(multi_branch=True),
                                                                          None, None))
    calls = []

    def evaluate_model(model, dataset, config, resolution, branch=None, progress=True):
        calls.append((resolution, branch))
        return {"AP": float(len(calls))}

    monkeypatch.setattr(evaluator, "evaluate_model", evaluate_model)
    rows, keyed = demo.evaluate_run("fusion teacher", run, None, ("high", "low"))
    assert calls == [("high", "fused"), ("high", "high"), ("low", "low")]
    assert rows == {"fusion teacher (H&L fused)": {"AP": 1.0}, "fusion teacher, high-res branch @H": {"AP": 2.0},
                    "fusion teacher, low-res branch @L": {"AP": 3.0}}
    assert keyed == {"high/fused": {"AP": 1.0}, "high/high": {"AP": 2.0}, "low/low": {"AP": 3.0}}
    assert demo.evaluate_run("fusion teacher", run, None, ("high", "low")) == (rows, keyed) and len(calls) == 3
    assert json.loads((run / runs.METRICS_FILE).read_text())["fusion teacher, low-res branch @L"] == {"AP": 3.0}
    demo._forget_evaluations(run)
    assert demo.evaluate_run("fusion teacher", run, None, ("low",))[0] == {"fusion teacher, low-res branch @L":
                                                                          {"AP": 4.0}}


def test_a_demo_run_of_another_config_is_moved_aside_and_retrained(tmp_path):
    from msad_tf.config import load_config
    from msad_tf.demo import _reusable
    from msad_tf.training import runs

    run = tmp_path / "single"
    run.mkdir()
    old = load_config(None, ["train.base_lr=0.1"])
    old.save(run / runs.CONFIG_FILE)
    (run / runs.WEIGHTS_FILE).write_bytes(b"")
    assert _reusable(run, old)
    new = load_config(None, ["train.base_lr=0.2"])
    assert not _reusable(run, new)
    assert not run.exists() and (tmp_path / "single.previous" / runs.WEIGHTS_FILE).is_file()
    run.mkdir()
    old.save(run / runs.CONFIG_FILE)
    (run / runs.WEIGHTS_FILE).write_bytes(b"")
    assert not _reusable(run, new) and (tmp_path / "single.previous2").is_dir()


def test_twice_runs_double_the_schedule_and_keep_the_demos_teacher(tmp_path):
    from msad_tf.config import load_config
    from msad_tf.demo import DEMO_RUNS, twice_runs

    twins = dict((name, overrides) for name, _, overrides, _ in twice_runs(DEMO_RUNS, tmp_path / "demo",
                                                                            "configs/demo.yaml"))
    assert set(twins) == {name for name, *_ in DEMO_RUNS}
    runs = {name: overrides for name, _, overrides, _ in DEMO_RUNS}
    epochs = set()
    for name, overrides in twins.items():
        config = load_config("configs/demo.yaml", [o.format(out=tmp_path / "demo") for o in runs[name]])
        twin = load_config("configs/demo.yaml", overrides)
        epochs.add(config.train.epochs)
        assert twin.train.epochs == 2 * config.train.epochs
        assert twin.train.lr_decay_epochs == [2 * e for e in config.train.lr_decay_epochs]
        assert twin.warmup_steps(100) == 2 * config.warmup_steps(100)
    assert epochs == {15, 10, 5}  # train.epochs_scale: single-scale and vanilla, the teacher, the students
    assert f"train.teacher_run={tmp_path / 'demo'}/teacher" in twins["student"]


def test_plateau_rows_compare_each_row_with_its_twin():
    from msad_tf.demo import format_plateau, plateau_rows

    table = {"a @H": {"AP": 40.0}, "b @L": {"AP": 30.0}, "c @L": {"AP": 20.0}, "only 1x": {"AP": 5.0},
             "dead @L": {"AP": 0.0}}
    twins = {"a @H": {"AP": 43.0}, "b @L": {"AP": 34.0}, "c @L": {"AP": 19.0}, "dead @L": {"AP": 0.0}}
    rows = {r["row"]: r for r in plateau_rows(table, twins)}
    assert set(rows) == {"a @H", "b @L", "c @L", "dead @L"}
    assert rows["dead @L"]["change"] is None and not rows["dead @L"]["plateau"]
    json.dumps(list(rows.values()), allow_nan=False)
    assert rows["a @H"]["change"] == pytest.approx(0.075) and rows["a @H"]["plateau"]
    assert rows["b @L"]["change"] == pytest.approx(4 / 30) and not rows["b @L"]["plateau"]
    assert rows["c @L"]["change"] == pytest.approx(-0.05) and rows["c @L"]["plateau"]
    text = format_plateau(list(rows.values()), "1000")
    assert "2 of 4 rows at their plateau" in text and "n/a" in text


@pytest.mark.slow
def test_demo_plateau_trains_twins_from_the_demos_teacher(tiny_data, tmp_path):
    from conftest import write_tiny_yaml
    from msad_tf.config import load_config
    from msad_tf.demo import DEMO_RUNS, run_demo

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    out = tmp_path / "demo"
    runs_to_do = tuple(run for run in DEMO_RUNS if run[0] in ("teacher", "student"))
    run_demo(path, out, str(tiny_data), runs_to_do=runs_to_do, export_student=False, jobs=2, plateau=True)
    twin = load_config(out / "plateau" / "student" / "config.yaml")
    assert twin.train.epochs == 2 and twin.train.teacher_run == str(out / "teacher")
    saved = json.loads((out / "plateau.json").read_text())
    assert {r["row"] for r in saved["rows"]} == {"fusion teacher (H&L fused)", "fusion teacher, high-res branch @H",
                                                 "fusion teacher, low-res branch @L", "MSAD student @L"}
    assert (out / "plateau.md").is_file()


def test_demo_trains_teachers_first_and_the_no_kd_control_last(tmp_path, monkeypatch):
    """The students wait for the teacher; the no-KD control (it never runs the teacher, the
    shortest run) goes after the distilling student, so the two lanes end close together."""
    from msad_tf.demo import DEMO_RUNS, _train_in_processes
    from msad_tf.training import parallel

    started = []
    monkeypatch.setattr(parallel, "run_in_processes",
                        lambda tasks, jobs, on_done=None: started.extend(t.key for t in tasks) or {})
    _train_in_processes("configs/demo.yaml", [], DEMO_RUNS, tmp_path, force=False, jobs=2)
    assert started[0] == "teacher"
    assert started[-2:] == ["student", "student_no_kd"]
    assert set(started) == {name for name, *_ in DEMO_RUNS}
