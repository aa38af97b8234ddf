"""1 vs N MultiWorkerMirroredStrategy workers on this host: time per step and weight difference.

    python train/compare_workers.py --out /tmp/cmp -- --config configs/demo.yaml \
        --set train.mode=teacher --set train.epochs=1 --set train.steps_per_epoch=20

Every run uses the config's global batch (train.batch_size), split across the workers.
"""
import argparse
import json
import sys

from msad_tf.training.launch import compare_worker_counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="directory for the runs (workers_<n>/) and logs")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="-- msad train arguments")
    args = parser.parse_args(argv)
    train_args = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args
    rows = compare_worker_counts(train_args, args.out, args.workers, args.timeout)
    for row in rows:
        print(f"{row['workers']} worker(s): {row['step_seconds_median']:.3f} s/step (median of timed steps), "
              f"max |w - w_{args.workers[0]}| = {row['max_abs_diff']:.3g} (relative {row['max_rel_diff']:.3g})")
    print(json.dumps(rows))


if __name__ == "__main__":
    sys.exit(main())
