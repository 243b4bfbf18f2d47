"""Training-step time (forward + backward, batch 8, 224x224) of whole models on the CPU.

    python benchmarks/models.py [--models resnet50 densenet121] [--repeats 5] [--compile] [--device cuda --batch 64 --amp]

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


def train_step(model, x, y, amp: bool = False):
    loss_fn = torch.nn.BCEWithLogitsLoss()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def run():
        model.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            loss = loss_fn(model(x).float(), y)
        loss.backward()
        sync()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    import bcos.models.pretrained as ref_models
    from bcos.data.transforms import AddInverse

    for arch in args.models:
        torch.manual_seed(0)
        x = torch.rand(args.batch, 3, 224, 224, device=dev)
        y = torch.nn.functional.one_hot(torch.randint(0, 1000, (args.batch,)), 1000).float().to(dev)
        conventional = timm.create_model(arch).train().to(dev)
        ours = timm.create_model(f"bcos_{arch}").train().to(dev)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = getattr(ref_models, arch)(pretrained=False).train().to(dev)
        ref_in = AddInverse()(x)
        fns = {
            "timm": train_step(conventional, x, y, args.amp),
            "timm_bcos": train_step(ours, x, y, args.amp),
            "bcos": train_step(ref, ref_in, y, args.amp),
        }
        if args.compile:
            fns["timm compiled"] = train_step(torch.compile(conventional), x, y, args.amp)
            fns["timm_bcos compiled"] = train_step(torch.compile(ours), x, y, args.amp)
        t = time_interleaved(fns, repeats=args.repeats, warmup=2)
        line = {k: f"{v * 1e3:.0f} ms" for k, v in t.items()}
        line["timm_bcos/timm"] = f"{t['timm_bcos'] / t['timm']:.2f}"
        line["bcos/timm"] = f"{t['bcos'] / t['timm']:.2f}"
        line["timm_bcos/bcos"] = f"{t['timm_bcos'] / t['bcos']:.2f}"
        if args.compile:
            line["compiled timm_bcos/timm"] = f"{t['timm_bcos compiled'] / t['timm compiled']:.2f}"
        print(f"| {arch} ({args.device}, batch {args.batch}{', bf16' if args.amp else ''}) | " + " | ".join(f"{k}: {v}" for k, v in line.items()) + " |", flush=True)


if __name__ == "__main__":
    main()
