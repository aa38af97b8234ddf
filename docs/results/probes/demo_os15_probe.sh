#!/bin/bash
# demo plateau probes: single-scale at N and 2N steps on candidate datasets
cd /work/main && source .venv/bin/activate
for spec in "os15 data/msad_synth128_os15 100" "os15 data/msad_synth128_os15 200"; do
  set -- $spec
  run=runs/demo_probe/single_$1_spe$3
  [ -f $run/eval_done ] && continue
  msad train --config configs/demo.yaml --set data.root=$2 --set train.steps_per_epoch=$3 --set train.mode=single --run-dir $run --quiet > $run.log 2>&1 || exit 1
  msad evaluate --run $run --resolutions high low --quiet >> $run.log 2>&1
  touch $run/eval_done
done
