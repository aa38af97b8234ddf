"""``msad reproduce``: the paper's tables at a converged budget, with seeds, and its claims.

One resumable command: every run lives in OUT/<name>_s<seed>; a finished run (its
model.weights.h5) is reused, an interrupted one resumes from its step backup, and every
evaluation is cached in RUN/reproduce_eval.json. Runs are ordered so that an interrupted
reproduction has the claims' rows first: the seeded core (Tables 1 and 4 with both controls)
seed by seed, then the plateau checks, then the extensions (same-resolution SKD and RetinaNet,
3 seeds; the SKD paper's Fig. 7, seed 0), then the seed-0 variant rows (Tables 2 and 3a).

Rows (each evaluated with COCOeval on the val split; L = the subsample the models train on):
  Table 1   single, vanilla, aligned at H and L (3 seeds)
  Table 2a/b  each fusion teacher: fused at H against its H branch at H and L branch at L
            (C-FF with 3 seeds, the variants seed 0)
  Table 2c  the student distilled from the fused, the H and the aligned-L teacher pyramid (seed 0)
  Table 3a  each distillation loss, aligned and not aligned (seed 0)
  Table 4   vanilla at H and L, the MSAD student at L (3 seeds)
  controls  the student with the same teacher initialization and steps but no KD term, vanilla
            trained for the teacher's plus the student's steps (equal total training), the
            student with the teacher's BatchNorm in training mode (authors' code)
  plateau   single, vanilla, teacher and student at twice the budget (seed 0), and AP of the
            seed-0 core runs at each epoch checkpoint (AP against steps)
  sr        same-resolution distillation (SKD paper): the w0.5 single-scale model teaches a w0.25
            student at H with SKD, msad_l1 or FGFI, against the student alone (3 seeds)
  fig7      teachers of different AP (a quarter, one and twice the budget), the same student +
            SKD, and Pearson's r (seed 0)
  retina    Table 4 for RetinaNet: vanilla at H and L, teacher, student and no-KD control at L
            (3 seeds)

Claims (OUT/reproduce.json, printed): a claim holds when its margin (mean difference minus
the paper's threshold) exceeds twice the standard error of that difference over the seeds.
"""
from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

SEEDS = (0, 1, 2)
#: Registry entries kept for reference that the reproduction does not train: the literal paper
#: formulas of SKD, which swamp detection (its authors' code is ``skd``).
PAPER_LITERAL = ("skd_paper",)
#: Losses that are candidate fixes of the KD term (their own rows, aligned only), not Table 3a rows.
KD_CANDIDATES = ("msad_l1_norm", "msad_l1_fg")
#: Variant rows that led on seed 0 (or combine two leads, or control one), trained on every seed
#: together with the teacher runs they learn from, each judged paired by seed against its baseline
#: rows: name -> (label, baselines), claims ``<name>_above_<baseline>``. Seed 0 chose them, so
#: seeds 1 and 2 are the fair test. The student from the 2x teacher also starts from that
#: teacher's weights, so its own no-KD control separates the stronger init from the KD term.
#: fgfi and podnet led Table 3a of the demo-model reproduction (``make reproduce``, session 13).
LEADS = {
    "student_mse": ("student with the mse loss", ("student", "student_no_kd")),
    "student_fgfi": ("student with the fgfi loss", ("student", "student_no_kd")),
    "student_podnet": ("student with the podnet loss", ("student", "student_no_kd")),
    "student_tau1.0": ("student with tau 1.0 (KD weight 0.2)", ("student",)),
    "student_from_teacher_2x": ("student from the 2x-trained teacher",
                                ("student", "student_no_kd_from_teacher_2x")),
    "student_no_kd_from_teacher_2x": ("student without KD from the 2x-trained teacher", ("student_no_kd",)),
    "student_mse_from_teacher_2x": ("student with mse from the 2x-trained teacher", ("student_from_teacher_2x",)),
}
#: How the claims name the rows that leads are judged against.
_BASELINE_LABELS = {"student": "MSAD student", "student_no_kd": "no-KD control",
                    **{name: label for name, (label, _) in LEADS.items()}}
#: How ``msad reproduce`` generates its dataset when missing (configs/reproduce.yaml).
DATASET = {"image_size": 128, "object_scale": 0.75}


@dataclass(frozen=True)
class Run:
    """One training run of the reproduction.

    ``overrides`` may use {out}, {seed}, {epochs2} (twice the epochs), {decay2} (the LR
    decay epochs of a run twice as long), {epochs_equal} and {decay_equal} (the epochs of the
    teacher plus the student, ``train.epochs_scale`` applied) and {spe4} (a quarter of the steps
    per epoch);
    ``evals`` are (resolution, branch) pairs.
    """

    name: str
    label: str
    overrides: tuple[str, ...]
    evals: tuple[tuple[str, str | None], ...]
    seeds: tuple[int, ...] = SEEDS
    table: str = ""
    curve: bool = False


def _student(teacher="teacher", *extra):
    return ("train.mode=student", f"train.teacher_run={{out}}/{teacher}_s{{seed}}", *extra)


_HL = (("high", None), ("low", None))
_L = (("low", None),)
_TEACHER = (("high", "fused"), ("high", "high"), ("low", "low"))
_TWICE = ("train.epochs={epochs2}", "train.lr_decay_epochs={decay2}")
#: the teacher's plus the student's epochs, as the run's own (its mode's scale not applied again)
_EQUAL = ("train.epochs_scale=null", "train.epochs={epochs_equal}", "train.lr_decay_epochs={decay_equal}")

