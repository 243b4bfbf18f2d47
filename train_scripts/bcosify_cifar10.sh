#!/usr/bin/env bash
# B-cosification on CIFAR-10 (reports/bcosification.md): train the conventional counterpart of the
# shipped network, B-cosify it (recipe "bcosify") and fine-tune it, the old recipe ("v2") as an
# ablation, then the grid pointing game of each model's own explanations after 1 epoch and at the end.
#
#   bash train_scripts/bcosify_cifar10.sh OUT [DATASET]
# Knobs (environment): CONV_EPOCHS (20), FT_EPOCHS (10), SUBSET (train split, "train"), VAL ("test"),
# WORKERS (4), GRIDS ("100 30"), EXTRA (more train.py flags, e.g. "--cpu"), CONV_FLAGS (train.py flags for the
# conventional run only, after the defaults so they override them, e.g. "--opt sgd --lr 0.05 --weight-decay 5e-4";
# split on spaces, so no value may hold one; a rerun into an OUT whose conventional export exists ignores them),
# RUNS (fine-tunes as name:recipe:lr[:field=value,...], default "bcosify:bcosify:1e-3 bcosify_lr1e-4:bcosify:1e-4
# ablation_v2:v2:1e-3"; the optional fields are recipe fields, e.g. learned_b:bcosify:1e-3:learn_b=true).
# Each stage is skipped when its export exists, so a rerun continues after the last finished stage.
set -euo pipefail
OUT=${1:?usage: bcosify_cifar10.sh OUT [DATASET]}
DATA=${2:-../shared/datasets/cifar10}
CONV_EPOCHS=${CONV_EPOCHS:-20}
FT_EPOCHS=${FT_EPOCHS:-10}
SUBSET=${SUBSET:-train}
VAL=${VAL:-test}
WORKERS=${WORKERS:-4}
GRIDS=${GRIDS:-100 30}
EXTRA=${EXTRA:-}
CONV_FLAGS=${CONV_FLAGS:-}
RUNS=${RUNS:-bcosify:bcosify:1e-3 bcosify_lr1e-4:bcosify:1e-4 ablation_v2:v2:1e-3}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
common=(--dataset "$DATA" --train-split "$SUBSET" --val-split "$VAL" --crop pad --batch-size 64 --workers "$WORKERS"
        --opt adam --weight-decay 0 --sched cosine --export last --no-progress --no-tensorboard $EXTRA)

# 1. the conventional network (conv + BN + ReLU, half width, softmax CE), as reports/cifar10.md trains it
if [ ! -f "$OUT/conventional/export/model.safetensors" ]; then
  python "$HERE/train.py" "${common[@]}" --model cifar_convnet --model-kwargs '{"width": 0.5}' --loss ce \
    --lr 1e-3 --epochs "$CONV_EPOCHS" --warmup-epochs 1 --warmup-lr 1e-4 $CONV_FLAGS --output "$OUT/conventional" \
    > "$OUT/conventional.log" 2>&1
fi

# 2. B-cosify it and fine-tune (BCE, Eq. 16 of the B-cos paper); train.py checkpoints after every epoch
finetune() {  # name recipe lr [field=value,...]
  local fields="{}"
  if [ -n "${4:-}" ]; then  # field=value,... -> {"field": value, ...} (values as JSON literals)
    fields="{$(echo "$4" | sed -E 's/([A-Za-z_]+)=([^,]+)/"\1": \2/g')}"
  fi
  if [ ! -f "$OUT/$1/export/model.safetensors" ]; then
    python "$HERE/train.py" "${common[@]}" --bcosify-from "local-dir:$OUT/conventional/export" --recipe "$2" \
      --recipe-kwargs "$fields" --model bcos_converted --loss bce --lr "$3" --epochs "$FT_EPOCHS" \
      --keep-checkpoints 100 --output "$OUT/$1" > "$OUT/$1.log" 2>&1
  fi
  python - "$OUT/$1" <<'EOF'  # the weights at the end of epoch 1, as a loadable folder beside the export
import json, sys
from pathlib import Path
import timm, timm_bcos
from timm_bcos.cli.common import load_weights_file
from timm_bcos.hub import save_pretrained
run = Path(sys.argv[1])
metas = {p.parent: json.loads(p.read_text()) for p in (run / "checkpoints").glob("*/train_meta.json")}
ckpt = next(d for d, m in metas.items() if m["epoch"] == 1 and m["batches_in_epoch"] == 0)
model = timm.create_model(f"local-dir:{run / 'export'}", pretrained=True)
model.load_state_dict(load_weights_file(next(ckpt.glob("model*.safetensors"))))
save_pretrained(model, run / "epoch1")
EOF
}
for spec in $RUNS; do
  IFS=: read -r name recipe lr fields <<< "$spec"
  finetune "$name" "$recipe" "$lr" "$fields" &
done
wait

# 3. the grid pointing game of each model's own explanations (2x2 and 3x3), after 1 epoch and at the end
models=(bcos_cifar10_w050_bnu)
names=("from scratch (shipped, 30 epochs)")
for spec in $RUNS; do
  run=${spec%%:*}
  models+=("local-dir:$OUT/$run/epoch1" "local-dir:$OUT/$run/export")
  names+=("$run, epoch 1" "$run, epoch $FT_EPOCHS")
done
python "$HERE/evaluate.py" --dataset "$DATA" --split "$VAL" --models "${models[@]}" --names "${names[@]}" --pretrained \
  --grid 2 3 --num-grids $GRIDS --methods own --workers "$WORKERS" --out "$OUT/eval" > "$OUT/eval.log" 2>&1
