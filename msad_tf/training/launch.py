"""Start N local worker processes of one command for MultiWorkerMirroredStrategy.

Each worker gets its own TF_CONFIG on 127.0.0.1 (free ports, worker 0 is the chief). This is
for testing and single-host use; on a real cluster run one command per host with that host's
TF_CONFIG (see train/README.md).

    python -m msad_tf.training.launch --workers 2 --log-dir runs/mw/logs_workers -- \\
        msad train --strategy multi_worker --config configs/demo.yaml --run-dir runs/mw
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct TCP ports that were free a moment ago."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def tf_config(workers: list[str], index: int) -> str:
    """TF_CONFIG JSON of worker ``index`` in a cluster of ``workers`` (host:port strings)."""
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def _pump(stream, sink, prefix: str) -> None:
    for line in iter(stream.readline, b""):
        sink.write(prefix + line.decode(errors="replace"))
        sink.flush()
    stream.close()


def launch_local_workers(
    command: list[str],
    num_workers: int,
    *,
    log_dir: str | Path | None = None,
    timeout: float | None = None,
    env: dict | None = None,
    host: str = "127.0.0.1",
    grace: float = 30.0,
) -> list[int]:
    """Run ``command`` as ``num_workers`` workers of one cluster and wait for all of them.

    Args:
      command: argv of one worker (e.g. ``["msad", "train", "--strategy", "multi_worker", ...]``).
      num_workers: number of processes; worker 0 is the chief.
      log_dir: write worker i's stdout+stderr to ``log_dir/worker_i.log``; default: this
        process's stdout, each line prefixed with ``[worker i]``.
      timeout: seconds before every worker still running is killed.
      env: base environment (default ``os.environ``); TF_CONFIG is set per worker.
      grace: once a worker fails, seconds the others get to finish before they are killed
        (a lost peer leaves the others blocked in a collective).
    Returns:
      exit codes per worker (negative: killed by that signal).
    """
    if num_workers < 1:
        raise ValueError(f"num_workers {num_workers} must be >= 1")
    workers = [f"{host}:{port}" for port in free_ports(num_workers, host)]
    base_env = dict(os.environ if env is None else env)
    if log_dir is not None:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
    procs, pumps, logs = [], [], []
    for index in range(num_workers):
        worker_env = dict(base_env, TF_CONFIG=tf_config(workers, index))
        worker_env.setdefault("MSAD_PROCESSES", str(num_workers))
        if log_dir is not None:
            log = open(Path(log_dir) / f"worker_{index}.log", "wb")
            logs.append(log)
            procs.append(subprocess.Popen(command, env=worker_env, stdout=log, stderr=subprocess.STDOUT))
        else:
            proc = subprocess.Popen(command, env=worker_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            pump = threading.Thread(
                target=_pump, args=(proc.stdout, sys.stdout, f"[worker {index}] "), daemon=True
            )
            pump.start()
            procs.append(proc)
            pumps.append(pump)
    deadline = None if timeout is None else time.monotonic() + timeout
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.returncode not in (None, 0) for p in procs):
                failed_at = now
            if (deadline is not None and now > deadline) or (failed_at is not None and now - failed_at > grace):
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pump in pumps:
            pump.join(timeout=5)
        for log in logs:
            log.close()
    return [p.returncode for p in procs]


def h5_arrays(path) -> dict:
    """Every dataset of an HDF5 weights file, by its path inside the file."""
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def compare_worker_counts(
    train_args: list[str], out_dir, counts=(1, 2), timeout: float | None = None
) -> list[dict]:
    """Train the same config with each number of workers (same global batch) and compare.

    Runs ``msad train TRAIN_ARGS --strategy multi_worker --run-dir OUT_DIR/workers_<n>`` for each
    n in ``counts``. Returns one row per count: workers, step_seconds_median (traced first step
    excluded), max_abs_diff and max_rel_diff (|difference| / max(|w|, 1e-3)) of the final weights
    (model and optimizer state) against the first count's run.
    """
    import numpy as np

    rows, reference = [], None
    for n in counts:
        run_dir = Path(out_dir) / f"workers_{n}"
        command = [sys.executable, "-m", "msad_tf.cli", "train", *train_args, "--strategy", "multi_worker",
                   "--run-dir", str(run_dir), "--quiet"]
        codes = launch_local_workers(command, n, log_dir=Path(out_dir) / f"workers_{n}.logs", timeout=timeout)
        if any(codes):
            raise RuntimeError(f"{n} workers: exit codes {codes}; logs in {Path(out_dir) / f'workers_{n}.logs'}")
        weights = h5_arrays(run_dir / "model.weights.h5")
        train = json.loads((run_dir / "metrics.json").read_text())["train"]
        row = {"workers": n, "step_seconds_median": train.get("step_seconds_median"), "steps": train["steps"]}
        reference = reference or weights
        diffs = [np.abs(weights[k].astype(np.float64) - reference[k]) for k in reference if reference[k].size]
        row["max_abs_diff"] = max(float(d.max()) for d in diffs)
        row["max_rel_diff"] = max(
            float((d / np.maximum(np.abs(reference[k]), 1e-3)).max())
            for d, k in zip(diffs, [k for k in reference if reference[k].size])
        )
        rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m msad_tf.training.launch",
        description="Run a command as N MultiWorkerMirroredStrategy workers on 127.0.0.1.",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--log-dir", help="one log file per worker (default: prefixed lines on stdout)")
    parser.add_argument("--timeout", type=float, help="kill every worker after this many seconds")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given: ... -- msad train --strategy multi_worker ...")
    codes = launch_local_workers(command, args.workers, log_dir=args.log_dir, timeout=args.timeout)
    for index, code in enumerate(codes):
        if code:
            print(f"worker {index} exited with {code}", file=sys.stderr)
    return next((code if code > 0 else 1 for code in codes if code), 0)


if __name__ == "__main__":
    sys.exit(main())