CORE = (
    Run("single", "single-scale", ("train.mode=single",), _HL, table="1", curve=True),
    Run("vanilla", "vanilla multi-scale", ("train.mode=vanilla_multiscale",), _HL, table="1", curve=True),
    Run("aligned", "aligned multi-scale", ("train.mode=aligned",), _HL, table="1", curve=True),
    Run("teacher", "teacher C-FF", ("train.mode=teacher",), _TEACHER, table="2", curve=True),
    Run("student", "MSAD student (msad_l1, aligned)", _student(), _L, table="4", curve=True),
    Run("student_no_kd", "student without KD (gamma 0, same init and steps)", _student("teacher", "train.gamma=0"),
        _L, table="controls"),
    Run("vanilla_equal", "vanilla multi-scale, teacher + student steps", ("train.mode=vanilla_multiscale",) + _EQUAL,
        _HL, table="controls"),
)
#: Twice the budget, seed 0 (``_lead_seeds`` adds seeds 1 and 2 of teacher_2x: lead students learn from
#: it); the students' twins on every seed (cheap: each starts from its seed's teacher).
PLATEAU = (
    Run("single_2x", "single-scale, 2x steps", ("train.mode=single",) + _TWICE, _HL, seeds=(0,), table="plateau"),
    Run("teacher_2x", "teacher C-FF, 2x steps", ("train.mode=teacher",) + _TWICE, _TEACHER, seeds=(0,),
        table="plateau"),
    Run("student_2x", "MSAD student, 2x steps", _student() + _TWICE, _L, table="plateau"),
    Run("student_no_kd_2x", "student without KD, 2x steps", _student("teacher", "train.gamma=0") + _TWICE, _L,
        table="plateau"),
    Run("vanilla_2x", "vanilla multi-scale, 2x steps", ("train.mode=vanilla_multiscale",) + _TWICE, _HL, seeds=(0,),
        table="plateau"),
)

#: The same-resolution student (issue 11): a smaller network (width 0.25, its own pre-trained
#: backbone, 32-channel FPN) on the teacher's high-res image, taught by the single-scale w0.5
#: model of the same seed.
_SMALL = ("model.width=0.25", "model.backbone_weights=resnet_tiny_w0.25_synth", "model.fpn_channels=32")
_H = (("high", None),)


def _same_res(teacher, loss, *extra):
    return _student(teacher, "train.student_input=high", "train.teacher_target=high", "train.student_init=none",
                    f"train.distill_loss={loss}", *_SMALL, *extra)


#: RetinaNet on the 128-px set: anchors of 1 x stride (8 px at P3 .. 128 px at P7) times the
#: three scales, the FCOS size ranges' scale-down from COCO.
_RETINA = ("model.arch=retinanet", "model.anchor_size=1.0")

EXTENSIONS = (
    Run("sr_student", "small student alone (same resolution, H)", ("train.mode=single", *_SMALL), _H, table="sr"),
    Run("sr_student_skd", "small student + SKD (authors' code)", _same_res("single", "skd"), _H, table="sr"),
    Run("sr_student_msad_l1", "small student + msad_l1", _same_res("single", "msad_l1"), _H, table="sr"),
    Run("sr_student_fgfi", "small student + FGFI", _same_res("single", "fgfi"), _H, table="sr"),
    Run("sr_student_skd_t0.5", "small student + SKD, attention temperature 0.5 (softer masks)",
        _same_res("single", "skd", "train.distill_options={{temperature: 0.5}}"), _H, table="sr"),
    Run("retina_vanilla", "RetinaNet vanilla multi-scale", ("train.mode=vanilla_multiscale", *_RETINA), _HL,
        table="retina"),
    Run("retina_teacher", "RetinaNet teacher C-FF", ("train.mode=teacher", *_RETINA), _TEACHER, table="retina"),
    Run("retina_student", "RetinaNet MSAD student", _student("retina_teacher", *_RETINA), _L, table="retina"),
    Run("retina_student_no_kd", "RetinaNet student without KD", _student("retina_teacher", "train.gamma=0", *_RETINA),
        _L, table="retina"),
)
#: The SKD paper's Fig. 7: teachers of clearly different AP (single-scale w0.5 at a quarter, one
#: and twice the budget), the same small student with SKD, seed 0.
FIG7 = (
    Run("single_quarter", "single-scale, a quarter of the steps (weak teacher)",
        ("train.mode=single", "train.steps_per_epoch={spe4}"), _HL, seeds=(0,), table="fig7"),
    Run("sr_student_skd_from_quarter", "small student + SKD from the weak teacher", _same_res("single_quarter", "skd"),
        _H, seeds=(0,), table="fig7"),
    Run("sr_student_skd_from_2x", "small student + SKD from the 2x teacher", _same_res("single_2x", "skd"),
        _H, seeds=(0,), table="fig7"),
)


def _variants():
    return _lead_seeds(_variant_runs())


def _variant_runs():
    from msad_tf.losses.distillation import DISTILLATION_LOSSES

    runs = [
        Run(f"teacher_{fusion}", f"teacher {label}", ("train.mode=teacher", f"model.fusion={fusion}"), _TEACHER,
            seeds=(0,), table="2")
        for fusion, label in (("sc_sum", "SC-SUM"), ("cc", "CC"), ("sigmoid", "sigmoid (SE)"),
                              ("channel", "channel-wise"))
    ]
    runs += [
        Run("student_target_high", "student, teacher target = H pyramid",
            _student("teacher", "train.teacher_target=high"), _L, seeds=(0,), table="2c"),
        Run("student_target_low", "student, teacher target = aligned L pyramid",
            _student("teacher", "train.teacher_target=low"), _L, seeds=(0,), table="2c"),
        Run("student_teacher_bn_train", "student, teacher BatchNorm in training mode",
            _student("teacher", "train.teacher_bn_training=true"), _L, seeds=(0,), table="controls"),
    ]
    runs += [
        Run(f"student_{loss}", f"student {loss} (KD candidate)", _student("teacher", f"train.distill_loss={loss}"),
            _L, seeds=(0,), table="kd")
        for loss in KD_CANDIDATES
    ]
    runs += [
        Run("student_from_teacher_2x", "student from the 2x-trained teacher (stronger teacher)",
            _student("teacher_2x"), _L, seeds=(0,), table="kd"),
        Run("student_no_kd_from_teacher_2x", "student without KD from the 2x-trained teacher (its control)",
            _student("teacher_2x", "train.gamma=0"), _L, seeds=(0,), table="kd"),
        Run("student_mse_from_teacher_2x", "student with mse from the 2x-trained teacher",
            _student("teacher_2x", "train.distill_loss=mse"), _L, seeds=(0,), table="kd"),
        *(Run(f"student_gamma{g}", f"student, gamma {g}", _student("teacher", f"train.gamma={g}"), _L, seeds=(0,),
              table="kd") for g in ("0.1", "0.4")),
        *(Run(f"student_tau{t}", f"student, tau {t}", _student("teacher", f"train.tau={t}"), _L, seeds=(0,),
              table="kd") for t in ("1.0", "6.0")),
    ]
    for loss in [name for name in DISTILLATION_LOSSES if name not in PAPER_LITERAL + KD_CANDIDATES]:
        for aligned in (True, False):
            if (loss, aligned) == ("msad_l1", True):
                continue
            extra = (f"train.distill_loss={loss}", f"train.aligned={str(aligned).lower()}")
            runs.append(Run(f"student_{loss}" + ("" if aligned else "_na"),
                            f"student {loss}, {'aligned' if aligned else 'not aligned'}",
                            _student("teacher", *extra), _L, seeds=(0,), table="3a"))
    return tuple(runs)


