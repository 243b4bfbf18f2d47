"""Each fused kernel against the layers' PyTorch path and cuDNN's batch norm, on a GPU.

    python benchmarks/kernels.py [--batch 64] [--dtype fp32 bf16] [--profile bcos_resnet50]

Forward + backward of one op on ResNet-50's activation shapes at batch 64,
timed with triton.testing.do_bench (median, CUDA events). Besides the times,
the achieved bandwidth over the fewest bytes the op must move (each input
read once, each output written once; counted below), so a kernel far from
the card's copy bandwidth shows. `--profile M` adds the top CUDA kernels of one
eager training step of model M, fused and on the PyTorch path (torch.profiler).
"""
from __future__ import annotations

import argparse

import torch
import triton.testing

import timm_bcos  # noqa: F401
from timm_bcos import layers as L
from timm_bcos.layers import kernels
from timm_bcos.layers.functional import bcos_scale

SHAPES = [(256, 56), (512, 28), (1024, 14), (2048, 7)]  # (channels, side) of ResNet-50's stages


def fwd_bwd(fn, inputs):
    """fn(*inputs) and the gradient of <out, r> with respect to the inputs, as one callable."""
    out = fn(*inputs)
    r = torch.randn_like(out)

    def run():
        y = fn(*inputs)
        torch.autograd.grad(y, [t for t in inputs if t.requires_grad], r)
    return run


def cases(n: int, c: int, side: int, dtype: torch.dtype, dev: str = "cuda"):
    """(name, fn, inputs, fewest bytes moved by forward + backward) per op."""
    x = torch.randn(n, c, side, side, device=dev, dtype=dtype, requires_grad=True)
    e = x.numel() * x.element_size()
    plane = n * side * side * x.element_size()  # one [N, 1, H, W] tensor
    conv3 = L.BcosConv2d(c, c, 3, padding=1).to(dev)
    norm = torch.rand(n, 1, side, side, device=dev, dtype=dtype).add_(0.5).requires_grad_()
    bn = L.BatchNormUncentered2d(c).to(dev).train()
    cudnn_bn = torch.nn.BatchNorm2d(c).to(dev).train()
    return [  # bytes: forward reads + writes, then backward reads + writes
        ("patch norm 3x3", conv3._patch_norms, [x], (e + plane) + (plane * 2 + e + e)),
        ("B-cos scale B=2", lambda lin, nrm: bcos_scale(lin, nrm, 2.0, False), [x, norm],
         (e + plane + e) + (e + e + plane + e + plane)),
        ("uncentered BN", bn, [x], (e + e) + (e + e + e)),  # stats + apply fused into one read at best
        ("cuDNN BatchNorm2d (timm)", cudnn_bn, [x], (e + e) + (e + e + e)),
    ]


def time_ms(fn) -> float:
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def table(args) -> None:
    print("| op | dtype | shape | fused | PyTorch path | fused / PyTorch | fused GB/s | PyTorch GB/s |")
    print("|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtype:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        for c, side in SHAPES:
            for name, fn, inputs, nbytes in cases(args.batch, c, side, dtype):
                kernels.ENABLED = True
                fused = time_ms(fwd_bwd(fn, inputs))
                kernels.ENABLED = False
                plain = time_ms(fwd_bwd(fn, inputs))
                kernels.ENABLED = True
                gbs = [nbytes / t / 1e6 for t in (fused, plain)]
                print(f"| {name} | {dtype_name} | {args.batch}x{c}x{side}x{side} | {fused:.3f} ms | {plain:.3f} ms "
                      f"| {fused / plain:.2f} | {gbs[0]:.0f} | {gbs[1]:.0f} |", flush=True)


def profile(model_name: str, batch: int) -> None:
    import timm

    model = timm.create_model(model_name).cuda().train()
    x = torch.rand(batch, 3, 224, 224, device="cuda")
    for fused in (True, False):
        kernels.ENABLED = fused
        for _ in range(3):  # warm-up (cuDNN autotuning, Triton compiles)
            model(x).sum().backward()
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(x).sum().backward()
            torch.cuda.synchronize()
        print(f"\n## {model_name}, batch {batch}, fp32, {'fused' if fused else 'PyTorch path'}: top CUDA kernels")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
    kernels.ENABLED = True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--dtype", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    parser.add_argument("--profile", metavar="MODEL", help="also profile one training step of this model")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not kernels.ENABLED:
        raise SystemExit("benchmarks/kernels.py needs a CUDA device and triton (and TIMM_BCOS_KERNELS not 0)")
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    table(args)
    if args.profile:
        profile(args.profile, args.batch)


if __name__ == "__main__":
    main()
