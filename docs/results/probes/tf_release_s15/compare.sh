#!/bin/bash
# Step time of the demo's train steps under two TensorFlow releases, interleaved (session 15).
# Usage: bash compare.sh VENV_A VENV_B OUT_DIR   (each venv has msad_tf installed)
set -e
A=$1; B=$2; OUT=$3; mkdir -p "$OUT"
for round in 1 2; do
  for v in "$A" "$B"; do
    tag=$(basename "$v")_r$round
    "$v/bin/msad" benchmark train --config configs/demo.yaml --modes single teacher student \
      --speedups --steps 30 --rounds 1 --json "$OUT/$tag.json" > "$OUT/$tag.txt" 2>&1
  done
done
