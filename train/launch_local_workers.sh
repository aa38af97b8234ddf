#!/usr/bin/env bash
# Run `msad train` (or `msad distill`) as N MultiWorkerMirroredStrategy workers on this host,
# each with its own TF_CONFIG on 127.0.0.1 (for testing; see train/README.md for a cluster).
#   train/launch_local_workers.sh 2 train --config configs/demo.yaml --run-dir runs/mw2
#   train/launch_local_workers.sh 2 distill --teacher runs/mw2 --run-dir runs/mw2_student
# Worker logs: RUN_DIR.workers/worker_<i>.log (MSAD_WORKER_LOGS overrides). Set
# MSAD_WORKER_TIMEOUT (seconds) to kill every worker after that long; PYTHON picks the interpreter.
set -euo pipefail
workers=${1:?usage: launch_local_workers.sh NUM_WORKERS train|distill ARGS...}
shift
run_dir=runs/multi_worker
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  if [[ ${args[$i]} == --run-dir ]]; then run_dir=${args[$((i + 1))]}; fi
done
timeout_args=()
if [[ -n ${MSAD_WORKER_TIMEOUT:-} ]]; then timeout_args=(--timeout "$MSAD_WORKER_TIMEOUT"); fi
python=${PYTHON:-python}
exec "$python" -m msad_tf.training.launch --workers "$workers" --log-dir "${MSAD_WORKER_LOGS:-$run_dir.workers}" \
  "${timeout_args[@]}" -- "$python" -m msad_tf.cli "$@" --strategy multi_worker
