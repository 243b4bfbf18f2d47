#!/usr/bin/env bash
# Fig. 5 and the trend of Tab. 1 at CPU scale (issue 39): B-cos CIFAR-10 networks (bcos_cifar10, the paper's
# 9-layer network) for several B with MaxOut (max_out=2, as the paper's Tab. 1), plus B=2 without MaxOut, all at
# one budget (width, epochs, data, batch, optimiser, seed); then every model's accuracy, grid pointing game of
# its own explanations and Quantus metrics (evaluate.py), and OUT/b_sweep.png / OUT/b_sweep.md (plot_b_sweep.py).
#
#   bash train_scripts/b_sweep_cifar10.sh OUT [DATASET]
# DATASET: ../shared/datasets/cifar10 by default. Knobs (environment):
#   BS ("1 1.25 1.5 1.75 2 2.25 2.5": B trained with MaxOut), PLAIN ("2": B trained without MaxOut; "" for none),
#   WIDTH (0.25), NORM (true: uncentered batch norm, as every CPU recipe here), EPOCHS (3), WARMUP (0 warm-up
#   epochs), TRAIN_SPLIT ("train"), MAX_TRAIN (first N training images; "" for all), BATCH (64), SEED (0),
#   VAL_SAMPLES (test images validated after each epoch; "" for all 10,000),
#   GRIDS ("200 100": 2x2 and 3x3 grids), METRICS ("pixel_flipping random_logit mprt sparseness"; "" for none),
#   METRICS_IMAGES (64), JOBS (2: runs side by side), THREADS (1: torch threads per run), PYTHON (python),
#   EXTRA (more train.py flags for every run).
# The rest is train_scripts/configs/cifar10_bcos_cpu.yaml (Adam 1e-3, cosine, BCE, pad crop). JOBS x THREADS
# should not exceed the cores: two one-thread runs side by side make the best use of 2 cores (no loader
# worker, no threads waiting on each other).
# The default budget (width 0.25, 3 epochs of the 50,000 training images, full test split validated each epoch)
# is sized to about 50 min for the whole sweep on 2 CPU cores with nothing else running: ~225 s per epoch for each
# of two one-thread MaxOut runs side by side (reports/cifar10.md, "B=1 vs B=2"), 4 MaxOut runs in a row per slot
# (~46 min; the plain run costs about a third of one), then ~1 min of evaluation per model, two at a time.
# Each stage is skipped when its output exists, and an interrupted training resumes from its newest checkpoint
# (--resume latest, every 200 steps and at each epoch end), so a rerun with the same knobs continues where the
# sweep stopped. The budget knobs are kept in OUT/budget.txt; a rerun with other values is refused (use
# another OUT).
set -euo pipefail
OUT=${1:?usage: b_sweep_cifar10.sh OUT [DATASET]}
DATA=${2:-../shared/datasets/cifar10}
BS=${BS:-1 1.25 1.5 1.75 2 2.25 2.5}
PLAIN=${PLAIN-2}
WIDTH=${WIDTH:-0.25}
NORM=${NORM:-true}
EPOCHS=${EPOCHS:-3}
WARMUP=${WARMUP:-0}
TRAIN_SPLIT=${TRAIN_SPLIT:-train}
MAX_TRAIN=${MAX_TRAIN:-}
BATCH=${BATCH:-64}
SEED=${SEED:-0}
VAL_SAMPLES=${VAL_SAMPLES:-}
GRIDS=${GRIDS:-200 100}
METRICS=${METRICS-pixel_flipping random_logit mprt sparseness}
METRICS_IMAGES=${METRICS_IMAGES:-64}
JOBS=${JOBS:-2}
THREADS=${THREADS:-1}
PYTHON=${PYTHON:-python}
EXTRA=${EXTRA:-}
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT/eval"

