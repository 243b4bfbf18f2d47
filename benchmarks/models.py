"""Training-step time (forward + backward, batch 8, 224x224) of whole models on the CPU.

    python benchmarks/models.py [--models resnet50 densenet121] [--repeats 5] [--compile]

For each architecture, in one process: timm's conventional model, the timm_bcos
model and the `bcos` 0.1.3 reference model of the same architecture (eager), and
with --compile the timm and timm_bcos models under torch.compile.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402

import timm  # noqa: E402

import timm_bcos  # noqa: E402,F401


def train_step(model, x, y):
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def run():
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import bcos.models.pretrained as ref_models
    from bcos.data.transforms import AddInverse

    for arch in args.models:
        torch.manual_seed(0)
        x = torch.rand(args.batch, 3, 224, 224)
        y = torch.nn.functional.one_hot(torch.randint(0, 1000, (args.batch,)), 1000).float()
        conventional = timm.create_model(arch).train()
        ours = timm.create_model(f"bcos_{arch}").train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = getattr(ref_models, arch)(pretrained=False).train()
        ref_in = AddInverse()(x)
        fns = {
            "timm": train_step(conventional, x, y),
            "timm_bcos": train_step(ours, x, y),
            "bcos": train_step(ref, ref_in, y),
        }
        if args.compile:
            fns["timm compiled"] = train_step(torch.compile(conventional), x, y)
            fns["timm_bcos compiled"] = train_step(torch.compile(ours), x, y)
        t = time_interleaved(fns, repeats=args.repeats, warmup=2)
        line = {k: f"{v * 1e3:.0f} ms" for k, v in t.items()}
        line["timm_bcos/timm"] = f"{t['timm_bcos'] / t['timm']:.2f}"
        line["bcos/timm"] = f"{t['bcos'] / t['timm']:.2f}"
        line["timm_bcos/bcos"] = f"{t['timm_bcos'] / t['bcos']:.2f}"
        if args.compile:
            line["compiled timm_bcos/timm"] = f"{t['timm_bcos compiled'] / t['timm compiled']:.2f}"
        print(f"| {arch} | " + " | ".join(f"{k}: {v}" for k, v in line.items()) + " |", flush=True)


if __name__ == "__main__":
    main()
