"""msad reproduce: claim verdicts against the seed spread, run order, and a tiny end-to-end
reproduction that is resumed (runs and evaluations reused)."""
import json
import shutil

import numpy as np
import pytest

from msad_tf import reproduce


def test_claim_holds_only_beyond_two_standard_errors():
    a, b = [10.0, 10.2, 9.8], [8.0, 8.1, 7.9]
    c = reproduce._claim("x", "a above b", a, b)
    se = np.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
    assert c["difference"] == pytest.approx(2.0)
    assert c["se"] == pytest.approx(se)
    assert c["holds"] and c["verdict"] == "holds"
    noisy = reproduce._claim("x", "a above b", [10.0, 14.0, 6.0], [9.0, 9.5, 8.5])
    assert not noisy["holds"] and "within the seed spread" in noisy["verdict"]
    reverse = reproduce._claim("x", "b above a", b, a)
    assert not reverse["holds"] and reverse["verdict"] == "does not hold"


def test_one_seed_is_not_judged():
    c = reproduce._claim("x", "a above b", [10.0], [8.0])
    assert c["holds"] and not c["judged"] and c["verdict"] == "holds on one seed (no spread yet)"


def test_threshold_claims():
    student, vanilla_low, vanilla_high = [20.0, 20.1, 19.9], [16.0, 16.1, 15.9], [21.0, 21.1, 20.9]
    three_above = reproduce._claim("s", "", student, vanilla_low, margin=3.0)
    assert three_above["excess"] == pytest.approx(1.0) and three_above["holds"]
    four_above = reproduce._claim("s", "", student, vanilla_low, margin=4.5)
    assert not four_above["holds"]
    within = reproduce._claim("s", "", student, vanilla_high, margin=1.5, higher=False)
    assert within["excess"] == pytest.approx(0.5) and within["holds"]
    paired = reproduce._claim("p", "", [42.0, 43.0, 41.0], [41.5, 42.2, 40.6], paired=True)
    assert paired["difference"] == pytest.approx(0.5667, abs=1e-4)
    assert paired["se"] == pytest.approx(np.std([0.5, 0.8, 0.4], ddof=1) / np.sqrt(3))
    assert paired["holds"] and not reproduce._claim("u", "", [42.0, 43.0, 41.0], [41.5, 42.2, 40.6])["holds"]
    below = reproduce._claim("s", "", student, [23.0, 23.1, 22.9], margin=1.5, higher=False)
    assert below["excess"] == pytest.approx(-1.5) and not below["holds"]


def test_claims_from_rows_reads_the_right_rows():
    rows = {}
    for seed in (0, 1, 2):
        ap = lambda v: {"AP": v + 0.1 * seed}  # noqa: E731
        rows[("vanilla", seed)] = {"high/-": ap(30), "low/-": ap(20)}
        rows[("aligned", seed)] = {"high/-": ap(29), "low/-": ap(22)}
        rows[("teacher", seed)] = {"high/fused": ap(31), "high/high": ap(30), "low/low": ap(22)}
        rows[("student", seed)] = {"low/-": ap(24)}
        rows[("student_no_kd", seed)] = {"low/-": ap(23.5)}
        rows[("vanilla_equal", seed)] = {"high/-": ap(33), "low/-": ap(23)}
        rows[("student_mse", seed)] = {"low/-": ap(24.75)}
    claims = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}
    assert claims["student_mse_above_student"]["difference"] == pytest.approx(0.75)
    assert claims["student_mse_above_student"]["se"] == pytest.approx(0.0, abs=1e-9)
    assert claims["student_mse_above_student"]["holds"]
    assert "student_tau1.0_above_student" not in claims
    rows[("student_tau1.0", 0)] = {"low/-": {"AP": 25.0}}
    rows[("student_tau1.0", 1)] = {}
    rows[("student_tau1.0", 2)] = {"low/-": {"AP": 24.2}}
    tau = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}["student_tau1.0_above_student"]
    assert tau["a"] == [25.0, 24.2] and tau["b"] == pytest.approx([24.0, 24.2]) and tau["n"] == [2, 2]
    assert claims["aligned_L_above_vanilla_L"]["difference"] == pytest.approx(2.0)
    assert claims["cff_fused_above_H_branch"]["difference"] == pytest.approx(1.0)
    assert claims["cff_fused_above_L_branch"]["difference"] == pytest.approx(9.0)
    assert claims["student_3AP_above_vanilla_L"]["excess"] == pytest.approx(1.0)
    assert claims["student_within_1.5_of_vanilla_H"]["excess"] == pytest.approx(-4.5)
    assert claims["student_above_no_kd"]["difference"] == pytest.approx(0.5)
    assert claims["student_above_equal_training_L"]["difference"] == pytest.approx(1.0)
    assert all(c["holds"] == (c["excess"] > 0) for c in claims.values())


