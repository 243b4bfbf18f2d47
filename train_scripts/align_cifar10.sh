#!/usr/bin/env bash
# B-cosify without labels on CIFAR-10 (reports/alignment.md): align the B-cosified copy of a trained
# conventional cifar_convnet (w0.5) to it on 100%, 10% and 1% of the training images, train a B-cos model
# from scratch with labels on the same 10% for the same number of steps, then evaluate every model:
# accuracy with its own head, k-NN and linear probes, and the grid pointing game of its own explanations.
#
#   bash train_scripts/align_cifar10.sh TEACHER_FOLDER OUT [DATASET]
# TEACHER_FOLDER: a save_pretrained folder of the conventional model (train.py's OUTPUT/export).
# Knobs (environment): EPOCHS (10), FRACTIONS ("100 10 1"), SCRATCH ("10": fractions trained from scratch
# with labels), ALIGN_FLAGS (more train.py flags for the aligned runs, e.g. "--align-logits cosine"),
# PROBE_SPLIT ("train[:10000]"), GRIDS ("100 30"), EVAL_EPOCHS (epochs of the full run evaluated, default all),
# WORKERS (1), EXTRA (more flags for every run, e.g. "--cpu").
# Each stage is skipped when its output exists, so a rerun continues after the last finished stage.
set -euo pipefail
TEACHER=${1:?usage: align_cifar10.sh TEACHER_FOLDER OUT [DATASET]}
OUT=${2:?usage: align_cifar10.sh TEACHER_FOLDER OUT [DATASET]}
DATA=${3:-../shared/datasets/cifar10}
EPOCHS=${EPOCHS:-10}
FRACTIONS=${FRACTIONS:-100 10 1}
SCRATCH=${SCRATCH-10}  # empty: no from-scratch run
ALIGN_FLAGS=${ALIGN_FLAGS:-}
PROBE_SPLIT=${PROBE_SPLIT:-train[:10000]}
GRIDS=${GRIDS:-100 30}
WORKERS=${WORKERS:-1}
EXTRA=${EXTRA:-}
EVAL_EPOCHS=${EVAL_EPOCHS:-$(seq 1 "$EPOCHS")}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
split() { if [ "$1" = 100 ]; then echo train; else echo "train[:$1%]"; fi; }
common=(--dataset "$DATA" --val-split test --crop pad --batch-size 64 --workers "$WORKERS" --epochs "$EPOCHS"
        --sched cosine --export last --keep-checkpoints 100 --no-progress --no-tensorboard $EXTRA)

# 1. aligned without labels (the labels in the split are not read): Adam 1e-3, cosine to 0, as the labelled
#    B-cosification of reports/bcosification.md
for f in $FRACTIONS; do
  if [ ! -f "$OUT/aligned_$f/export/model.safetensors" ]; then
    python "$HERE/train.py" "${common[@]}" --train-split "$(split "$f")" --align-to "local-dir:$TEACHER" \
      --opt adam --lr 1e-3 --weight-decay 0 $ALIGN_FLAGS --output "$OUT/aligned_$f" > "$OUT/aligned_$f.log" 2>&1
  fi
done
# 2. B-cos from scratch with labels on the same images, same batch and epochs (so the same steps)
for f in $SCRATCH; do
  if [ ! -f "$OUT/scratch_$f/export/model.safetensors" ]; then
    python "$HERE/train.py" --config "$HERE/configs/cifar10_bcos_cpu.yaml" "${common[@]}" --train-split "$(split "$f")" \
      --output "$OUT/scratch_$f" > "$OUT/scratch_$f.log" 2>&1
  fi
done
# 3. every epoch of the full aligned run as a loadable folder (its checkpoints hold the weights only)
python - "$OUT/aligned_100" <<'PY'
import json, sys
from pathlib import Path
import timm, timm_bcos
from timm_bcos.cli.common import load_weights_file
from timm_bcos.hub import save_pretrained
run = Path(sys.argv[1])
if run.is_dir():
    for meta in sorted((run / "checkpoints").glob("*/train_meta.json")):
        m = json.loads(meta.read_text())
        folder = run / f"epoch{m['epoch']}"
        if m["batches_in_epoch"] == 0 and m["epoch"] > 0 and not folder.exists():
            model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
            model.load_state_dict(load_weights_file(next(meta.parent.glob("model*.safetensors"))))
            save_pretrained(model, folder)
PY
# 4. evaluation: accuracy (own head), probes, pointing game of the own explanations
models=("local-dir:$TEACHER") names=("teacher (conventional)")
for e in $EVAL_EPOCHS; do
  [ -d "$OUT/aligned_100/epoch$e" ] && models+=("local-dir:$OUT/aligned_100/epoch$e") && names+=("aligned 100%, epoch $e")
done
for f in $FRACTIONS; do [ "$f" != 100 ] && models+=("local-dir:$OUT/aligned_$f/export") && names+=("aligned $f%"); done
for f in $SCRATCH; do models+=("local-dir:$OUT/scratch_$f/export") && names+=("from scratch $f% (labels)"); done
python "$HERE/evaluate.py" --dataset "$DATA" --split test --models "${models[@]}" --names "${names[@]}" \
  --probe knn linear --probe-train-split "$PROBE_SPLIT" --grid 2 3 --num-grids $GRIDS --methods own \
  --workers "$WORKERS" --out "$OUT/eval" > "$OUT/eval.log" 2>&1
