#!/usr/bin/env bash
# Train the default bundles shipped in Resources/bundles/ from generated phantom data, with the
# committed seeds. Usage: scripts/train_default_bundles.sh [phantom-ct-mr|xray-drr ...] [--stage source|translator]
# Env: DATA_ROOT (task folders; made with `crossdomainseg data make` when missing, default
# build/default-bundle-data), THREADS (torch threads, default 2), OUT_ROOT (default Resources/bundles).
# --resume continues each stage from its checkpoint (BUNDLE.ckpt, removed once both stages ran).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=SlicerCrossDomainSeg${PYTHONPATH:+:$PYTHONPATH}
DATA_ROOT=${DATA_ROOT:-build/default-bundle-data}
OUT_ROOT=${OUT_ROOT:-Resources/bundles}
THREADS=${THREADS:-2}
DATA_SEED=0
STAGE=all
RESUME=
TASKS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --stage) STAGE=$2; shift 2 ;;
    --resume) RESUME=--resume; shift ;;
    *) TASKS+=("$1"); shift ;;
  esac
done
[ ${#TASKS[@]} -gt 0 ] || TASKS=(phantom-ct-mr xray-drr)
cdseg() { "$PY" -m crossdomainseg.cli "$@"; }

data_dir() {  # task, cases per domain: the task folder, generated once (same seed, same voxels)
  local dir="$DATA_ROOT/$1"
  if [ ! -f "$dir/task.json" ]; then
    cdseg data make --task "$1" --n "$2" --seed "$DATA_SEED" --out "$dir" >&2
  fi
  echo "$dir"
}

train() {  # task, cases per domain, source options, translator options
  local task=$1 n=$2 src_opts=$3 tr_opts=$4 data out
  data=$(data_dir "$task" "$n")
  out="$OUT_ROOT/$task"
  if [ "$STAGE" = all ] || [ "$STAGE" = source ]; then
    # shellcheck disable=SC2086
    cdseg train source --task-dir "$data" --out "$out" --threads "$THREADS" --version "$task-1.0" $src_opts $RESUME
  fi
  if [ "$STAGE" = all ] || [ "$STAGE" = translator ]; then
    # shellcheck disable=SC2086
    cdseg train translator --task-dir "$data" --bundle "$out" --threads "$THREADS" $tr_opts $RESUME
  fi
  [ "$STAGE" = source ] || rm -rf "$out.ckpt"
}

for task in "${TASKS[@]}"; do
  case "$task" in
    phantom-ct-mr)
      train phantom-ct-mr 30 \
        "--spacing 3 --roi 40 --channels 8,16,32,64 --res-units 1 --batch 2 --lr 2e-3 --rotated-copies 2 --max-degrees 20 --epochs 50 --steps 25 --seed 1" \
        "--patch 32 --gen-channels 8 --n-down 2 --blocks 2 --stem-kernel 3 --disc-channels 8 --disc-layers 3 --lr 3e-4 --lambda-identity 5 --lambda-seg 5 --rotated-copies 1 --max-degrees 20 --epochs 30 --steps 20 --val-cases 2 --seed 2"
      ;;
    xray-drr)
      train xray-drr 60 \
        "--spacing 2.8 --roi 128 --channels 8,16,32,64,128 --res-units 1 --batch 8 --lr 2e-3 --epochs 12 --steps 20 --seed 1" \
        "--patch 128 --gen-channels 16 --n-down 2 --blocks 3 --stem-kernel 7 --residual --disc-channels 16 --disc-layers 3 --batch 4 --lr 2e-4 --lambda-identity 5 --lambda-seg 2 --epochs 7 --steps 20 --val-cases 4 --seed 2"
      ;;
    *) echo "unknown task $task" >&2; exit 2 ;;
  esac
done