def test_gap_closed_per_seed():
    rows = {("vanilla", 0): {"high/-": {"AP": 40.0}, "low/-": {"AP": 30.0}}, ("student", 0): {"low/-": {"AP": 34.0}},
            ("vanilla", 1): {"high/-": {"AP": 42.0}, "low/-": {"AP": 30.0}}, ("student", 1): {"low/-": {"AP": 36.0}},
            ("vanilla", 2): {"high/-": {"AP": 41.0}, "low/-": {"AP": 31.0}}}
    gap = reproduce.gap_closed(rows, (0, 1, 2))
    assert gap["fraction"]["values"] == pytest.approx([0.4, 0.5])
    assert gap["gap_AP"]["values"] == pytest.approx([10.0, 12.0])
    assert gap["paper_fraction"] == pytest.approx(3.4 / 4.6)
    assert gap["paper_gap_AP"] == pytest.approx(4.6)
    retina = reproduce.gap_closed(rows, (0,), arch="retinanet")
    assert retina["paper_fraction"] == pytest.approx(3.1 / 3.5)
    assert reproduce.gap_closed(rows, (2,)) is None
    rows[("vanilla", 0)] = {"high/-": {"AP": 0.0}, "low/-": {"AP": 0.0}}
    assert reproduce.gap_closed(rows, (0,)) is None
    assert reproduce.gap_closed(rows, (0, 1))["fraction"]["values"] == pytest.approx([0.5])


def test_a_report_curve_evaluates_nothing(tmp_path, monkeypatch):
    """The report (``cached_only``) reads only the cache: an epoch another process is still
    evaluating (a row missing) is left out, and no checkpoint is loaded."""
    from conftest import write_tiny_yaml
    from msad_tf.training import runs

    run_dir = tmp_path / "teacher_s0"
    (run_dir / "checkpoints").mkdir(parents=True)
    write_tiny_yaml(run_dir / runs.CONFIG_FILE)
    for epoch in (1, 2):
        (run_dir / "checkpoints" / f"epoch_{epoch:03d}.weights.h5").write_bytes(b"")
    evals = (("high", "fused"), ("low", "low"))
    cache = {reproduce._eval_key(r, b, "subsample", "epoch001"): {"AP": 10.0 + i} for i, (r, b) in enumerate(evals)}
    cache[reproduce._eval_key("high", "fused", "subsample", "epoch002")] = {"AP": 20.0}
    (run_dir / "reproduce_eval.json").write_text(json.dumps(cache))
    monkeypatch.setattr(runs, "load_run", lambda *a, **k: pytest.fail("a checkpoint was loaded"))
    points = reproduce._curve(run_dir, evals, None, steps_per_epoch=100, cached_only=True)
    assert points == [{"step": 100, "high/fused": 10.0, "low/low": 11.0}]


