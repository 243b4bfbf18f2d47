"""Host time per call of what a fused B-cos step launches, against one aten op, on a GPU.

    python benchmarks/launch_cost.py [--calls 2000]
    TRITON_INTERPRET=1 python benchmarks/launch_cost.py --device cpu --calls 3   # a smoke test only
    python benchmarks/launch_cost.py --device cpu --stub --rounds 7   # our host code, launches stubbed, CPU
    python benchmarks/launch_cost.py --binder                # Triton's argument binding, on a CPU

The eager B-cos training step on an H100 took far longer than its kernels, taken to be host
time (benchmarks/RESULTS.md; benchmarks/step_timeline.py measures it), and
benchmarks/step_counts.py counts its launches; this says what one launch costs the host. On
one-element tensors every kernel is done in a few microseconds, so the time per call of a long
run of calls without synchronising is the host's: an aten op through the dispatcher, a bare
Triton launch (triton's own launcher), our launcher function (geometry, allocation, launch),
the eager autograd.Function forward + backward, and a B-cos conv layer's training step
forward + backward (the one-node fused step) against a conventional conv + batch norm.

Two parts of that host time can be measured without a GPU:
- `--stub`: the cases on CPU tensors with every Triton launch replaced by a no-op (as in
  benchmarks/step_counts.py), i.e. our Python and the aten ops around the kernels, against the
  same conventional block (the CPU's convolution compute is in both);
- `--binder`: the largest part of what Triton's `JITFunction.run` does in Python per launch,
  binding and specialising the arguments and the cache key, per kernel of a B-cos conv + BN
  step with its real arguments, for an sm_90 target (triton's internals; 3.x). A lower bound
  of Triton's host cost: it leaves out the current device and stream, the device-cache lookup,
  the globals check, the grid, `launch_metadata`, the C launcher's argument unpacking and the
  driver call itself.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import statistics
import sys
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
    # the models' uncentered BNs have no bias (the conversion drops it: completeness)
    bcos = torch.nn.Sequential(L.BcosConv2d(4, 4, 3, padding=1), L.drop_bias(L.BatchNormUncentered2d(4)))
    bcos = bcos.to(device).train()
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


def recorded_launches() -> dict:
    """{kernel name: (JITFunction, args, kwargs)} of the launches of one B-cos conv + BN training
    step (forward + backward) at a ResNet-like shape, recorded instead of run."""
    from step_counts import stubbed_triton

    record = {}
    with stubbed_triton(collections.Counter(), record):
        x = torch.rand(8, 64, 14, 14, requires_grad=True)
        bn = L.drop_bias(L.BatchNormUncentered2d(64))  # as in the models
        block = torch.nn.Sequential(L.BcosConv2d(64, 64, 3, padding=1), bn).train()
        block(x).sum().backward()
    return record


def binder_table(calls: int) -> None:
    """Triton's argument binding + cache key per launch (a lower bound of its host cost), per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import compute_cache_key, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    print(f"# triton {triton.__version__}: binding + cache key per launch, this host (sm_90 target)\n")
    print("| kernel | runtime args | constexprs | host time per launch |\n|---|---|---|---|")
    for name, (fn, args, kwargs) in sorted(recorded_launches().items()):
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        options = dict(kwargs, debug=False)  # JITFunction.run adds these two before binding
        options["instrumentation_mode"] = ""
        key_cache = {}

        def bind():
            _bound, specialization, opts = binder(*args, **options)
            compute_cache_key(key_cache, specialization, opts)
        print(f"| {name} | {len(args)} | {len(kwargs)} | {per_call_us(bind, calls, lambda: None):.1f} us |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1, help="time every case this many times, interleaved")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--stub", action="store_true", help="CPU: Triton launches replaced by no-ops")
    parser.add_argument("--binder", action="store_true", help="CPU: Triton's argument binding per launch")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    if args.binder:
        binder_table(args.calls)
        return
    device = torch.device(args.device)
    if args.stub and device.type != "cpu":
        raise SystemExit(f"--stub runs on CPU tensors (--device cpu), got --device {args.device}")
    if not args.stub and not kernels.use_fused(torch.empty(1, device=device)):
        raise SystemExit("needs a CUDA device and triton (or TRITON_INTERPRET=1 for a CPU smoke test, or --stub)")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if device.type == "cuda":
        import triton

        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    if args.stub:
        from step_counts import stubbed_triton

        torch.set_flush_denormal(True)  # stubbed kernels leave their outputs uninitialised
    print(f"| call | host time per call (median of {args.rounds} interleaved rounds) |\n|---|---|")
    with (stubbed_triton(collections.Counter()) if args.stub else contextlib.nullcontext()):
        timed = {name: fn for name, fn in cases(device).items()
                 if not (args.stub and "bare Triton launch" in name)}  # stubbed: nothing left to time it
        rounds = [{name: per_call_us(fn, args.calls, sync) for name, fn in timed.items()} for _ in range(args.rounds)]
        for name in timed:
            print(f"| {name} | {statistics.median(r[name] for r in rounds):.1f} us |", flush=True)
    ours = "BcosConv2d + uncentered BN, forward + backward"
    theirs = "Conv2d + BatchNorm2d (timm's block), forward + backward"
    ratio = statistics.median(r[ours] / r[theirs] for r in rounds)  # within a round: robust to a drifting clock
    print(f"\nB-cos block / timm's block, median of the rounds' ratios: {ratio:.2f}")


if __name__ == "__main__":
    main()
