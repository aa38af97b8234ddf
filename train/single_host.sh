#!/usr/bin/env bash
# Train the full pipeline on one machine: teacher, then the low-resolution student.
#   train/single_host.sh configs/coco_r50_teacher.yaml configs/coco_r50_student.yaml runs/coco
# Extra arguments after the three positional ones are passed to both stages (e.g. --set ...).
set -euo pipefail
teacher_config=${1:-configs/demo.yaml}
student_config=${2:-configs/demo.yaml}
out=${3:-runs/pipeline}
shift $(( $# < 3 ? $# : 3 ))
msad train --config "$teacher_config" --run-dir "$out/teacher" --set train.mode=teacher "$@"
msad distill --teacher "$out/teacher" --config "$student_config" --run-dir "$out/student" "$@"
msad evaluate --run "$out/teacher"
msad evaluate --run "$out/student" --resolutions low