def test_run_order_puts_the_seeded_core_first():
    order = reproduce.all_runs()
    names = [f"{run.name}_s{seed}" for run, seed in order]
    assert names[:7] == [f"{n}_s0" for n in ("single", "vanilla", "aligned", "teacher", "student", "student_no_kd",
                                             "vanilla_equal")]
    assert names.index("vanilla_equal_s0") < names.index("single_2x_s0") < names.index("single_s1")
    assert names.index("student_s2") < names.index("teacher_sigmoid_s0")
    assert names.index("vanilla_equal_s2") < names.index("teacher_2x_s0")
    assert len(names) == len(set(names))
    teacher_of = {n: i for i, n in enumerate(names)}
    for run, seed in order:
        for o in run.overrides:
            if o.startswith("train.teacher_run="):
                teacher = o.split("/")[-1].format(seed=seed)
                assert teacher_of[teacher] < teacher_of[f"{run.name}_s{seed}"]



def test_leads_and_the_teachers_they_learn_from_run_on_every_seed():
    names = {f"{run.name}_s{seed}" for run, seed in reproduce.all_runs()}
    for lead in reproduce.LEADS:
        assert {f"{lead}_s{seed}" for seed in reproduce.SEEDS} <= names
    assert {"teacher_2x_s1", "teacher_2x_s2"} <= names
    assert "single_2x_s1" not in names and {"student_2x_s1", "student_no_kd_2x_s2"} <= names
    only = {f"{run.name}_s{seed}" for run, seed in reproduce.all_runs(runs=["student_mse_from_teacher_2x"])}
    assert only == {f"{n}_s{s}" for n in ("teacher_2x", "student_mse_from_teacher_2x") for s in reproduce.SEEDS}
    for baseline in {b for _, baselines in reproduce.LEADS.values() for b in baselines}:
        assert {f"{baseline}_s{seed}" for seed in reproduce.SEEDS} <= names


def test_a_lead_is_judged_against_its_own_baseline():
    rows = {}
    for seed, (base, lead) in enumerate(((44.0, 44.5), (43.0, 43.2), (43.5, 43.9))):
        rows[("student", seed)] = {"low/-": {"AP": 42.0}}
        rows[("student_from_teacher_2x", seed)] = {"low/-": {"AP": base}}
        rows[("student_mse_from_teacher_2x", seed)] = {"low/-": {"AP": lead}}
    claims = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}
    combined = claims["student_mse_from_teacher_2x_above_student_from_teacher_2x"]
    assert combined["difference"] == pytest.approx(1.1 / 3) and combined["paired"]
    assert combined["se"] == pytest.approx(np.std([0.5, 0.2, 0.4], ddof=1) / np.sqrt(3))
    assert "2x-trained teacher (paired" in combined["text"]
    assert claims["student_from_teacher_2x_above_student"]["difference"] == pytest.approx(1.5)
    assert "student_from_teacher_2x_above_student_no_kd_from_teacher_2x" not in claims
    for seed in (0, 1, 2):
        rows[("student_no_kd_from_teacher_2x", seed)] = {"low/-": {"AP": 43.0 + seed}}
        rows[("student_no_kd", seed)] = {"low/-": {"AP": 41.0}}
    claims = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}
    control = claims["student_from_teacher_2x_above_student_no_kd_from_teacher_2x"]
    assert control["b"] == [43.0, 44.0, 45.0] and control["difference"] == pytest.approx(-1.5 / 3)
    assert not control["holds"] and "above the student without KD from the 2x" in control["text"]
    assert claims["student_no_kd_from_teacher_2x_above_student_no_kd"]["difference"] == pytest.approx(3.0)
    for seed in (0, 1, 2):
        rows[("student_mse", seed)] = {"low/-": {"AP": 41.5 + seed}}
    claims = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}
    assert claims["student_mse_above_student_no_kd"]["difference"] == pytest.approx(1.5)
    assert claims["student_mse_above_student_no_kd"]["paired"]
    assert "mse loss above the no-KD control" in claims["student_mse_above_student_no_kd"]["text"]


