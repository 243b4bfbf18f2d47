"""Host time per call of what a fused B-cos step launches, against one aten op, on a GPU.

    python benchmarks/launch_cost.py [--calls 2000]
    TRITON_INTERPRET=1 python benchmarks/launch_cost.py --device cpu --calls 3   # a smoke test only

The eager B-cos training step on an H100 was bound by host time (benchmarks/RESULTS.md), and
benchmarks/step_counts.py counts its launches; this says what one launch costs the host. On
one-element tensors every kernel is done in a few microseconds, so the time per call of a long
run of calls without synchronising is the host's: an aten op through the dispatcher, a bare
Triton launch (triton's own launcher), our launcher function (geometry, allocation, launch),
the eager autograd.Function forward + backward, and a B-cos conv layer's training step
forward + backward (the one-node fused step) against a conventional conv + batch norm.
"""
from __future__ import annotations

import argparse
import time

import torch

import timm_bcos  # noqa: F401
from timm_bcos import layers as L
from timm_bcos.layers import kernels


def per_call_us(fn, calls: int, sync) -> float:
    for _ in range(min(calls, 20)):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return (time.perf_counter() - start) / calls * 1e6


def cases(device: torch.device):
    from timm_bcos.layers.kernels import _bcos_scale as S

    one = torch.ones(1, 1, 1, device=device)
    lin = torch.ones(1, 1, 1, device=device, requires_grad=True)
    grid, args, meta = S._launch_args(one, one, 2.0)
    out = torch.empty_like(one)
    x = torch.rand(1, 4, 4, 4, device=device, requires_grad=True)
    bcos = torch.nn.Sequential(L.BcosConv2d(4, 4, 3, padding=1), L.BatchNormUncentered2d(4)).to(device).train()
    conventional = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1, bias=False),
                                       torch.nn.BatchNorm2d(4)).to(device).train()
    return {
        "aten op (torch.mul)": lambda: torch.mul(one, one),
        "bare Triton launch (scale kernel)": lambda: S._scale_fwd_kernel[grid](one, one, out, *args, **meta),
        "our launcher (scale_forward)": lambda: S.scale_forward(one, one, 2.0),
        "FusedBcosScale forward + backward": lambda: S.FusedBcosScale.apply(lin, one, 2.0, False).sum().backward(),
        "BcosConv2d + uncentered BN, forward + backward": lambda: bcos(x).sum().backward(),
        "Conv2d + BatchNorm2d (timm's block), forward + backward": lambda: conventional(x).sum().backward(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    if not kernels.use_fused(torch.empty(1, device=device)):
        raise SystemExit("needs a CUDA device and triton (or TRITON_INTERPRET=1 for a CPU smoke test)")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        import triton

        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| call | host time per call |\n|---|---|")
    for name, fn in cases(device).items():
        print(f"| {name} | {per_call_us(fn, args.calls, sync):.1f} us |", flush=True)


if __name__ == "__main__":
    main()
