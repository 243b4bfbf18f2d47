"""Where one eager training step's wall time goes: the host issuing it, the GPU running it, syncs.

    python benchmarks/step_timeline.py [--models resnet50] [--batch 64] [--size 224]
    TRITON_INTERPRET=1 python benchmarks/step_timeline.py --device cpu --batch 2 --size 32   # smoke test only

On an H100 the fused bcos_resnet50 step took ~106 ms of wall time while its kernels ran for
45 ms, and the PyTorch path took ~107 ms for 76 ms of kernels (benchmarks/RESULTS.md): the
same wall time for half the launches, which does not support host time per launch as the
cause (nor rule it out). Per variant
(timm's model as the baseline, timm_bcos fused, timm_bcos on the PyTorch path; one process,
interleaved repeats) this reports:
- issue: the host's time until backward() returns, without synchronising (what the host costs;
  but where more launches are queued than the driver's queue holds, ~1k, the host waits in
  cudaLaunchKernel / cuLaunchKernel, so issue ~ wall then does not by itself mean host-bound:
  read those rows in the host-op table);
- wall: the time until the GPU has finished (a synchronise after the step);
- GPU time: of one profiled step (torch.profiler's CUDA events: kernels, memcpy, memset);
- events: host-device synchronisations, copies and device allocations the profiler sees in one
  step, the harness's own (its synchronise, the profiler's exit) subtracted (a sync inside the
  step makes the wall the sum of host and GPU time, not their maximum);
and, for the fused variant, the top host ops and the Python functions taking the host's time
(cProfile with autograd's device threads off, so the backward is seen too: which share is
Triton's launcher, which our own code).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import timm

import timm_bcos  # noqa: F401
from timm_bcos.layers import kernels

sys.path.insert(0, os.path.dirname(__file__))
from models import train_step  # noqa: E402

# host-device synchronisations, copies and device allocations (a cudaMalloc can synchronise too)
SYNC_MARKERS = ("Synchronize", "Memcpy", "_local_scalar_dense", "nonzero", "cudaMalloc", "cudaFree")


def issue_and_wall_ms(steps: dict, sync, repeats: int) -> dict:
    """Median (issue, wall) ms per variant, the variants interleaved in every round."""
    samples = {name: ([], []) for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            sync()
            start = time.perf_counter()
            step()
            issued = time.perf_counter()
            sync()
            samples[name][0].append(issued - start)
            samples[name][1].append(time.perf_counter() - start)
    return {name: (statistics.median(i) * 1e3, statistics.median(w) * 1e3) for name, (i, w) in samples.items()}


def profiled(step, sync, cuda: bool):
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        step()
        sync()
    return prof.key_averages()


def kernel_ms(events) -> float:
    """GPU time of the CUDA events only (a CPU op's device time repeats its kernels')."""
    return sum(e.self_device_time_total for e in events
               if e.device_type == DeviceType.CUDA and not getattr(e, "is_user_annotation", False)) / 1e3


def marker_counts(events) -> dict:
    return {e.key: e.count for e in events if any(m in e.key for m in SYNC_MARKERS)}


def step_events(events, harness: dict) -> str:
    """The sync/copy/allocation events of a profiled step less those of profiling an empty step."""
    found = {k: n - harness.get(k, 0) for k, n in marker_counts(events).items()}
    return ", ".join(f"{k} x{n}" for k, n in sorted(found.items()) if n > 0) or "none"


def python_hot_spots(step, rows: int) -> str:
    profiler = cProfile.Profile()
    with torch.autograd.set_multithreading_enabled(False):  # the backward on this thread, seen by cProfile
        profiler.enable()
        step()
        profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(rows)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50"])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15, help="rows of the host-op and Python tables")
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(dev)) if cuda else (lambda: None)
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    y = torch.rand(args.batch, 1000, device=dev)
    if cuda:
        print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    for arch in args.models:
        ours = timm.create_model(f"bcos_{arch}").train().to(dev)
        steps = {"timm": train_step(timm.create_model(arch).train().to(dev), x, y, synchronise=False),
                 "timm_bcos": train_step(ours, x, y, fused=False, synchronise=False)}
        if kernels.use_fused(x):
            steps["timm_bcos fused"] = train_step(ours, x, y, fused=True, synchronise=False)
        for step in steps.values():  # warm-up: Triton compiles, the caching allocator's pools
            for _ in range(3):
                step()
        times = issue_and_wall_ms(steps, sync, args.repeats)
        profiled(lambda: None, sync, cuda)  # the profiler's own start-up (CUPTI) outside the figures
        harness = marker_counts(profiled(lambda: None, sync, cuda))
        print(f"\n## {arch}, batch {args.batch}, {args.size}px, fp32, eager\n")
        print("| variant | issue (host) | wall | GPU time (profiled) | sync, copy, allocation events in one step |")
        print("|---|---|---|---|---|")
        tables = {}
        for name, step in steps.items():
            events = tables[name] = profiled(step, sync, cuda)
            issue, wall = times[name]
            print(f"| {name} | {issue:.1f} ms | {wall:.1f} ms | {kernel_ms(events):.1f} ms "
                  f"| {step_events(events, harness)} |")
        focus = "timm_bcos fused" if "timm_bcos fused" in steps else "timm_bcos"
        print(f"\n### {focus}: top host ops by self CPU time\n")
        print(tables[focus].table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=50))
        print(f"### {focus}: Python functions by own time (cProfile, one step)\n")
        print(python_hot_spots(steps[focus], args.rows))


if __name__ == "__main__":
    main()