@pytest.mark.slow
def test_tiny_reproduction_resumes(tiny_data, tmp_path, monkeypatch):
    """Two seeds of the core runs on the tiny dataset; a second call trains and evaluates
    nothing and gives the same file."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml")
    out, keep = tmp_path / "out", tmp_path / "keep"
    first = reproduce.run_reproduce(path, out, str(tiny_data), seeds=(0, 1), variants=False, plateau=False, extensions=False,
                                    progress=False, keep=keep)
    assert {c["claim"] for c in first["claims"]} >= {"aligned_L_above_vanilla_L", "student_above_no_kd"}
    assert (out / "reproduce_curves.png").is_file() and (out / "reproduce_claims.png").is_file()
    saved = json.loads((out / "reproduce.json").read_text())
    assert saved["table"]["vanilla_equal"]["steps"] == 2 * saved["table"]["vanilla"]["steps"]
    assert saved["table"]["student"]["rows"]["low/-"]["AP"]["n"] == 2

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr("msad_tf.training.train.train", fail)
    monkeypatch.setattr("msad_tf.evaluation.evaluator.evaluate_model", fail)
    second = reproduce.run_reproduce(path, out, str(tiny_data), seeds=(0, 1), variants=False, plateau=False, extensions=False,
                                     progress=False, keep=keep)
    assert json.dumps(second["claims"], sort_keys=True) == json.dumps(first["claims"], sort_keys=True)
    third = reproduce.run_reproduce(path, tmp_path / "elsewhere", str(tiny_data), seeds=(0, 1), variants=False,
                                    plateau=False, extensions=False, progress=False, keep=keep)
    assert json.dumps(third["claims"], sort_keys=True) == json.dumps(first["claims"], sort_keys=True)
    assert third["curves"] == first["curves"] and first["curves"]["student"]
    report = reproduce.run_reproduce(path, tmp_path / "report", str(tiny_data), seeds=(0, 1), variants=False,
                                     plateau=False, extensions=False, progress=False, keep=keep, report_only=True)
    assert json.dumps(report["claims"], sort_keys=True) == json.dumps(first["claims"], sort_keys=True)
    empty = reproduce.run_reproduce(path, tmp_path / "empty", str(tiny_data), seeds=(0, 1), variants=False,
                                    plateau=False, extensions=False, progress=False, keep=None, report_only=True)
    assert empty["table"] == {}


@pytest.mark.slow
def test_parallel_reproduction_trains_each_run_once_after_its_teacher(tiny_data, tmp_path, monkeypatch):
    """jobs=2: every core run is trained in its own process (its log in OUT), each student
    after its teacher's weights exist, and a second call with jobs=1 reuses all of them. With
    train.epochs_scale giving vanilla the teacher's + student's epochs, the equal-training
    control is vanilla itself: never trained, its rows vanilla's."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=2, lr_decay_epochs=(1.5,))
    scale = ["train.epochs_scale={vanilla_multiscale: 1.5, student: 0.5}"]
    out = tmp_path / "out"
    first = reproduce.run_reproduce(path, out, str(tiny_data), scale, seeds=(0,), variants=False, plateau=False,
                                    extensions=False, progress=False, keep=None, jobs=2)
    names = [run.name for run in reproduce.CORE]
    assert set(first["table"]) == set(names)
    for name in set(names) - {"vanilla_equal"}:
        assert (out / f"{name}_s0.log").is_file() and (out / f"{name}_s0" / "model.weights.h5").is_file()
    assert not (out / "vanilla_equal_s0").exists() and not (out / "vanilla_equal_s0.log").exists()
    assert json.dumps(first["table"]["vanilla_equal"]["rows"]) == json.dumps(first["table"]["vanilla"]["rows"])
    assert first["table"]["vanilla_equal"]["steps"] == first["table"]["vanilla"]["steps"] == 6
    teacher_done = (out / "teacher_s0" / "model.weights.h5").stat().st_mtime
    for student in ("student_s0", "student_no_kd_s0"):
        assert (out / student / "config.yaml").stat().st_mtime >= teacher_done

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained or evaluated again")

    monkeypatch.setattr("msad_tf.training.train.train", fail)
    monkeypatch.setattr("msad_tf.evaluation.evaluator.evaluate_model", fail)
    second = reproduce.run_reproduce(path, out, str(tiny_data), scale, seeds=(0,), variants=False, plateau=False,
                                     extensions=False, progress=False, keep=None)
    assert json.dumps(second["table"], sort_keys=True) == json.dumps(first["table"], sort_keys=True)


