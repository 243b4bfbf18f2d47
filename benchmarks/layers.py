"""Forward+backward time of BcosConv2d against Conv2d+BatchNorm2d+ReLU and the `bcos` package's BcosConv2d.

    python benchmarks/layers.py [--repeats 15] [--threads 2] [--no-compile]

Eager: timm_bcos vs bcos 0.1.3 vs conventional. Compiled (torch.compile, default
mode, on both sides): timm_bcos vs conventional. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402

from timm_bcos.layers import BcosConv2d  # noqa: E402

SHAPES = [
    # name, batch, cin, cout, hw, kernel
    ("56x56x64->64 3x3", 8, 64, 64, 56, 3),
    ("28x28x512->128 1x1", 8, 512, 128, 28, 1),
    ("14x14x256->256 3x3", 8, 256, 256, 14, 3),
]


def conventional(cin, cout, k):
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


def step_fn(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        y = module(x)
        y.sum().backward()
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bcos.modules import BcosConv2d as RefBcosConv2d

    rows = []
    for name, n, cin, cout, hw, k in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(n, cin, hw, hw)
        ours = BcosConv2d(cin, cout, k, padding=k // 2, b=2)
        ref = RefBcosConv2d(cin, cout, k, padding=k // 2, b=2)
        conv = conventional(cin, cout, k).train()
        fns = {"timm_bcos": step_fn(ours, x), "bcos": step_fn(ref, x), "conv_bn_relu": step_fn(conv, x)}
        if not args.no_compile:
            fns["timm_bcos compiled"] = step_fn(torch.compile(ours), x)
            fns["conv_bn_relu compiled"] = step_fn(torch.compile(conv), x)
        t = time_interleaved(fns, repeats=args.repeats)
        row = {"shape": name, **{k_: v * 1e3 for k_, v in t.items()}}
        row["ours/bcos eager"] = t["timm_bcos"] / t["bcos"]
        row["ours/conv eager"] = t["timm_bcos"] / t["conv_bn_relu"]
        if not args.no_compile:
            row["ours/conv compiled"] = t["timm_bcos compiled"] / t["conv_bn_relu compiled"]
        rows.append(row)
        print(row, flush=True)

    cols = list(rows[0])
    print("\n| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] if isinstance(r[c], str) else f"{r[c]:.3f}" if "/" in c else f"{r[c]:.1f} ms" for c in cols) + " |")


if __name__ == "__main__":
    main()
