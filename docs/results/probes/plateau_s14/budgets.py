"""`python docs/results/probes/plateau_s14/budgets.py` (docs/RESULTS.md, session 14), epochs as
written (train.epochs_scale off). Per-pipeline budgets at the demo's model, seed 0: single-scale
and vanilla at 4800 steps (the teacher's 3200 + a 1600-step student) and their twins at 9600; the
teacher at 3200; the student and its no-KD control at 1600 (their twins at 3200 are the demo's
students)."""
from msad_tf.demo import run_demo

T = "train.teacher_run={out}/teacher"
W = "train.epochs_scale=null"
RUNS = (
    ("teacher", "fusion teacher", ["train.mode=teacher"], ("high", "low")),
    ("vanilla_9600", "vanilla multi-scale 9600", ["train.mode=vanilla_multiscale", W, "train.epochs=30",
                                                   "train.lr_decay_epochs=[21,27]"], ("high", "low")),
    ("single_9600", "single-scale 9600", ["train.mode=single", W, "train.epochs=30", "train.lr_decay_epochs=[21,27]"],
     ("high", "low")),
    ("vanilla_4800", "vanilla multi-scale 4800", ["train.mode=vanilla_multiscale", W, "train.epochs=15",
                                                   "train.lr_decay_epochs=[10.5,13.5]"], ("high", "low")),
    ("single_4800", "single-scale 4800", ["train.mode=single", W, "train.epochs=15",
                                          "train.lr_decay_epochs=[10.5,13.5]"], ("high", "low")),
    ("student_1600", "MSAD student 1600", ["train.mode=student", W, T, "train.epochs=5",
                                           "train.lr_decay_epochs=[3.5,4.5]"], ("low",)),
    ("student_no_kd_1600", "student without KD 1600", ["train.mode=student", W, T, "train.gamma=0", "train.epochs=5",
                                                       "train.lr_decay_epochs=[3.5,4.5]"], ("low",)),
)
if __name__ == "__main__":
    run_demo("configs/demo.yaml", "runs/v_budgets", runs_to_do=RUNS, results_name="results_budgets",
             title="demo model, per-pipeline budgets", export_student=False, jobs=2)