def test_extension_rows_follow_the_core_and_read_the_right_rows():
    names = [f"{run.name}_s{seed}" for run, seed in reproduce.all_runs()]
    assert {"student_mse_s2", "student_podnet_s2", "student_tau1.0_s2"} <= set(names) and "student_skd_s1" not in names
    assert names.index("student_2x_s0") < names.index("sr_student_s0") < names.index("teacher_sigmoid_s0")
    assert names.index("retina_teacher_s2") < names.index("retina_student_s2")
    assert names.index("single_2x_s0") < names.index("sr_student_skd_from_2x_s0")
    assert "sr_student_s0" not in [f"{r.name}_s{s}" for r, s in reproduce.all_runs(extensions=False)]
    rows = {}
    for seed in (0, 1, 2):
        rows[("sr_student", seed)] = {"high/-": {"AP": 40.0 + seed}}
        rows[("sr_student_skd", seed)] = {"high/-": {"AP": 42.0 + seed}}
        rows[("retina_vanilla", seed)] = {"high/-": {"AP": 30.0}, "low/-": {"AP": 20.0 + seed}}
        rows[("retina_student", seed)] = {"low/-": {"AP": 23.0 + seed}}
    claims = {c["claim"]: c for c in reproduce.claims_from(rows, (0, 1, 2))}
    assert claims["same_res_skd_above_alone"]["difference"] == pytest.approx(2.0)
    assert claims["retina_student_3AP_above_vanilla_L"]["difference"] == pytest.approx(3.0)
    assert claims["retina_student_3AP_above_vanilla_L"]["holds"] is False
    assert claims["retina_student_within_1.5_of_vanilla_H"]["difference"] == pytest.approx(-6.0)
    assert "same_res_fgfi_above_alone" not in claims
    assert reproduce.teacher_student_points(rows) is None
    rows[("single_quarter", 0)] = {"high/-": {"AP": 30.0}}
    rows[("sr_student_skd_from_quarter", 0)] = {"high/-": {"AP": 35.0}}
    rows[("single", 0)] = {"high/-": {"AP": 50.0}}
    rows[("single_2x", 0)] = {"high/-": {"AP": 55.0}}
    rows[("sr_student_skd_from_2x", 0)] = {"high/-": {"AP": 44.0}}
    fig7 = reproduce.teacher_student_points(rows)
    assert [p["student_AP"] for p in fig7["points"]] == [35.0, 42.0, 44.0]
    assert fig7["pearson_r"] == pytest.approx(np.corrcoef([30, 50, 55], [35, 42, 44])[0, 1])


