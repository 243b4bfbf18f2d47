"""Work per training step, counted: kernel launches and activations saved for backward, timm vs timm_bcos.

On an H100 the GPU ran the fused B-cos step's kernels in 45 ms of a ~106 ms step, which was
taken to be host time per launch (benchmarks/RESULTS.md; not confirmed: benchmarks/step_timeline.py
measures where the time goes). What the host issues per step, the kernels launched, is a
machine-independent measure of that work, and it can be counted on a CPU:

    python benchmarks/step_counts.py [--models resnet50 densenet121] [--size 64] [--batch 2]

One training step (forward, BCE loss, backward) of each model in training mode, every aten op
that reaches the dispatcher counted by a TorchDispatchMode (forward and backward alike):
"kernels" are the ops that launch work on a GPU (not views, not allocations), "views/allocs"
the rest. The fused path runs on the CPU with each Triton launch replaced by a no-op that
only counts it (outputs left uninitialised: the ops dispatched, not their values, are what is
counted), so "timm_bcos fused" is kernels + Triton launches. The counts depend on the
input size only where a kernel's launch plan does (a patch norm takes one or two launches).

"saved" is the memory of the distinct tensors autograd keeps from the forward for the
backward (a saved_tensors_hooks pack hook, storages counted once, parameters left out):
the activation memory that sets a training step's peak, in proportion to timm's at the
same input (B-cos also keeps each layer's unit-norm weights, a fixed ~100 MiB for resnet50).
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
    """Stands in for a Triton kernel: `kernel[grid](...)` counts and does nothing (and, given a
    `record` dict, keeps the kernel and its first call's arguments under its name)."""

    def __init__(self, name: str, counts: collections.Counter, kernel=None, record: dict | None = None):
        self.name, self.counts, self.kernel, self.record = name, counts, kernel, record

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.counts[self.name] += 1
            if self.record is not None:
                self.record.setdefault(self.name, (self.kernel, args, kwargs))
        return launch


@contextlib.contextmanager
def stubbed_triton(counts: collections.Counter, record: dict | None = None):
    """The fused path on CPU tensors with every Triton launch counted instead of run (and recorded
    into `record`, if given: {kernel name: (JITFunction, args, kwargs)})."""
    import importlib
    import pkgutil

    from triton.runtime.jit import JITFunction

    from timm_bcos.layers import kernels as package

    saved = []
    for info in pkgutil.iter_modules(package.__path__):  # every kernel module (also of older versions)
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if isinstance(obj, JITFunction) and name.endswith("_kernel"):
                saved.append((module, name, obj))
                setattr(module, name, _CountingLaunch(name, counts, obj, record))
    interpret, enabled = kernels.INTERPRET, kernels.ENABLED
    kernels.INTERPRET, kernels.ENABLED = True, True
    try:
        yield
    finally:
        kernels.INTERPRET, kernels.ENABLED = interpret, enabled
        for module, name, obj in saved:
            setattr(module, name, obj)


@contextlib.contextmanager
def saved_storages(into: dict, model: torch.nn.Module):
    """Records {storage pointer: bytes} of every tensor saved for backward inside the block, the
    model's parameters left out (they are held anyway)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            into[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def count_step(model, x, y, fused: bool):
    """(kernel ops, views/allocations, Triton launches, bytes saved for backward) of one training step."""
    launches, saved = collections.Counter(), {}
    previous = kernels.ENABLED
    with (stubbed_triton(launches) if fused else contextlib.nullcontext()):
        if not fused:
            kernels.ENABLED = False
        try:
            model.zero_grad(set_to_none=True)
            with OpCounter() as ops:
                with saved_storages(saved, model):
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
                loss.backward()
        finally:
            if not fused:
                kernels.ENABLED = previous
    return ops.kernels, ops.other, launches, sum(saved.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--top", type=int, default=0, help="also list the N most frequent kernel ops per variant")
    parser.add_argument("--no-pytorch-path", action="store_true",
                        help="leave out the PyTorch (CPU) path, e.g. to count a GPU-sized batch in less memory")
    args = parser.parse_args()
    torch.manual_seed(0)
    x, y = torch.rand(args.batch, 3, args.size, args.size), torch.rand(args.batch, 1000)
    print(f"{args.batch}x3x{args.size}x{args.size} input, one training step (forward, BCE loss, backward)\n")
    print("| model | variant | aten kernels | Triton launches | kernels + launches | / timm | views, allocs "
          "| saved for backward | / timm |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.models:
        rows = {}
        conventional = timm.create_model(arch).train()
        ours = timm.create_model(f"bcos_{arch}").train()
        rows["timm"] = count_step(conventional, x, y, fused=False)
        if not args.no_pytorch_path:
            rows["timm_bcos"] = count_step(ours, x, y, fused=False)
        rows["timm_bcos fused"] = count_step(ours, x, y, fused=True)
        base, base_saved = sum(rows["timm"][0].values()), rows["timm"][3]
        for variant, (ops, other, launches, saved) in rows.items():
            total = sum(ops.values()) + sum(launches.values())
            print(f"| {arch} | {variant} | {sum(ops.values())} | {sum(launches.values())} | {total} | "
                  f"{total / base:.2f} | {sum(other.values())} | {saved / 2**20:.1f} MiB | {saved / base_saved:.2f} |")
        if args.top:
            for variant, (ops, _, launches, _saved) in rows.items():
                print(f"\n{arch}, {variant}: {dict((ops + launches).most_common(args.top))}")
            print()


if __name__ == "__main__":
    main()
