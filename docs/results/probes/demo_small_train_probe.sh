#!/bin/bash
# demo plateau probes (session 8): a smaller training set (data-limited plateau).
# single-scale at N and 2N steps; the val set is the same 200 images as the demo's.
cd /work/main && source .venv/bin/activate
for n in 200; do
  [ -d data/msad_synth128_n$n ] || msad make-dataset --out data/msad_synth128_n$n --num-train $n --quiet
done
for spec in "n200 data/msad_synth128_n200 100" "n200 data/msad_synth128_n200 200"; do
  set -- $spec
  run=runs/demo_probe/single_$1_spe$3
  [ -f $run/eval_done ] && continue
  mkdir -p $run
  msad train --config configs/demo.yaml --set data.root=$2 --set train.steps_per_epoch=$3 --set train.mode=single --run-dir $run --quiet > $run.log 2>&1 || exit 1
  msad evaluate --run $run --resolutions high low --quiet >> $run.log 2>&1
  touch $run/eval_done
done