@pytest.mark.slow
def test_tiny_extension_rows_train_and_evaluate(tiny_data, tmp_path):
    """Seed 0 of the same-resolution and RetinaNet rows on the tiny dataset (the shipped w0.25
    backbone in the small student), each evaluated where the report reads it."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    result = reproduce.run_reproduce(path, tmp_path / "out", str(tiny_data), seeds=(0,), variants=False,
                                     plateau=False, progress=False, keep=None)
    table = result["table"]
    for run in reproduce.EXTENSIONS:
        assert run.name in table, run.name
    assert set(table["sr_student_skd"]["rows"]) == {"high/-"}
    assert set(table["retina_teacher"]["rows"]) == {"high/fused", "high/high", "low/low"}
    assert {c["claim"] for c in result["claims"]} >= {"same_res_skd_above_alone", "retina_student_above_no_kd"}


def test_tables_select_their_runs_and_the_teachers_they_need():
    names = [f"{run.name}_s{seed}" for run, seed in reproduce.all_runs(tables=["sr"])]
    assert names == ["single_s0", "single_s1", "single_s2"] + [
        f"sr_student{suffix}_s{seed}" for seed in (0, 1, 2)
        for suffix in ("", "_skd", "_msad_l1", "_fgfi", "_skd_t0.5")]
    retina = [f"{run.name}_s{seed}" for run, seed in reproduce.all_runs(seeds=(0,), tables=["retina"])]
    assert retina == ["retina_vanilla_s0", "retina_teacher_s0", "retina_student_s0", "retina_student_no_kd_s0"]
    with pytest.raises(ValueError, match="unknown tables"):
        reproduce.all_runs(tables=["table9"])


def test_runs_select_by_name_with_their_teachers_and_add_to_tables():
    names = [f"{run.name}_s{seed}" for run, seed in reproduce.all_runs(runs=["student_skd", "student_skd_na"])]
    assert names == ["teacher_s0", "student_skd_s0", "student_skd_na_s0"]
    both = [f"{run.name}_s{seed}" for run, seed in
            reproduce.all_runs(seeds=(0,), tables=["retina"], runs=["student_teacher_bn_train"])]
    assert both == ["teacher_s0", "retina_vanilla_s0", "retina_teacher_s0", "retina_student_s0",
                    "retina_student_no_kd_s0", "student_teacher_bn_train_s0"]
    with pytest.raises(ValueError, match="unknown runs"):
        reproduce.all_runs(runs=["student_skd_s0"])


def test_a_kept_run_trained_again_is_evaluated_again(tiny_data, tmp_path, monkeypatch):
    """A kept teacher whose weights are gone is retrained for its student: its kept rows (of
    the old weights) are set aside, in OUT and in the keep directory, and the new weights are
    evaluated and kept."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    keep, out = tmp_path / "keep", tmp_path / "out"
    old = {"final/high/fused/subsample": {"AP": 1.0}}
    (keep / "teacher_s0").mkdir(parents=True)
    (keep / "teacher_s0" / "reproduce_eval.json").write_text(json.dumps(old))
    plan = reproduce._Plan(str(path), out, str(tiny_data), [], (0,), False, False, False, keep, False)
    assert plan.cached("teacher_s0") is None and (out / "teacher_s0" / "reproduce_eval.json").is_file()
    trained, evaluated = [], []
    monkeypatch.setattr("msad_tf.training.train.train", lambda config, run_dir, progress: trained.append(run_dir.name))

    def evaluate(run_dir, evals, val, weights=None, tag="final"):
        evaluated.append((run_dir.name, tuple(evals)))
        (run_dir / "reproduce_eval.json").write_text(json.dumps({"new": 2.0}))

    monkeypatch.setattr(reproduce, "evaluate_cached", evaluate)
    plan.ensure_weights("teacher_s0")
    assert trained == ["teacher_s0"]
    assert evaluated == [("teacher_s0", (("high", "fused"), ("high", "high"), ("low", "low")))]
    for root in (out, keep):
        assert json.loads((root / "teacher_s0" / reproduce.RETRAINED_FILE).read_text()) == old
        assert json.loads((root / "teacher_s0" / "reproduce_eval.json").read_text()) == {"new": 2.0}
    plan.ensure_weights("single_s0")
    assert evaluated[1:] == [] and trained[1:] == ["single_s0"]


