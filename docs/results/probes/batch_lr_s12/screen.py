"""Screen convergence settings on the demo's single-scale run: 1x and 2x twins per candidate."""
import sys
from msad_tf.demo import run_demo

CANDIDATES = {
    "lr2x": ["train.base_lr=0.008"],
    "b16": ["train.batch_size=16"],
}
def main():
    names = sys.argv[1:] or list(CANDIDATES)
    runs = []
    for name in names:
        extra = CANDIDATES[name]
        runs.append((f"{name}_1x", f"{name} 1x", ["train.mode=single"] + extra, ("high", "low")))
        runs.append((f"{name}_2x", f"{name} 2x", ["train.mode=single", "train.epochs=20", "train.lr_decay_epochs=[14,18]"] + extra,
                     ("high", "low")))
    run_demo("configs/demo.yaml", "runs/screen", runs_to_do=tuple(runs), results_name="screen_" + "_".join(names),
             export_student=False, jobs=2)


if __name__ == "__main__":
    main()
