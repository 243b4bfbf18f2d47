"""Host work per training step, counted: aten kernels and Triton launches, timm vs timm_bcos.

On an H100 the eager B-cos training step is bound by host time (benchmarks/RESULTS.md): the
GPU runs the fused step's kernels in 45 ms while the host takes ~106 ms to issue them. What
the host issues per step, the kernels launched, is a machine-independent measure of that
work, and it can be counted on a CPU:

    python benchmarks/launches.py [--models resnet50 densenet121] [--size 32] [--batch 2]

One training step (forward, BCE loss, backward) of each model in training mode, every aten op
that reaches the dispatcher counted by a TorchDispatchMode (forward and backward alike):
"kernels" are the ops that launch work on a GPU (not views, not allocations), "views/allocs"
the rest. The fused path runs on the CPU with each Triton launch replaced by a no-op that
only counts it (outputs left uninitialised: the ops dispatched, not their values, are what is
counted), so "timm_bcos fused" is kernels + Triton launches. Counts do not depend on the
image size or the batch; only the shapes' layout does.
"""
from __future__ import annotations

import argparse
import collections
import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import timm

import timm_bcos  # noqa: F401
from timm_bcos.layers import kernels

ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}


class OpCounter(TorchDispatchMode):
    """Counts aten ops by name, split into kernel launches and views/allocations."""

    def __init__(self):
        super().__init__()
        self.kernels = collections.Counter()
        self.other = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        no_kernel = func.is_view or name in ALLOCATIONS or name in ("detach", "lift_fresh", "alias")
        (self.other if no_kernel else self.kernels)[name] += 1
        return func(*args, **(kwargs or {}))


class _CountingLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` counts and does nothing."""

    def __init__(self, name: str, counts: collections.Counter):
        self.name, self.counts = name, counts

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] += 1
        return launch


@contextlib.contextmanager
def stubbed_triton(counts: collections.Counter):
    """The fused path on CPU tensors with every Triton launch counted instead of run."""
    from timm_bcos.layers.kernels import _batch_norm, _bcos_scale, _patch_norm
    from triton.runtime.jit import JITFunction

    saved = []
    for module in (_batch_norm, _bcos_scale, _patch_norm):
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                saved.append((module, name, obj))
                setattr(module, name, _CountingLaunch(name, counts))
    interpret, enabled = kernels.INTERPRET, kernels.ENABLED
    kernels.INTERPRET, kernels.ENABLED = True, True
    try:
        yield
    finally:
        kernels.INTERPRET, kernels.ENABLED = interpret, enabled
        for module, name, obj in saved:
            setattr(module, name, obj)


def count_step(model, x, y, fused: bool) -> tuple[collections.Counter, collections.Counter, collections.Counter]:
    """(kernel ops, views/allocations, Triton launches) of one training step."""
    launches = collections.Counter()
    previous = kernels.ENABLED
    with (stubbed_triton(launches) if fused else contextlib.nullcontext()):
        if not fused:
            kernels.ENABLED = False
        try:
            model.zero_grad(set_to_none=True)
            with OpCounter() as ops:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
                loss.backward()
        finally:
            if not fused:
                kernels.ENABLED = previous
    return ops.kernels, ops.other, launches


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent kernel ops per variant")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 3, args.size, args.size), torch.rand(args.batch, 1000)
    print("| model | variant | aten kernels | Triton launches | kernels + launches | / timm | views, allocs |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.models:
        rows = {}
        conventional = timm.create_model(arch).train()
        ours = timm.create_model(f"bcos_{arch}").train()
        rows["timm"] = count_step(conventional, x, y, fused=False)
        rows["timm_bcos"] = count_step(ours, x, y, fused=False)
        rows["timm_bcos fused"] = count_step(ours, x, y, fused=True)
        base = sum(rows["timm"][0].values())
        for variant, (ops, other, launches) in rows.items():
            total = sum(ops.values()) + sum(launches.values())
            print(f"| {arch} | {variant} | {sum(ops.values())} | {sum(launches.values())} | {total} | "
                  f"{total / base:.2f} | {sum(other.values())} |")
        if args.top:
            for variant, (ops, _, launches) in rows.items():
                print(f"\n{arch}, {variant}: {dict((ops + launches).most_common(args.top))}")
            print()


if __name__ == "__main__":
    main()
