"""CPU cost of the fused-kernel dispatch hook: the layers now against the same layers at a git revision before it.

    python benchmarks/dispatch_overhead.py [--before a9d1b43~1] [--repeats 15] [--threads 2]

The `timm_bcos/layers` package of `--before` (which imports only torch) is
extracted with `git archive` into a temporary folder and imported under another
name, so both versions run interleaved in one process on the same inputs:
BcosConv2d + BatchNormUncentered2d, forward + backward, training mode, at the
shapes of benchmarks/layers.py. Also prints the hook's own cost per call.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import timeit

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from layers import SHAPES  # noqa: E402

from timm_bcos import layers as now  # noqa: E402
from timm_bcos.layers import kernels  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def layers_at(rev: str, into: str):
    """timm_bcos/layers as it was at `rev`, imported as the package `layers_<short rev>`."""
    tar = subprocess.run(["git", "archive", rev, "timm_bcos/layers"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        tf.extractall(into, filter="data")
    name = "layers_before"
    os.rename(os.path.join(into, "timm_bcos", "layers"), os.path.join(into, name))
    sys.path.insert(0, into)
    return importlib.import_module(name)


def block(lib, cin, cout, k):
    return nn.Sequential(lib.BcosConv2d(cin, cout, k, padding=k // 2, b=2), lib.BatchNormUncentered2d(cout)).train()


def step_fn(module, x):
    def run():
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return run


def interleaved_samples(fns: dict, repeats: int, warmup: int = 3) -> dict:
    """All wall times of each callable, rounds alternating which goes first (minimum and median are both read)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples = {k: [] for k in fns}
    for r in range(repeats):
        for name in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            t0 = time.perf_counter()
            fns[name]()
            samples[name].append(time.perf_counter() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="a9d1b43~1", help="a revision without the dispatch hook")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        before = layers_at(args.before, tmp)
        assert not hasattr(before, "kernels"), f"{args.before} already has the kernels package"
        print("| shape | before (median) | now (median) | now/before (median) | now/before (min) |\n|---|---|---|---|---|")
        for name, n, cin, cout, hw, k in SHAPES:
            torch.manual_seed(0)
            x = torch.randn(n, cin, hw, hw)
            ours, old = block(now, cin, cout, k), block(before, cin, cout, k)
            old.load_state_dict(ours.state_dict())
            s = interleaved_samples({"before": step_fn(old, x), "now": step_fn(ours, x)}, args.repeats)
            med = {k: statistics.median(v) for k, v in s.items()}
            print(f"| {name} | {med['before'] * 1e3:.1f} ms | {med['now'] * 1e3:.1f} ms | "
                  f"{med['now'] / med['before']:.3f} | {min(s['now']) / min(s['before']):.3f} |", flush=True)
    x = torch.randn(2, 3)
    calls = 200_000
    per_call = timeit.timeit(lambda: kernels.use_fused(x), number=calls) / calls
    print(f"\nkernels.use_fused on a CPU tensor: {per_call * 1e9:.0f} ns per call "
          f"(3 calls per BcosConv2d + uncentered BN forward)")


if __name__ == "__main__":
    main()