def _lead_seeds(runs):
    """``runs`` with every run of LEADS, and every teacher run a lead learns from, on all SEEDS."""
    teachers = {_teacher_of(run.overrides).removesuffix("_s{seed}")
                for run in _variant_runs() if run.name in LEADS and _teacher_of(run.overrides)}
    return tuple(replace(run, seeds=SEEDS) if run.name in LEADS or run.name in teachers else run for run in runs)


def all_runs(seeds=SEEDS, variants: bool = True, plateau: bool = True,
             extensions: bool = True, tables=None, runs=None) -> list[tuple[Run, int]]:
    """(run, seed) in training order: the core of the first seed, the cheapest plateau check
    (single-scale at twice the budget, so that whether the budget is a plateau is known early),
    the core of the other seeds (so that every claim is judged against its seed spread), the
    other plateau checks, the variants. ``tables``: only the runs of these tables (``Run.table``,
    e.g. "retina", "sr") and the teachers they need, in the same order; ``runs``: likewise by
    ``Run.name`` (e.g. "student_skd"); given both, the runs of either."""
    order = [(run, seeds[0]) for run in CORE if seeds[0] in run.seeds]
    plateau_runs = ([(run, seed) for run in _lead_seeds(PLATEAU) for seed in run.seeds if seed in seeds]
                    if plateau else [])
    order += plateau_runs[:1]
    order += [(run, seed) for seed in seeds[1:] for run in CORE if seed in run.seeds]
    order += plateau_runs[1:]
    if extensions:
        order += [(run, seed) for seed in seeds for run in EXTENSIONS if seed in run.seeds]
        if plateau:
            order += [(run, seed) for run in FIG7 for seed in run.seeds if seed in seeds]
    if variants:
        order += [(run, seed) for run in _variants() for seed in run.seeds if seed in seeds]
    names = {f"{run.name}_s{seed}" for run, seed in order}
    order = [(run, seed) for run, seed in order
             if _teacher_of(run.overrides) is None or _teacher_of(run.overrides).format(seed=seed) in names]
    if tables or runs:
        for given, known, what in ((tables, {run.table for run, _ in order}, "tables"),
                                   (runs, {run.name for run, _ in order}, "runs")):
            unknown = set(given or ()) - known
            if unknown:
                raise ValueError(f"unknown {what} {sorted(unknown)}; known: {sorted(known)}")
        wanted = {f"{run.name}_s{seed}" for run, seed in order
                  if run.table in (tables or ()) or run.name in (runs or ())}
        for run, seed in reversed(order):
            if f"{run.name}_s{seed}" in wanted and _teacher_of(run.overrides):
                wanted.add(_teacher_of(run.overrides).format(seed=seed))
        order = [(run, seed) for run, seed in order if f"{run.name}_s{seed}" in wanted]
    return order


def default_paths(config_path) -> tuple[str, str]:
    """(OUT, keep) of ``msad reproduce`` for a config file: runs/reproduce and
    docs/results/reproduce_runs for configs/reproduce.yaml, runs/reproduce_<name> and
    docs/results/reproduce_<name>_runs for configs/<name>.yaml, so that the runs of two configs
    never share a directory."""
    name = Path(config_path).stem
    suffix = "" if name == "reproduce" else f"_{name}"
    return f"runs/reproduce{suffix}", f"docs/results/reproduce{suffix}_runs"


def twice_decay(decay, factor: float = 2) -> str:
    """The LR decay epochs of a run twice (``factor`` times) as long, as a
    ``train.lr_decay_epochs`` override value."""
    return "[" + ",".join(f"{factor * e:g}" for e in decay) + "]"


