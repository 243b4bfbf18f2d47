"""Training-step time and peak memory of whole models: timm vs timm_bcos (vs the `bcos` reference).

CPU (the figures in RESULTS.md):
    python benchmarks/models.py [--models resnet50 densenet121] [--repeats 5] [--compile]
GPU, every comparison of issue 14 in one process (timm vs timm_bcos with and without the
fused Triton kernels, eager and compiled, fp32 and bf16 autocast, batch 64, peak memory):
    python benchmarks/models.py --device cuda --batch 64 --repeats 10 --compile --precision fp32 bf16

Per architecture and precision, all variants are timed interleaved (forward + backward +
BCE loss, training mode): timm's conventional model, timm_bcos on its PyTorch path
("timm_bcos") and on the fused kernels ("timm_bcos fused", where the device has them),
the `bcos` 0.1.3 reference model (unless --no-reference), and with --compile the timm and
timm_bcos models under torch.compile. On CUDA each variant's peak memory of one step
(above what is allocated before it) is reported too.
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402

import timm  # noqa: E402

import timm_bcos  # noqa: E402,F401
from timm_bcos.layers import kernels  # noqa: E402


def train_step(model, x, y, amp: bool = False, fused: bool | None = None, synchronise: bool = True):
    """One training step; `fused` sets the kernels' switch for the step (None: leave it); a CUDA
    step ends with a synchronise unless `synchronise` is False."""
    loss_fn = torch.nn.BCEWithLogitsLoss()
    sync = torch.cuda.synchronize if x.is_cuda and synchronise else (lambda: None)

    def run():
        previous = kernels.ENABLED
        if fused is not None:
            kernels.ENABLED = fused
        try:
            model.zero_grad(set_to_none=True)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(model(x).float(), y)
            loss.backward()
            sync()
        finally:
            kernels.ENABLED = previous
    return run


def peak_memory_mb(fn, dev: torch.device) -> float:
    """Peak CUDA memory of one call above what was allocated before it, in MiB."""
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    before = torch.cuda.memory_allocated(dev)
    fn()
    return (torch.cuda.max_memory_allocated(dev) - before) / 2**20


def variants(arch: str, args, dev: torch.device, x, y, amp: bool) -> dict:
    conventional = timm.create_model(arch).train().to(dev)
    ours = timm.create_model(f"bcos_{arch}").train().to(dev)
    fused_too = kernels.ENABLED and (dev.type == "cuda" or kernels.INTERPRET)
    fns = {"timm": train_step(conventional, x, y, amp), "timm_bcos": train_step(ours, x, y, amp, fused=False)}
    if fused_too:
        fns["timm_bcos fused"] = train_step(ours, x, y, amp, fused=True)
    if not args.no_reference:
        import bcos.models.pretrained as ref_models
        from bcos.data.transforms import AddInverse

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref = getattr(ref_models, arch)(pretrained=False).train().to(dev)
        fns["bcos"] = train_step(ref, AddInverse()(x), y, amp)
    if args.compile:
        compiled = functools.partial(torch.compile, mode=args.compile_mode)
        fns["timm compiled"] = train_step(compiled(conventional), x, y, amp)
        fns["timm_bcos compiled"] = train_step(compiled(ours), x, y, amp, fused=False)
        if fused_too:  # its own copy: the two compiled graphs differ in the kernels they call
            fns["timm_bcos fused compiled"] = train_step(compiled(copy.deepcopy(ours)), x, y, amp, fused=True)
    return fns


def ratios(t: dict, prefix: str = "") -> dict:
    out = {}
    for k in t:
        if k.startswith("timm_bcos"):
            base = "timm compiled" if k.endswith("compiled") else "timm"
            out[f"{prefix}{k}/timm"] = t[k] / t[base]
    if "bcos" in t:
        out[f"{prefix}bcos/timm"] = t["bcos"] / t["timm"]
        out[f"{prefix}timm_bcos/bcos"] = t["timm_bcos"] / t["bcos"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet50", "densenet121"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--compile-mode", default=None,
                        help="torch.compile mode for the compiled variants (reduce-overhead: CUDA graphs)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", nargs="+", choices=["fp32", "bf16"], default=["fp32"],
                        help="fp32 and/or bf16 autocast, each a separate interleaved round")
    parser.add_argument("--amp", action="store_true", help="same as --precision bf16")
    parser.add_argument("--no-reference", action="store_true", help="leave out the bcos package's model")
    args = parser.parse_args()
    dev = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as timm's train.py; both sides alike
        print(f"# {torch.cuda.get_device_name(dev)}, torch {torch.__version__}, timm {timm.__version__}", flush=True)
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 32)
    precisions = ["bf16"] if args.amp else args.precision

    for arch in args.models:
        for precision in precisions:
            torch.manual_seed(0)
            x = torch.rand(args.batch, 3, args.img_size, args.img_size, device=dev)
            y = torch.nn.functional.one_hot(torch.randint(0, 1000, (args.batch,)), 1000).float().to(dev)
            fns = variants(arch, args, dev, x, y, amp=precision == "bf16")
            t = time_interleaved(fns, repeats=args.repeats, warmup=2)
            line = {k: f"{v * 1e3:.0f} ms" for k, v in t.items()}
            line.update({k: f"{v:.2f}" for k, v in ratios(t).items()})
            if dev.type == "cuda":
                mem = {k: peak_memory_mb(fn, dev) for k, fn in fns.items()}
                line.update({f"peak {k}": f"{v:.0f} MiB" for k, v in mem.items()})
                line.update({k: f"{v:.2f}" for k, v in ratios(mem, prefix="peak ").items()})
            print(f"| {arch} ({args.device}, batch {args.batch}, {args.img_size}px, {precision}) | "
                  + " | ".join(f"{k}: {v}" for k, v in line.items()) + " |", flush=True)
            del fns
            if dev.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
