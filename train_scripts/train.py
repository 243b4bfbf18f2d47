#!/usr/bin/env python
"""Train or fine-tune any timm model (B-cos or conventional) with Hugging Face Accelerate.

From one CPU process to multi-node GPUs, the same script:

  pip install -e ".[train]"                  # from a clone of timm_bcos
  # CIFAR-10, the paper's 9-layer B-cos network, one process:
  python train_scripts/train.py --config train_scripts/configs/cifar10_bcos.yaml \\
      --dataset uoft-cs/cifar10 --output runs/cifar10
  # ImageNet, B-cos v2 recipe, 8 GPUs (accelerate configs in train_scripts/configs/accelerate/):
  accelerate launch --config_file train_scripts/configs/accelerate/8gpu.yaml train_scripts/train.py \\
      --config train_scripts/configs/imagenet_bcos_v2.yaml --model bcos_resnet50 \\
      --dataset ILSVRC/imagenet-1k --output runs/resnet50
  # fine-tune a released B-cos model on your own folder (one subfolder per class):
  accelerate launch train_scripts/train.py --config train_scripts/configs/finetune.yaml \\
      --model bcos_resnet50 --pretrained --dataset path/to/folder --output runs/mine

Every option can be set in the YAML file (same names, with underscores) and overridden
on the command line. --batch-size is the global batch (split across processes), so a
recipe means the same thing on 1 or 64 GPUs. Interrupted runs continue with
--resume latest, exactly where they stopped (model, optimiser, EMA, data position, RNG);
under `torchrun --max-restarts N` a job that loses a worker restarts and resumes by itself.
At the end the EMA (or best) weights are exported in the Hugging Face Hub layout to
OUTPUT/export (model.safetensors + config.json + README.md with the measured accuracy).

The same from Python: timm_bcos.training.train(TrainConfig(...)), whose fields are these options.
"""
from __future__ import annotations

import sys

from timm_bcos.training import TrainConfig, TrainError, parse_args as _parse_args, train
from timm_bcos.training.faults import exit_worker


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return _parse_args(argv, description=__doc__)


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    try:
        result = train(config)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if result.num_processes > 1:
        exit_worker()
    return 0


if __name__ == "__main__":
    sys.exit(main())
