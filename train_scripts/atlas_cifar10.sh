#!/usr/bin/env bash
# The concept atlas of the shipped CIFAR-10 models (reports/atlas.md): the B-cos model trained from scratch
# and the B-cosified one, a middle layer (features.4.0: 64 channels, 16x16) and the last (features.7.0: 128
# channels, 8x8), each over the 10,000 test images.
#
#   bash train_scripts/atlas_cifar10.sh OUT [DATASET]
# Knobs (environment): MAX_NEURONS (all: every channel; reports/atlas keeps the 12 most class-specific),
# TOP (7), MIX (30), MODELS (the two above; e.g. add bcos_cifar10_w050_bcosified.aloe_cpu6e_cifar10),
# EXTRA (more flags, e.g. "--device cuda").
set -euo pipefail
OUT=${1:?usage: atlas_cifar10.sh OUT [DATASET]}
DATA=${2:-../shared/datasets/cifar10}
TOP=${TOP:-7}
MIX=${MIX:-30}
EXTRA=${EXTRA:-}
limit=()
[ -n "${MAX_NEURONS:-}" ] && limit=(--max-neurons "$MAX_NEURONS")
MODELS=${MODELS:-bcos_cifar10_w050_bnu.cpu30e_cifar10 bcos_cifar10_w050_bcosified.bcosify_cpu10e_cifar10}
for model in $MODELS; do
  for layer in features.4.0 features.7.0; do
    python -m timm_bcos atlas --model "$model" --pretrained --layer "$layer" --dataset "$DATA" --split test \
      --top "$TOP" --mix "$MIX" ${limit[@]+"${limit[@]}"} --workers 1 $EXTRA --out "$OUT/${model//./_}_${layer//./_}"
  done
done