def _format(overrides, out, seed, train):
    """``overrides`` with their fields filled from ``train``, the config's TrainConfig before its
    ``epochs_scale`` is applied (``load_config(..., scale=False)``)."""
    spe4 = max(1, (train.steps_per_epoch or 4) // 4)
    scale = train.epochs_scale or {}
    equal = scale.get("teacher", 1) + scale.get("student", 1)
    return [o.format(out=out, seed=seed, epochs2=2 * train.epochs, decay2=twice_decay(train.lr_decay_epochs),
                     epochs_equal=f"{train.epochs * equal:g}", decay_equal=twice_decay(train.lr_decay_epochs, equal),
                     spe4=spe4) for o in overrides]


#: A run's evaluation cache: {"<weights>/<resolution>/<branch>/<low_input>": metrics}.
EVAL_CACHE = "reproduce_eval.json"


def _eval_key(resolution, branch, low_input, weights="final"):
    return f"{weights}/{resolution}/{branch or '-'}/{low_input}"


def evaluate_cached(run_dir: Path, evals, val, weights=None, tag="final", model=None) -> dict:
    """{"resolution/branch": metrics} of a run: ``evals`` are (resolution, branch) pairs, each
    evaluated once and cached in RUN/EVAL_CACHE (the demo's runs share it). ``model``: the run
    already loaded with these weights (loaded here only when a row is missing)."""
    from msad_tf.evaluation.evaluator import evaluate_model
    from msad_tf.training import runs

    cache_path = run_dir / EVAL_CACHE
    cache = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    config = runs.load_config(run_dir / runs.CONFIG_FILE)
    result = {}
    for resolution, branch in evals:
        key = _eval_key(resolution, branch, config.eval.low_input, tag)
        if key not in cache:
            if model is None:
                config, model, _, _ = runs.load_run(run_dir, weights)
            cache[key] = evaluate_model(model, val, config, resolution, branch=branch, progress=False)
            cache_path.write_text(json.dumps(cache, indent=1, sort_keys=True))
        result[f"{resolution}/{branch or '-'}"] = cache[key]
    return result


def _curve(run_dir: Path, evals, val, steps_per_epoch: int, cached_only: bool = False) -> list[dict]:
    """AP of every epoch checkpoint of a run: [{step, resolution/branch: AP}] (from the
    evaluation cache when the checkpoints are gone). ``cached_only``: evaluate nothing, give
    the epochs whose every row is cached (another process may be evaluating the rest)."""
    epochs = {} if cached_only else {int(p.name.split("_")[1].split(".")[0]): p
                                     for p in (run_dir / "checkpoints").glob("epoch_*.weights.h5")}
    path = run_dir / EVAL_CACHE
    cache = json.loads(path.read_text()) if path.is_file() else {}
    for key in cache:
        if key.startswith("epoch"):
            epochs.setdefault(int(key[5:8]), None)
    if cached_only:
        from msad_tf.training import runs

        low_input = runs.load_config(run_dir / runs.CONFIG_FILE).eval.low_input
        epochs = {e: None for e in epochs
                  if all(_eval_key(r, b, low_input, f"epoch{e:03d}") in cache for r, b in evals)}
    points = []
    for epoch in sorted(epochs):
        metrics = evaluate_cached(run_dir, evals, val, weights=epochs[epoch], tag=f"epoch{epoch:03d}")
        points.append({"step": epoch * steps_per_epoch, **{k: v["AP"] for k, v in metrics.items()}})
    return points


def _stats(values):
    values = [float(v) for v in values]
    std = float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")
    return {"mean": float(np.mean(values)), "std": std, "n": len(values), "values": values}


def _claim(name, text, a, b, margin=0.0, higher=True, paired=False):
    """Claim "mean(a) - mean(b) > margin" (or "< -margin" read as "at most margin below") held
    against twice the standard error of the difference of means. With one value on a side there
    is no spread: ``judged`` is False and ``holds`` gives only the sign of the margin.
    ``paired``: a[i] and b[i] share a seed (and its teacher); the standard error is that of the
    per-seed differences."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(a.mean() - b.mean())
    if paired:
        d = a - b
        se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0
    else:
        se = math.sqrt((a.var(ddof=1) / len(a) if len(a) > 1 else 0.0)
                       + (b.var(ddof=1) / len(b) if len(b) > 1 else 0.0))
    excess = diff - margin if higher else diff + margin
    judged = len(a) > 1 and len(b) > 1
    if judged:
        holds = bool(excess > 2 * se)
        contradicted = bool(excess < -2 * se)
        verdict = "holds" if holds else ("does not hold" if contradicted else "does not hold (within the seed spread)")
    else:
        holds = bool(excess > 0)
        verdict = ("holds" if holds else "does not hold") + " on one seed (no spread yet)"
    return {"claim": name, "text": text, "difference": diff, "threshold": margin if higher else -margin,
            "excess": excess, "se": se, "n": [len(a), len(b)], "holds": holds, "judged": judged,
            "verdict": verdict, "a": a.tolist(), "b": b.tolist(), "paired": paired}


def _values(rows, name, key, seeds):
    return [rows[(name, s)][key]["AP"] for s in seeds if (name, s) in rows and key in rows[(name, s)]]


def claims_from(rows, seeds) -> list[dict]:
    """The five claims of the issue plus equal-total-training, from evaluated rows, for FCOS
    (the core runs) and for RetinaNet (its ``retina_`` runs), then the same-resolution claims."""
    v = lambda name, key: _values(rows, name, key, seeds)  # noqa: E731
    out = []

    def add(*args, **kwargs):
        a, b = args[2], args[3]
        if len(a) and len(b):
            out.append(_claim(*args, **kwargs))

    add("aligned_L_above_vanilla_L", "aligned @L above vanilla @L", v("aligned", "low/-"), v("vanilla", "low/-"))
    for prefix, detector in (("", ""), ("retina_", "RetinaNet ")):
        def r(name, key, prefix=prefix):
            return v(prefix + name, key)

        fused = r("teacher", "high/fused")
        add(f"{prefix}cff_fused_above_H_branch", f"{detector}C-FF fused above its H branch", fused,
            r("teacher", "high/high"))
        add(f"{prefix}cff_fused_above_L_branch", f"{detector}C-FF fused above its L branch", fused,
            r("teacher", "low/low"))
        add(f"{prefix}student_3AP_above_vanilla_L", f"{detector}student @L at least 3 AP above vanilla @L",
            r("student", "low/-"), r("vanilla", "low/-"), margin=3.0)
        add(f"{prefix}student_within_1.5_of_vanilla_H", f"{detector}student @L at most 1.5 AP below vanilla @H",
            r("student", "low/-"), r("vanilla", "high/-"), margin=1.5, higher=False)
        add(f"{prefix}student_above_no_kd", f"{detector}student above the no-KD control", r("student", "low/-"),
            r("student_no_kd", "low/-"))
    add("student_above_equal_training_L", "student @L above vanilla @L trained teacher + student steps",
        v("student", "low/-"), v("vanilla_equal", "low/-"))
    for lead, (label, baselines) in LEADS.items():
        for baseline in baselines:
            both = [s for s in seeds if all("low/-" in rows.get((name, s), {}) for name in (lead, baseline))]
            add(f"{lead}_above_{baseline}", f"{label} above the {_BASELINE_LABELS[baseline]} (paired by seed)",
                _values(rows, lead, "low/-", both), _values(rows, baseline, "low/-", both), paired=True)
    alone = v("sr_student", "high/-")
    for loss, label in (("skd", "skd"), ("msad_l1", "msad_l1"), ("fgfi", "fgfi"), ("skd_t0.5", "skd (T 0.5)")):
        add(f"same_res_{loss}_above_alone", f"same-resolution small student + {label} above the student alone",
            v(f"sr_student_{loss}", "high/-"), alone)
    return out


#: The paper's Table 4 (R-50) per detector: (vanilla @H, vanilla @L, the student @L).
PAPER_TABLE4 = {"fcos": (42.8, 38.2, 41.6), "retinanet": (40.7, 37.2, 40.3)}


def gap_closed(rows, seeds, student="student", vanilla="vanilla", arch="fcos") -> dict | None:
    """The fraction of vanilla's H - L gap that the student closes, per seed:
    (student @L - vanilla @L) / (vanilla @H - vanilla @L), with the gap in AP beside it. The
    paper's claim "at most 1.5 AP below vanilla @H" is an absolute number on COCO, whose H - L gap
    is 4.6 AP for FCOS; this ratio compares datasets whose gaps differ, against the paper's own
    for ``arch`` (``PAPER_TABLE4``). None until a seed has all three; a seed where vanilla has no
    gap (H = L, e.g. both 0 AP on a smoke run) has no fraction and is left out."""
    fractions, gaps = [], []
    for seed in seeds:
        try:
            high = rows[(vanilla, seed)]["high/-"]["AP"]
            low = rows[(vanilla, seed)]["low/-"]["AP"]
            mid = rows[(student, seed)]["low/-"]["AP"]
        except KeyError:
            continue
        if high == low:
            continue
        gaps.append(high - low)
        fractions.append((mid - low) / (high - low))
    if not fractions:
        return None
    paper_high, paper_low, paper_student = PAPER_TABLE4[arch]
    return {"fraction": _stats(fractions), "gap_AP": _stats(gaps),
            "paper_fraction": (paper_student - paper_low) / (paper_high - paper_low),
            "paper_gap_AP": paper_high - paper_low}


#: (teacher run, its small student with SKD) pairs of the SKD paper's Fig. 7, seed 0.
FIG7_PAIRS = (("single_quarter", "sr_student_skd_from_quarter"), ("single", "sr_student_skd"),
              ("single_2x", "sr_student_skd_from_2x"))


def teacher_student_points(rows) -> dict | None:
    """Teacher AP @H against its same-resolution student's AP @H (seed 0), with Pearson's r
    (None until two pairs are evaluated)."""
    points = [{"teacher": t, "student": st, "teacher_AP": rows[(t, 0)]["high/-"]["AP"],
               "student_AP": rows[(st, 0)]["high/-"]["AP"]}
              for t, st in FIG7_PAIRS if (t, 0) in rows and (st, 0) in rows]
    if len(points) < 2:
        return None
    x = np.array([p["teacher_AP"] for p in points])
    y = np.array([p["student_AP"] for p in points])
    r = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")
    return {"points": points, "pearson_r": r}


def _teacher_of(run_overrides) -> str | None:
    for o in run_overrides:
        if o.startswith("train.teacher_run="):
            return Path(o.split("=", 1)[1]).name
    return None


def run_reproduce(config_path="configs/reproduce.yaml", out="runs/reproduce", data_root="data/msad_synth128",
                  overrides=None, seeds=SEEDS, variants=True, plateau=True, curves=True, progress=True,
                  keep="docs/results/reproduce_runs", jobs: int = 1, report_only: bool = False,
                  extensions: bool = True, tables=None, runs=None) -> dict:
    """Train (or reuse) every run, evaluate, and write OUT/reproduce.{json,md} and the plots.

    ``keep``: a directory (kept in the repository) where each finished run's evaluations
    (reproduce_eval.json, incl. the epoch-checkpoint curve), config.yaml, history.csv and
    metrics.json (with the package versions) are copied; a run found there is not trained
    again, so a reproduction continues across machines without its weights (a student whose
    teacher's weights are gone retrains the teacher first). None: OUT only.
    ``jobs``: runs trained at once, each in its own process (its log in OUT/<run>.log); on a
    quiet 2-core machine two processes, each with one inter-op thread (``cpu_threads``), give
    1.2-1.5x the images/s of one (docs/RESULTS.md, session 10). ``report_only``: train nothing, write
    the report of the runs finished so far (e.g. while another reproduction is running).
    ``tables``, ``runs``: only these tables' runs or these runs (and their teachers); the report
    then has only them.
    """
    from msad_tf.config import load_config
    from msad_tf.data.synthetic import make_synthetic_dataset

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base_config = load_config(config_path, [f"data.root={data_root}"] + list(overrides or []), scale=False)
    if not Path(data_root, "annotations", "instances_val.json").is_file():
        print(f"== generating the embedded dataset in {data_root} ({DATASET})")
        make_synthetic_dataset(data_root, **DATASET)
    plan = _Plan(config_path, out, data_root, list(overrides or []), tuple(seeds), variants, plateau, curves, keep,
                 extensions, tuple(tables or ()), tuple(runs or ()))
    start = time.time()
    if jobs > 1 and not report_only:
        _run_parallel(plan, jobs, progress, lambda: plan.collect(base_config, train=False))
    result = plan.collect(base_config, train=not report_only, progress=progress, start=start)
    if progress:
        print(format_report(result))
        print(f"\nfinished in {time.time() - start:.0f} s; results in {out}/reproduce.md")
    return result


class _Plan:
    """The runs of one reproduction, where they live, and how each is produced."""

    def __init__(self, config_path, out, data_root, overrides, seeds, variants, plateau, curves, keep,
                 extensions=True, tables=(), runs=()):
        self.args = (config_path, str(out), data_root, overrides, seeds, variants, plateau, curves,
                     str(keep) if keep else None, extensions, tables, runs)
        self.config_path, self.out, self.data_root, self.overrides = config_path, Path(out), data_root, overrides
        self.seeds, self.curves = seeds, curves
        self.keep = Path(keep) if keep else None
        self.order = all_runs(seeds, variants, plateau, extensions, tables, runs)
        self.by_name = {f"{run.name}_s{seed}": (run, seed) for run, seed in self.order}
        self.seconds: dict[str, float] = {}
        self._val = None
        self._base = None
        self._configs = {}
        self._aliases = None

    def config_of(self, key):
        """The config of run ``key`` (loaded once per key)."""
        from msad_tf.config import load_config

        if key not in self._configs:
            run, seed = self.by_name[key]
            common = [f"data.root={self.data_root}"] + self.overrides
            if self._base is None:
                self._base = load_config(self.config_path, common, scale=False)
            extra = _format(run.overrides, self.out, seed, self._base.train)
            self._configs[key] = load_config(self.config_path, common + extra + [f"train.seed={seed}"])
        return copy.deepcopy(self._configs[key])

    @property
    def aliases(self) -> dict[str, str]:
        """{run: the earlier run of the same config and evaluations}: a run trained once and read
        under both names (e.g. vanilla_equal is vanilla when ``train.epochs_scale`` gives vanilla
        the teacher's + student's epochs)."""
        if self._aliases is None:
            self._aliases, first = {}, {}
            for run, seed in self.order:
                key = f"{run.name}_s{seed}"
                identity = json.dumps([self.config_of(key).to_dict(), run.evals], sort_keys=True, default=str)
                self._aliases.update({key: first[identity]} if identity in first else {})
                first.setdefault(identity, key)
        return self._aliases

    @property
    def val(self):
        if self._val is None:
            from msad_tf.training.train import load_split

            config = self.config_of(next(iter(self.by_name)))
            self._val = load_split(config, config.data.val_split)
        return self._val

    def teacher(self, key) -> str | None:
        run, seed = self.by_name[key]
        teacher = _teacher_of(run.overrides)
        return teacher.format(seed=seed) if teacher else None

    def has_weights(self, key) -> bool:
        from msad_tf.training import runs

        return runs.is_finished(self.out / key, self.config_of(key))

    def wants_curve(self, key) -> bool:
        run, seed = self.by_name[key]
        return self.curves and run.curve and seed == self.seeds[0]

    def restore(self, key) -> None:
        """Copies a kept run's evaluations into OUT (once; not into a run being trained again,
        whose old rows ``refresh_rows`` has set aside). Raises ConfigError when the kept run was
        trained with another config (another config needs another ``keep``)."""
        import shutil

        from msad_tf.training import runs

        kept, run_dir = (self.keep / key if self.keep else None), self.out / key
        if kept is not None and (kept / EVAL_CACHE).is_file() \
                and not (run_dir / EVAL_CACHE).is_file() and not (run_dir / RETRAINED_FILE).is_file():
            if (kept / runs.CONFIG_FILE).is_file():
                runs.require_same_config(kept, self.config_of(key), "the kept evaluations of a run",
                                         "give this config its own --keep directory (the default follows the "
                                         "config file's name)")
            run_dir.mkdir(parents=True, exist_ok=True)
            for path in kept.iterdir():
                shutil.copy(path, run_dir / path.name)

    def cached(self, key) -> dict | None:
        """The final rows of a run from OUT (after ``restore``), or None. Raises ConfigError when
        OUT holds that run trained (or training) with another config."""
        from msad_tf.training import runs

        if key in self.aliases:
            return self.cached(self.aliases[key])
        run, _ = self.by_name[key]
        self.restore(key)
        if (self.out / key / runs.CONFIG_FILE).is_file():
            runs.require_same_config(self.out / key, self.config_of(key), "a run",
                                     "give this config its own --out directory (the default follows the "
                                     "config file's name)")
        return _cached_rows(self.out / key, run.evals, self.config_of(key).eval.low_input)

    def diverged(self, key) -> str | None:
        path = self.out / key / DIVERGED_FILE
        return path.read_text() if path.is_file() else None

    def ensure_weights(self, key, progress=False, start=None) -> None:
        from msad_tf.training.train import train

        if self.has_weights(key):
            return
        teacher = self.teacher(key)
        if teacher:
            self.ensure_weights(teacher, progress, start)
        config = self.config_of(key)
        run, seed = self.by_name[key]
        if progress:
            index = [f"{r.name}_s{s}" for r, s in self.order].index(key)
            print(f"== [{index + 1}/{len(self.order)}] training {run.label}, seed {seed} "
                  f"({config.total_steps(config.train.steps_per_epoch)} steps) after {time.time() - start:.0f} s",
                  flush=True)
        t = time.time()
        train(config, self.out / key, progress=False)
        self.seconds[key] = time.time() - t
        self.refresh_rows(key)

    def refresh_rows(self, key) -> None:
        """A kept run trained again (its weights were gone and a student needs them): its
        cached rows are of the old weights, so they are set aside (RETRAINED_FILE, kept too)
        and the new weights evaluated, so that the report shows the teacher that taught."""
        cache = self.out / key / EVAL_CACHE
        if cache.is_file():
            cache.replace(cache.with_name(RETRAINED_FILE))
            run, _ = self.by_name[key]
            evaluate_cached(self.out / key, run.evals, self.val)
            self.save(key)

    def produce(self, key, progress=False, start=None) -> dict:
        """Trains (with its teacher when needed) and evaluates one run: the epoch curve first,
        then the final rows, so that cached final rows mean a finished run."""
        from msad_tf.training.callbacks import NonFiniteLossError

        run, _ = self.by_name[key]
        try:
            self.ensure_weights(key, progress, start)
        except NonFiniteLossError as err:
            (self.out / key / DIVERGED_FILE).write_text(str(err))
            raise
        if self.wants_curve(key):
            _curve(self.out / key, run.evals, self.val, self.config_of(key).train.steps_per_epoch)
        rows = evaluate_cached(self.out / key, run.evals, self.val)
        self.save(key)
        return rows

    def save(self, key) -> None:
        import shutil

        if self.keep is None or key in self.aliases:
            return
        (self.keep / key).mkdir(parents=True, exist_ok=True)
        for name in (EVAL_CACHE, "config.yaml", "history.csv", "metrics.json", RETRAINED_FILE):
            if (self.out / key / name).is_file():
                shutil.copy(self.out / key / name, self.keep / key / name)

    def collect(self, base_config, train=True, progress=False, start=None) -> dict:
        """Rows of every run (training what is missing when ``train``), written to OUT (after each
        run trained here, and at the end). Without ``train`` nothing is evaluated: rows and curves
        come from the caches (a report while workers train and evaluate)."""
        rows, labels, curves, diverged = {}, {}, {}, {}
        for run, seed in self.order:
            produced = False
            key = f"{run.name}_s{seed}"
            config = self.config_of(key)
            labels[run.name] = (run.label, run.table, config.total_steps(config.train.steps_per_epoch))
            cached = self.cached(key)
            if cached is None and key in self.aliases:
                continue
            if cached is None and self.diverged(key):
                diverged[key] = self.diverged(key)
                continue
            if cached is None:
                if not train:
                    continue
                try:
                    cached, produced = self.produce(key, progress, start), True
                except Exception as err:  # noqa: BLE001 - reported and skipped
                    from msad_tf.training.callbacks import NonFiniteLossError

                    if not isinstance(err, NonFiniteLossError):
                        raise
                    diverged[key] = str(err)
                    print(f"== {key} diverged, skipped: {err}", flush=True)
                    continue
            rows[(run.name, seed)] = cached
            if self.wants_curve(key):
                curves[run.name] = _curve(self.out / key, run.evals, self.val, config.train.steps_per_epoch,
                                          cached_only=not train)
            self.save(key)
            if produced:
                write_outputs(self._summary(rows, labels, curves, diverged, base_config), self.out)
        result = self._summary(rows, labels, curves, diverged, base_config)
        write_outputs(result, self.out)
        return result

    def _summary(self, rows, labels, curves, diverged, base_config) -> dict:
        result = summarize(rows, labels, self.seeds, curves, base_config, self.seconds)
        result["diverged"] = diverged
        return result


DIVERGED_FILE = "diverged.txt"
#: The evaluations of a kept run's earlier weights, set aside when the run was trained again.
RETRAINED_FILE = "reproduce_eval_before_retraining.json"


def _produce(args, key) -> None:
    """``_Plan(*args).produce(key)`` in a process of its own (``jobs`` > 1); a diverged run
    leaves its DIVERGED_FILE and exits 3."""
    import sys

    from msad_tf.training.callbacks import NonFiniteLossError

    try:
        _Plan(*args).produce(key)
    except NonFiniteLossError:
        sys.exit(3)


def _run_parallel(plan: _Plan, jobs: int, progress: bool, report=None) -> None:
    """Runs the missing runs ``jobs`` at a time, each student once its teacher's weights exist
    (a teacher kept without weights is retrained first); ``report()`` after each finished run."""
    from msad_tf.training.parallel import Task, run_in_processes

    keys = [f"{r.name}_s{s}" for r, s in plan.order]
    pending = [k for k in keys if k not in plan.aliases and plan.cached(k) is None and not plan.diverged(k)]
    for key in list(pending):
        teacher = plan.teacher(key)
        if teacher and teacher not in pending and not plan.has_weights(teacher):
            pending.insert(pending.index(key), teacher)

    def ready(teacher):
        return lambda: teacher is None or plan.has_weights(teacher)

    tasks = [Task(key, _produce, (plan.args, key), log=plan.out / f"{key}.log", needs=plan.teacher(key),
                  ready=ready(plan.teacher(key))) for key in pending]
    run_in_processes(tasks, jobs, progress, on_done=(lambda key, code, seconds: report()) if report else None)


def _cached_rows(run_dir: Path, evals, low_input) -> dict | None:
    """Final-weights rows of a run from its evaluation cache, or None when any is missing."""
    path = run_dir / EVAL_CACHE
    if not path.is_file():
        return None
    cache = json.loads(path.read_text())
    keys = {f"{r}/{b or '-'}": _eval_key(r, b, low_input) for r, b in evals}
    if not all(k in cache for k in keys.values()):
        return None
    return {name: cache[k] for name, k in keys.items()}


#: (run, its twin at twice the steps) pairs whose AP shows whether the budget is a plateau. Vanilla's
#: twin is the equal-total-training control when that trains twice vanilla's steps (3 seeds; no
#: ``train.epochs_scale``), else vanilla_2x (seed 0).
PLATEAU_PAIRS = (("single", "single_2x"), ("vanilla", "vanilla_equal"), ("vanilla", "vanilla_2x"),
                 ("teacher", "teacher_2x"), ("student", "student_2x"), ("student_no_kd", "student_no_kd_2x"))


def plateau_check(rows, labels, seeds) -> list[dict]:
    """Per (run, row) with a twin: mean AP over the seeds both have, the twin's, the relative
    change and whether it is within the demo's 10% (``msad_tf.demo.plateau_rows``)."""
    from msad_tf.demo import plateau_rows

    out, done = [], set()
    for name, twin in PLATEAU_PAIRS:
        both = [s for s in seeds if (name, s) in rows and (twin, s) in rows]
        if not both or name in done or labels[twin][2] != 2 * labels[name][2]:
            continue
        done.add(name)
        keys = [k for k in rows[(name, both[0])] if k in rows[(twin, both[0])]]
        mean = lambda run, key: {"AP": float(np.mean([rows[(run, s)][key]["AP"] for s in both]))}  # noqa: E731
        row_name = {k: f"{labels[name][0]} {dict(_COLUMNS).get(k, k)}" for k in keys}
        for row in plateau_rows({row_name[k]: mean(name, k) for k in keys},
                                {row_name[k]: mean(twin, k) for k in keys}):
            out.append({**row, "run": name, "twin": twin, "steps": labels[name][2],
                        "steps_2x": labels[twin][2], "seeds": both})
    return out


def summarize(rows, labels, seeds, curves, config, seconds) -> dict:
    table = {}
    for (name, seed), metrics in rows.items():
        label, tab, steps = labels[name]
        entry = table.setdefault(name, {"label": label, "table": tab, "steps": steps, "rows": {}})
        for key, m in metrics.items():
            entry["rows"].setdefault(key, {})[str(seed)] = m
    for entry in table.values():
        for key, per_seed in entry["rows"].items():
            entry["rows"][key] = {
                "AP": _stats([m["AP"] for m in per_seed.values()]),
                "APs": _stats([m["APs"] for m in per_seed.values()]),
                "seeds": sorted(int(s) for s in per_seed),
                "per_seed": per_seed,
            }
    return {
        "budget": {"steps_per_run": config.total_steps(config.train.steps_per_epoch),
                   "steps_scale": dict(config.train.epochs_scale or {}), "batch_size": config.train.batch_size,
                   "H": config.data.short_side, "L": config.data.short_side // config.model.k,
                   "low_input": config.eval.low_input},
        "seeds": list(seeds),
        "table": table,
        "claims": claims_from(rows, seeds),
        "plateau": plateau_check(rows, labels, seeds),
        "fig7": teacher_student_points(rows),
        "gap_closed": {arch: gap for arch, gap in (("fcos", gap_closed(rows, seeds)),
                                                   ("retinanet", gap_closed(rows, seeds, "retina_student",
                                                                            "retina_vanilla", "retinanet")))
                       if gap is not None},
        "curves": curves,
        "train_seconds": seconds,
    }


#: The report's tables in order: (``Run.table``, title).
TABLES = (("1", "Table 1: multi-scale training"), ("2", "Table 2a/2b: fusion teachers (fused vs own branches)"),
           ("2c", "Table 2c: teacher choices"), ("3a", "Table 3a: distillation losses"),
           ("4", "Table 4: the student"), ("controls", "Controls the paper never reports"),
           ("kd", "KD candidates: what could make KD beat the no-KD control (seed 0; the leads on 3 seeds)"),
           ("sr", "Same-resolution distillation: w0.5 single-scale teacher -> w0.25 student at H (SKD paper)"),
           ("fig7", "SKD paper Fig. 7: teachers of different AP, the same small student + SKD (seed 0)"),
           ("retina", "Table 4 for RetinaNet"),
           ("plateau", "Plateau check: twice the budget (seed 0; the 2x teacher on 3 seeds, for the lead students)"))
_COLUMNS = (("high/-", "@H"), ("low/-", "@L"), ("high/fused", "fused @H"), ("high/high", "H branch @H"),
            ("low/low", "L branch @L"))


def _cell(row):
    ap = row["AP"]
    if ap["n"] > 1:
        return f"{ap['mean']:.2f} ± {ap['std']:.2f} (n={ap['n']})"
    return f"{ap['mean']:.2f} (n=1)"


def format_report(result) -> str:
    b = result["budget"]
    scale = ", ".join(f"{mode} x{factor:g}" for mode, factor in (b.get("steps_scale") or {}).items())
    lines = [f"msad reproduce: {b['steps_per_run']} steps per run{f' ({scale})' if scale else ''} "
             f"(2x runs: twice), batch {b['batch_size']}, "
             f"H = {b['H']} px, L = {b['L']} px ({b['low_input']}), seeds {result['seeds']}; "
             "COCO AP on val, mean ± std over seeds", ""]
    for tab, title in TABLES:
        entries = [(name, e) for name, e in result["table"].items() if e["table"] == tab]
        if not entries:
            continue
        lines += [f"### {title}", "", "| run | steps | " + " | ".join(c for _, c in _COLUMNS) + " |",
                  "|---|---|" + "---|" * len(_COLUMNS)]
        for _, e in entries:
            cells = [_cell(e["rows"][k]) if k in e["rows"] else "" for k, _ in _COLUMNS]
            lines.append(f"| {e['label']} | {e['steps']} | " + " | ".join(cells) + " |")
        lines.append("")
    if "vanilla" in result["table"] and "low/-" in result["table"]["vanilla"]["rows"]:
        lines.append("### APs (small objects), mean over seeds")
        lines.append("")
        for name in ("single", "vanilla", "aligned", "student", "student_no_kd", "vanilla_equal"):
            e = result["table"].get(name)
            if e:
                parts = [f"{c} {e['rows'][k]['APs']['mean']:.2f}" for k, c in (("high/-", "@H"), ("low/-", "@L"))
                         if k in e["rows"]]
                lines.append(f"- {e['label']}: " + ", ".join(parts))
        lines.append("")
    plateau = result.get("plateau") or []
    if plateau:
        lines += ["### Plateau: AP at the run's steps against its twin at twice the steps (mean over the seeds "
                  "both have; within 10%: at its plateau)", "",
                  "| row | steps | AP | steps 2x | AP 2x | change | within 10% | seeds |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in plateau:
            change = "n/a" if r["change"] is None else f"{r['change']:+.1%}"
            lines.append(f"| {r['row']} | {r['steps']} | {r['AP']:.2f} | {r['steps_2x']} | {r['AP_2x']:.2f} | "
                         f"{change} | {'yes' if r['plateau'] else 'no'} | {len(r['seeds'])} |")
        lines += ["", f"- {sum(r['plateau'] for r in plateau)} of {len(plateau)} rows within 10%", ""]
    fig7 = result.get("fig7")
    if fig7:
        lines += ["### Teacher AP against student AP (SKD paper Fig. 7, seed 0)", ""]
        lines += [f"- {p['teacher']} {p['teacher_AP']:.2f} -> {p['student']} {p['student_AP']:.2f}"
                  for p in fig7["points"]]
        lines += [f"- Pearson r = {fig7['pearson_r']:.2f} over {len(fig7['points'])} teachers", ""]
    for arch, gap in (result.get("gap_closed") or {}).items():
        f, g = gap["fraction"], gap["gap_AP"]
        spread = f" ± {100 * f['std']:.0f}" if f["n"] > 1 else ""
        lines += [f"- {arch}: the student closes {100 * f['mean']:.0f}{spread}% of vanilla's H - L gap of "
                  f"{g['mean']:.1f} AP (n={f['n']}); the paper's closes {100 * gap['paper_fraction']:.0f}% "
                  f"of a {gap['paper_gap_AP']:.1f} AP gap", ""]
    for key, message in (result.get("diverged") or {}).items():
        lines.append(f"- **{key} diverged** (not in the tables): {message}")
    lines += ["", "### Claims (holds: margin above 2 standard errors of the difference over seeds)", ""]
    for c in result["claims"]:
        lines.append(f"- {c['text']}: **{c['verdict']}** (difference {c['difference']:+.2f} AP, "
                     f"threshold {c['threshold']:+.1f}, 2 SE {2 * c['se']:.2f}, n = {c['n'][0]}/{c['n'][1]})")
    return "\n".join(lines)


def write_outputs(result, out: Path) -> None:
    (out / "reproduce.json").write_text(json.dumps(result, indent=1, sort_keys=True, default=float))
    (out / "reproduce.md").write_text(format_report(result) + "\n")
    plot_curves(result, out / "reproduce_curves.png")
    plot_claims(result, out / "reproduce_claims.png")


def plot_curves(result, path) -> None:
    """AP against training steps of the seed-0 core runs (epoch checkpoints), with the twins of
    ``PLATEAU_PAIRS`` (2x the steps) as stars."""
    curves = result.get("curves") or {}
    if not curves:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, points in curves.items():
        keys = [k for k in points[0] if k != "step"] if points else []
        for key in keys:
            ax.plot([p["step"] for p in points], [p[key] for p in points], marker="o", label=f"{name} {key}")
    for name in dict.fromkeys(twin for _, twin in PLATEAU_PAIRS):
        entry = result["table"].get(name)
        if entry:
            for key, row in entry["rows"].items():
                ax.scatter([entry["steps"]], [row["AP"]["values"][0]], marker="*", s=80)
                ax.annotate(f"{name} {key}", (entry["steps"], row["AP"]["values"][0]), fontsize=7)
    ax.set_xlabel("training steps")
    ax.set_ylabel("COCO AP (val)")
    ax.set_title("AP against steps (epoch checkpoints, seed 0); stars: runs at twice the budget")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_claims(result, path) -> None:
    """Each claim's two sides as bars with the seed standard deviation."""
    claims = result.get("claims") or []
    if not claims:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(claims), figsize=(2.4 * len(claims), 4), squeeze=False)
    for ax, c in zip(axes[0], claims):
        means = [np.mean(c["a"]), np.mean(c["b"])]
        stds = [np.std(c["a"], ddof=1) if len(c["a"]) > 1 else 0, np.std(c["b"], ddof=1) if len(c["b"]) > 1 else 0]
        ax.bar([0, 1], means, yerr=stds, capsize=4, color=["tab:blue", "tab:gray"])
        ax.set_xticks([0, 1], ["claimed", "compared"])
        ax.set_title("\n".join(_wrap(c["text"], 24)) + f"\n{c['verdict']}", fontsize=7)
    axes[0][0].set_ylabel("AP (mean ± std over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _wrap(text, width):
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    return lines + [line]