def test_a_report_does_not_restore_old_rows_into_a_run_being_trained_again(tiny_data, tmp_path):
    """While a retrained run's worker evaluates its new weights, a report in the main process
    (``cached``) must not copy the kept rows of the old weights back into OUT, where the
    worker would take them for its own."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    keep, out = tmp_path / "keep", tmp_path / "out"
    (keep / "teacher_s0").mkdir(parents=True)
    (keep / "teacher_s0" / "reproduce_eval.json").write_text(json.dumps({"old": 1.0}))
    (out / "teacher_s0").mkdir(parents=True)
    (out / "teacher_s0" / reproduce.RETRAINED_FILE).write_text(json.dumps({"old": 1.0}))
    plan = reproduce._Plan(str(path), out, str(tiny_data), [], (0,), False, False, False, keep, False)
    assert plan.cached("teacher_s0") is None
    assert not (out / "teacher_s0" / "reproduce_eval.json").exists()


def test_each_config_gets_its_own_run_and_keep_directories():
    assert reproduce.default_paths("configs/reproduce.yaml") == ("runs/reproduce", "docs/results/reproduce_runs")
    assert reproduce.default_paths("configs/demo.yaml") == ("runs/reproduce_demo", "docs/results/reproduce_demo_runs")


@pytest.mark.parametrize("where", ["keep", "out"])
def test_a_run_of_another_config_is_refused_and_left_alone(tiny_data, tmp_path, where):
    """Rows kept (or left in OUT) by a run of another config are never read as this config's:
    ConfigError names the differing key, and the kept files are untouched."""
    from conftest import write_tiny_yaml

    from msad_tf.config import ConfigError, load_config

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=1, lr_decay_epochs=(0.5,))
    keep, out = tmp_path / "keep", tmp_path / "out"
    plan = reproduce._Plan(str(path), out, str(tiny_data), [], (0,), False, False, False, keep, False)
    rows = {reproduce._eval_key(r, b, "subsample"): {"AP": 1.0, "APs": 0.5} for r, b in reproduce.CORE[0].evals}
    assert plan.config_of("single_s0").eval.low_input == "subsample"
    run_dir = (keep if where == "keep" else out) / "single_s0"
    run_dir.mkdir(parents=True)
    (run_dir / "reproduce_eval.json").write_text(json.dumps(rows))
    plan.config_of("single_s0").save(run_dir / "config.yaml")
    assert plan.cached("single_s0") == {k: {"AP": 1.0, "APs": 0.5} for k in ("high/-", "low/-")}
    if where == "keep":
        shutil.rmtree(out / "single_s0")
    changed = load_config(path, [f"data.root={tiny_data}", "train.mode=single", "train.seed=0",
                                 "train.steps_per_epoch=7"])
    changed.save(run_dir / "config.yaml")
    plan = reproduce._Plan(str(path), out, str(tiny_data), [], (0,), False, False, False, keep, False)
    with pytest.raises(ConfigError, match=r"train.steps_per_epoch: 7 -> 2.*own --(keep|out)"):
        plan.cached("single_s0")
    assert json.loads((run_dir / "reproduce_eval.json").read_text()) == rows
    if where == "keep":
        assert not (out / "single_s0").exists()


def test_the_plateau_check_pairs_each_run_with_its_twin_by_seed():
    rows = {("single", 0): {"high/-": {"AP": 50.0}, "low/-": {"AP": 20.0}},
            ("single", 1): {"high/-": {"AP": 52.0}, "low/-": {"AP": 22.0}},
            ("single", 2): {"high/-": {"AP": 90.0}, "low/-": {"AP": 90.0}},
            ("single_2x", 0): {"high/-": {"AP": 54.0}, "low/-": {"AP": 24.0}},
            ("single_2x", 1): {"high/-": {"AP": 56.0}, "low/-": {"AP": 25.0}},
            ("vanilla", 0): {"high/-": {"AP": 40.0}}}
    labels = {"single": ("single-scale", "1", 100), "single_2x": ("single 2x", "plateau", 200),
              "vanilla": ("vanilla", "1", 100)}
    check = reproduce.plateau_check(rows, labels, (0, 1, 2))
    assert [(r["row"], r["seeds"], r["steps"], r["steps_2x"]) for r in check] == [
        ("single-scale @H", [0, 1], 100, 200), ("single-scale @L", [0, 1], 100, 200)]
    assert check[0]["AP"] == pytest.approx(51.0) and check[0]["AP_2x"] == pytest.approx(55.0)
    assert check[0]["change"] == pytest.approx(4 / 51) and check[0]["plateau"]
    assert check[1]["change"] == pytest.approx(3.5 / 21) and not check[1]["plateau"]
    report = reproduce.format_report({"budget": {"steps_per_run": 100, "batch_size": 2, "H": 64, "L": 32,
                                                 "low_input": "subsample"}, "seeds": [0, 1, 2], "table": {},
                                      "claims": [], "plateau": check})
    assert "| single-scale @L | 100 | 21.00 | 200 | 24.50 | +16.7% | no | 2 |" in report
    assert "1 of 2 rows within 10%" in report



@pytest.mark.parametrize("scaled", [True, False])
def test_per_mode_budgets_give_twins_twice_each_budget_and_vanilla_the_equal_steps(tiny_data, tmp_path, scaled):
    """With train.epochs_scale each 2x twin trains twice its own run's epochs, and the equal-
    training control trains the teacher's + student's epochs; when that is vanilla's own budget
    the control is an alias of vanilla (trained once, read under both names). Without a scale
    the control is vanilla at 2x, and vanilla_2x its alias."""
    from conftest import write_tiny_yaml

    path = write_tiny_yaml(tmp_path / "tiny.yaml", epochs=2, lr_decay_epochs=(1.5,))
    overrides = ["train.epochs_scale={single: 1.5, vanilla_multiscale: 1.5, student: 0.5}"] if scaled else []
    plan = reproduce._Plan(str(path), tmp_path / "out", str(tiny_data), overrides, (0,), False, True, False, None,
                           False)
    epochs = {"single": 3, "vanilla": 3, "teacher": 2, "student": 1, "vanilla_equal": 3} if scaled else \
        {"single": 2, "vanilla": 2, "teacher": 2, "student": 2, "vanilla_equal": 4}
    for name, value in epochs.items():
        config = plan.config_of(f"{name}_s0")
        assert (config.train.epochs, config.train.lr_decay_epochs, config.train.epochs_scale) == (
            value, [1.5 * value / 2], {}), name
    for name in ("single", "vanilla", "teacher", "student"):
        assert plan.config_of(f"{name}_2x_s0").train.epochs == 2 * epochs[name]
    assert plan.aliases == ({"vanilla_equal_s0": "vanilla_s0"} if scaled else {"vanilla_2x_s0": "vanilla_equal_s0"})
    rows = {("vanilla", 0): {"low/-": {"AP": 20.0}}, ("vanilla_equal", 0): {"low/-": {"AP": 20.0 if scaled else 21.0}},
            ("vanilla_2x", 0): {"low/-": {"AP": 21.0}}}
    labels = {name: (name, "1", plan.config_of(f"{name}_s0").total_steps(2)) for name in ("vanilla", "vanilla_equal",
                                                                                           "vanilla_2x")}
    check = reproduce.plateau_check(rows, labels, (0,))
    assert [(r["run"], r["twin"], r["AP_2x"]) for r in check] == [
        ("vanilla", "vanilla_2x" if scaled else "vanilla_equal", 21.0)]
    budget = {"steps_per_run": 4, "steps_scale": dict(plan._base.train.epochs_scale), "batch_size": 2, "H": 64,
              "L": 32, "low_input": "subsample"}
    report = reproduce.format_report({"budget": budget, "seeds": [0], "table": {}, "claims": [], "plateau": check})
    assert report.startswith("msad reproduce: 4 steps per run (single x1.5, vanilla_multiscale x1.5, student x0.5) "
                             if scaled else "msad reproduce: 4 steps per run (2x runs: twice)")
