"""Cost of a guided training step (double backward through the explanation) against an
unguided one, interleaved in one process.

    python benchmarks/guidance.py [--repeats 10] [--threads 2] [--width 0.25] [--batch 64]

Steps timed (bcos_cifar10 at --width, uncentered BN, B=2, 32x32, training mode, Adam):
  unguided:   forward + BCE + backward + optimizer step (the baseline)
  guided 25%: the same + the energy loss on 25% of the batch (explanation forward, double backward)
  guided 100%: the same with every image annotated
Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402


def make_step(model, optimizer, x, labels, masks, annotated):
    import timm_bcos.guidance as G
    from timm_bcos.training.losses import BcosBCELoss

    criterion = BcosBCELoss()

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = criterion(model(x), labels)
        if annotated is not None:
            loss = loss + G.guided_loss(model, x, labels, masks, annotated, loss="energy")
        loss.backward()
        optimizer.step()
    return step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)
    x = torch.rand(args.batch, 3, 32, 32)
    labels = torch.randint(0, 10, (args.batch,))
    masks = torch.ones(args.batch, 32, 32)
    masks[:, :4, :4] = 0
    steps = {}
    for name, share in (("unguided", None), ("guided 25%", 0.25), ("guided 100%", 1.0)):
        model = timm.create_model("bcos_cifar10", width=args.width, norm=True, max_out=1).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        annotated = None if share is None else torch.arange(args.batch) < int(share * args.batch)
        steps[name] = make_step(model, optimizer, x, labels, masks, annotated)
    times = time_interleaved(steps, repeats=args.repeats)
    base = times["unguided"]
    print(f"bcos_cifar10 width {args.width}, batch {args.batch}, {args.threads} threads, "
          f"median of {args.repeats} interleaved repeats\n")
    print("| step | time | / unguided |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {t * 1000:.1f} ms | {t / base:.2f}x |")


if __name__ == "__main__":
    main()
