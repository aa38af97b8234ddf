"""Single-scale and vanilla at 12800 steps (4x the session-13 demo's 3200), seed 0: the twins of
the 6400-step runs. `python docs/results/probes/plateau_s14/x4.py` (docs/RESULTS.md, session 14);
epochs as written (train.epochs_scale off)."""
from msad_tf.demo import run_demo

FOUR = ["train.epochs_scale=null", "train.epochs=40", "train.lr_decay_epochs=[28,36]"]
RUNS = (
    ("single", "single-scale", ["train.mode=single"] + FOUR, ("high", "low")),
    ("vanilla", "vanilla multi-scale", ["train.mode=vanilla_multiscale"] + FOUR, ("high", "low")),
)
if __name__ == "__main__":
    run_demo("configs/demo.yaml", "runs/x4", runs_to_do=RUNS, results_name="results_x4",
             title="demo model, 12800 steps", export_student=False, jobs=2)
