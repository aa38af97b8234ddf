#!/bin/bash
# Thread-pool settings probe: each setting in its own processes, settings interleaved over 2 rounds.
cd /work/main && . .venv/bin/activate
for round in 1 2; do
  for s in "0 0" "1 1" "1 2" "2 1"; do
    set -- $s
    echo "=== round $round intra=$1 inter=$2 $(date +%T)"
    TF_NUM_INTRAOP_THREADS=$1 TF_NUM_INTEROP_THREADS=$2 msad benchmark train --config configs/demo.yaml \
      --modes single teacher student --processes 1 2 --steps 8 --rounds 3 \
      --json runs/threads/r${round}_intra$1_inter$2.json 2>&1 | grep -v "^  "
  done
done
echo done $(date +%T)
