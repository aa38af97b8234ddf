"""Ablation suites on the embedded dataset: the paper's Tables 1-3 at demo scale.

Every run uses the demo config and its budgets (each mode's ``train.epochs_scale``; the
``budget`` and ``equal`` suites train the epochs they write), lives next to the demo's runs in
OUT (so ``msad ablation --out runs/demo`` reuses the demo's single, vanilla, teacher and student
runs), and is evaluated with COCOeval at H and/or L. Each suite prints one table and writes
OUT/ablation_<suite>.{md,json}.

Suites
  teacher   aligned multi-scale training and the fused teacher with each fusion variant
            (paper Tables 1 and 2a/2b: vanilla vs aligned, C-FF vs SC-SUM, CC, sigmoid, channel).
  student   the student with each distillation loss, aligned and not aligned (Table 3a), the
            three teacher targets (Table 2c) and the no-KD control (gamma = 0, same init). The SKD
            rows clip the global gradient norm at 10: without it SKD diverged (NaN) at step 86.
  budget    vanilla and aligned multi-scale at twice the demo budget (does aligned L overtake
            vanilla L with more steps?).
  equal     equal total training: teacher 800 steps + student 800 steps against vanilla
            multi-scale 1600 steps (the student inherits the teacher's training).
  k4        k = 4 (L = H / 4, the low-res branch reads P1'..P5'): teacher and student.
  seeds     vanilla and aligned multi-scale and the C-FF teacher again with seed 1: the run-to-run
            spread that the differences in the other tables must be read against.
"""
from __future__ import annotations

from msad_tf.losses.distillation import DISTILLATION_LOSSES

_TEACHER = "train.teacher_run={out}/teacher"
_STUDENT = ["train.mode=student", _TEACHER]
#: the budget and equal suites train the epochs they write (2x and 4x the demo's 10), whatever the
#: config's ``train.epochs_scale``
_AS_WRITTEN = "train.epochs_scale=null"

SUITES = {
    "teacher": (
        ("single", "single-scale", ["train.mode=single"], ("high", "low")),
        ("vanilla", "vanilla multi-scale", ["train.mode=vanilla_multiscale"], ("high", "low")),
        ("aligned", "aligned multi-scale", ["train.mode=aligned"], ("high", "low")),
        ("teacher", "teacher C-FF", ["train.mode=teacher"], ("high",)),
        *(
            (f"teacher_{fusion}", f"teacher {label}", ["train.mode=teacher", f"model.fusion={fusion}"], ("high",))
            for fusion, label in (("sc_sum", "SC-SUM"), ("cc", "CC"), ("sigmoid", "sigmoid (SE)"),
                                  ("channel", "channel-wise"))
        ),
    ),
    "student": (
        ("vanilla", "vanilla multi-scale", ["train.mode=vanilla_multiscale"], ("high", "low")),
        ("student", "student msad_l1 aligned", _STUDENT, ("low",)),
        *(
            (f"student_{loss}" + ("" if aligned else "_na"),
             f"student {loss} {'aligned' if aligned else 'not aligned'}",
             _STUDENT + [f"train.distill_loss={loss}", f"train.aligned={str(aligned).lower()}"]
             + (["train.clipnorm=10"] if loss == "skd_paper" else []), ("low",))
            for loss in DISTILLATION_LOSSES for aligned in (True, False) if (loss, aligned) != ("msad_l1", True)
        ),
        ("student_target_high", "student, teacher target = high-res pyramid",
         _STUDENT + ["train.teacher_target=high"], ("low",)),
        ("student_target_low", "student, teacher target = aligned low-res pyramid",
         _STUDENT + ["train.teacher_target=low"], ("low",)),
        ("student_no_kd", "student without KD (gamma 0, teacher init)", _STUDENT + ["train.gamma=0"], ("low",)),
        ("student_tau1", "student msad_l1 aligned, tau 1", _STUDENT + ["train.tau=1"], ("low",)),
    ),
    "budget": (
        ("vanilla_2x", "vanilla multi-scale, 2x steps",
         ["train.mode=vanilla_multiscale", _AS_WRITTEN, "train.epochs=20", "train.lr_decay_epochs=[14,18]"],
         ("high", "low")),
        ("aligned_2x", "aligned multi-scale, 2x steps",
         ["train.mode=aligned", _AS_WRITTEN, "train.epochs=20", "train.lr_decay_epochs=[14,18]"], ("high", "low")),
    ),
    "equal": (
        ("teacher_2x", "teacher C-FF, 2x steps",
         ["train.mode=teacher", _AS_WRITTEN, "train.epochs=20", "train.lr_decay_epochs=[14,18]"], ("high", "low")),
        ("student_2x", "student msad_l1 (teacher 2x), 2x steps",
         ["train.mode=student", "train.teacher_run={out}/teacher_2x", _AS_WRITTEN, "train.epochs=20",
          "train.lr_decay_epochs=[14,18]"], ("low",)),
        ("student_2x_no_kd", "student without KD (teacher 2x, gamma 0), 2x steps",
         ["train.mode=student", "train.teacher_run={out}/teacher_2x", _AS_WRITTEN, "train.epochs=20",
          "train.lr_decay_epochs=[14,18]", "train.gamma=0"], ("low",)),
        ("vanilla_4x", "vanilla multi-scale, 4x steps",
         ["train.mode=vanilla_multiscale", _AS_WRITTEN, "train.epochs=40", "train.lr_decay_epochs=[28,36]"],
         ("high", "low")),
    ),
    "k4": (
        ("teacher_k4", "teacher C-FF, k = 4", ["train.mode=teacher", "model.k=4"], ("high", "low")),
        ("student_k4", "student msad_l1, k = 4",
         ["train.mode=student", "model.k=4", "train.teacher_run={out}/teacher_k4"], ("low",)),
    ),
    "seeds": tuple(
        (f"{name}_seed1", f"{label}, seed 1", [f"train.mode={mode}", "train.seed=1"], resolutions)
        for name, label, mode, resolutions in (
            ("vanilla", "vanilla multi-scale", "vanilla_multiscale", ("high", "low")),
            ("aligned", "aligned multi-scale", "aligned", ("high", "low")),
            ("teacher", "teacher C-FF", "teacher", ("high", "low")),
        )
    ),
}


def run_ablation(suite, config_path="configs/demo.yaml", out="runs/demo", data_root="data/msad_synth128",
                 overrides=None, force=False, only=None):
    """Train (or reuse) and evaluate every run of ``suite``; returns {row: metrics}.

    ``only``: restrict to these run names (the teacher run a student suite needs is trained
    first when missing).
    """
    from msad_tf.demo import run_demo

    if suite not in SUITES:
        raise ValueError(f"unknown ablation suite '{suite}': choose {', '.join(SUITES)}")
    runs_to_do = SUITES[suite]
    if only:
        unknown = sorted(set(only) - {r[0] for r in runs_to_do})
        if unknown:
            raise ValueError(f"suite {suite} has no run(s) {', '.join(unknown)}")
        runs_to_do = tuple(r for r in runs_to_do if r[0] in only)
    if suite == "student":
        teacher = next(r for r in SUITES["teacher"] if r[0] == "teacher")
        runs_to_do = ((teacher[0], teacher[1], teacher[2], ()),) + tuple(runs_to_do)
    return run_demo(config_path=config_path, out=out, data_root=data_root, overrides=overrides, force=force,
                    runs_to_do=runs_to_do, results_name=f"ablation_{suite}", title=f"Ablation '{suite}': COCO metrics",
                    export_student=False)
