"""What the twice-differentiable explanation mode costs: `explain()` with the B=2 scale and the
uncentered batch norm in plain autograd ops (now) against the hand-written once-differentiable
functions (before), interleaved in one process.

    python benchmarks/explain_mode_ops.py [--model bcos_resnet50] [--batch 16] [--repeats 5] [--threads 2]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402


@contextlib.contextmanager
def hand_written_detached_path():
    """Explanation mode through the hand-written B=2 function, as before the change (eval-mode
    batch norms divide by their running variance either way)."""
    from timm_bcos.layers import bcos_conv, bcos_linear, functional

    plain = functional.bcos_scale

    def old(linear_out, input_norm, b, detach):
        if b == 2 and detach:
            return functional._BcosScaleB2.apply(linear_out, input_norm, detach)
        return plain(linear_out, input_norm, b, detach)

    bcos_conv.bcos_scale = bcos_linear.bcos_scale = old  # the layers call it by name
    try:
        yield
    finally:
        bcos_conv.bcos_scale = bcos_linear.bcos_scale = plain


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="bcos_resnet50")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model(args.model).eval()
    x = torch.rand(args.batch, 3, 224, 224)

    def now():
        model.explain(x)

    def before():
        with hand_written_detached_path():
            model.explain(x)

    with hand_written_detached_path():
        a = model.explain(x).contributions
    b = model.explain(x).contributions
    rel = float((a - b).norm() / b.norm())
    times = time_interleaved({"before (hand-written)": before, "now (plain ops)": now}, repeats=args.repeats,
                             warmup=1)
    print(f"{args.model}, batch {args.batch}, {args.threads} threads, top-1 explain(), median of "
          f"{args.repeats}; contributions agree to {rel:.1e}\n")
    print("| explanation mode | time | / before |\n|---|---:|---:|")
    for name, t in times.items():
        print(f"| {name} | {t * 1000:.0f} ms | {t / times['before (hand-written)']:.3f} |")


if __name__ == "__main__":
    main()
