"""`verify` with plain chains taken from their links (the default) against checking every module, chains
included (the same call with `only=` every module path, which turns the shortcut off), in one process,
alternated, medians of `--repeats`. Each model is B-cosified from random weights and run in float64 on one
image, as the family tests do.

    python benchmarks/verify_chains.py --models xception41 convmixer_768_32 resnet50 --size 64 --repeats 3
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import time_interleaved  # noqa: E402

import timm_bcos  # noqa: E402,F401
from timm_bcos import convert, verify  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["xception41", "convmixer_768_32", "resnet50"])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | chains from their links | every module | ratio | chains skipped |")
    print("|---|---:|---:|---:|---:|")
    for name in args.models:
        torch.manual_seed(0)
        model = convert(timm.create_model(name, num_classes=10), "bcosify").double().eval()
        x = torch.rand(1, 3, args.size, args.size, dtype=torch.float64)
        every = [path for path, _ in model.named_modules()]
        report = verify(model, x, raise_on_failure=False)
        skipped = sum(why.startswith("a chain") for why in report.skipped.values())
        times = time_interleaved({"chains": lambda: verify(model, x, raise_on_failure=False),
                                  "every": lambda: verify(model, x, only=every, raise_on_failure=False)},
                                 repeats=args.repeats, warmup=1)
        print(f"| {name} | {times['chains']:.2f} s | {times['every']:.2f} s | {times['chains'] / times['every']:.2f} "
              f"| {skipped} |", flush=True)


if __name__ == "__main__":
    main()