budget="WIDTH=$WIDTH NORM=$NORM EPOCHS=$EPOCHS WARMUP=$WARMUP TRAIN_SPLIT=$TRAIN_SPLIT MAX_TRAIN=$MAX_TRAIN"
budget+=" BATCH=$BATCH SEED=$SEED VAL_SAMPLES=$VAL_SAMPLES EXTRA=$EXTRA"
if [ -f "$OUT/budget.txt" ] && [ "$(cat "$OUT/budget.txt")" != "$budget" ]; then
  echo "error: $OUT was trained with $(cat "$OUT/budget.txt"), not $budget: rerun with those knobs or another OUT" >&2
  exit 2
fi
echo "$budget" > "$OUT/budget.txt"

runs=()  # "name b max_out", MaxOut runs first, then the plain ones
for b in $BS; do runs+=("b${b}_maxout2 $b 2"); done
for b in $PLAIN; do runs+=("b${b}_plain $b 1"); done
float() { case $1 in *.*) echo "$1" ;; *) echo "$1.0" ;; esac; }

# JOBS at a time; waits for all, then fails if any failed
pending=0 failed=0
trap 'kill $(jobs -pr) 2>/dev/null || true' EXIT
trap 'exit 143' TERM INT
slot() { if [ "$pending" -ge "$JOBS" ]; then wait -n || failed=1; pending=$((pending - 1)); fi; }
drain() { while [ "$pending" -gt 0 ]; do wait -n || failed=1; pending=$((pending - 1)); done
          if [ "$failed" != 0 ]; then echo "error: a $1 failed (see $OUT/*.log)" >&2; exit 1; fi; }

# 1. training: one data set, recipe, budget and seed for every B; logs appended, so a resumed run keeps its start
train_one() {  # name b max_out (run in the background: exec leaves no shell between the sweep and python)
  local kwargs
  kwargs="{\"width\": $WIDTH, \"norm\": $NORM, \"max_out\": $3, \"b\": $(float "$2")}"
  echo "== $(date -Is) $PYTHON train.py --model-kwargs '$kwargs'" >> "$OUT/$1.log"
  exec "$PYTHON" "$HERE/train.py" --config "$HERE/configs/cifar10_bcos_cpu.yaml" --dataset "$DATA" \
    --model-kwargs "$kwargs" --train-split "$TRAIN_SPLIT" ${MAX_TRAIN:+--max-train-samples "$MAX_TRAIN"} \
    --val-split test ${VAL_SAMPLES:+--max-val-samples "$VAL_SAMPLES"} --batch-size "$BATCH" --epochs "$EPOCHS" \
    --warmup-epochs "$WARMUP" --seed "$SEED" --workers 0 --export last --no-progress --no-tensorboard \
    --resume latest $EXTRA --output "$OUT/$1" >> "$OUT/$1.log" 2>&1
}
# each run whose output file (a printf pattern of its name) is missing: `fn name b max_out`, JOBS at a time
each_missing() {  # fn pattern
  local fn=$1 pattern=$2 r
  for r in "${runs[@]}"; do
    set -- $r
    [ -f "$(printf "$pattern" "$1")" ] && continue
    slot; "$fn" "$@" & pending=$((pending + 1))
  done
}
each_missing train_one "$OUT/%s/export/model.safetensors"
drain training

# 2. evaluation, one folder per model (a rerun repeats only the missing ones): accuracy on the test split, grid
#    pointing game of the own explanations, Quantus metrics of the own explanations
eval_one() {  # name
  exec "$PYTHON" "$HERE/evaluate.py" --dataset "$DATA" --split test --models "local-dir:$OUT/$1/export" --names "$1" \
    --methods own --grid 2 3 --num-grids $GRIDS ${METRICS:+--metrics $METRICS --metrics-images "$METRICS_IMAGES"} \
    --workers 0 --threads "$THREADS" --out "$OUT/eval/$1" > "$OUT/eval/$1.log" 2>&1
}
each_missing eval_one "$OUT/eval/%s/results.json"
drain evaluation

# 3. OUT/b_sweep.png and OUT/b_sweep.md (cheap: always redrawn)
"$PYTHON" "$HERE/plot_b_sweep.py" "$OUT"
