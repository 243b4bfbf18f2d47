#!/usr/bin/env python
"""Evaluate timm models: top-1/top-5 accuracy and the grid pointing game (paper Sec. 4).

  python train_scripts/evaluate.py --dataset ../shared/datasets/cifar10 --split test \\
      --models bcos_cifar10_w050_bnu local-dir:runs/cifar10_convnet/export \\
      --names "B-cos B=2" conventional --pretrained --grid 2 3 --out reports/cifar10_eval

Models are timm names (with --pretrained for their released weights) or `local-dir:` /
`hf-hub:` folders such as train.py's OUTPUT/export. For each model, correctly and
confidently classified test images (sigmoid of the logit > 0.5) are tiled into n x n
grids of distinct classes (fixed seed), each cell's class is explained on the whole grid
by every method (the model's own contributions on B-cos models; Captum's Grad, Input x
Gradient, Integrated Gradients, DeepLIFT and GradCAM on every model), and the share of
positive attribution inside the right cell is scored. Writes OUT/results.md (tables),
OUT/results.json and OUT/pointing_game_{n}x{n}.png (box plots like the paper's Fig. 6).
"""
from __future__ import annotations

import argparse
import shlex
import sys

from timm_bcos.eval.run import EvalConfig, EvalError, evaluate_models
from timm_bcos.utils.options import add_options


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, EvalConfig)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        config = EvalConfig(**vars(parser.parse_args(argv)))
    except EvalError as e:
        parser.error(str(e))
    command = f"python train_scripts/evaluate.py {shlex.join(sys.argv[1:] if argv is None else argv)}"
    try:
        evaluate_models(config, command)
    except EvalError as e:
        raise SystemExit(f"error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
