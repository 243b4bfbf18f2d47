"""Explanation time on bcos_resnet50 (CPU) against the `bcos` package's per-image explain().

    python benchmarks/explain.py [--batch 16] [--repeats 3] [--device cuda] [--no-reference]

On a GPU (issue 14's bar: top-1 explanation of 64 images <= 2.2x a forward pass):
    python benchmarks/explain.py --device cuda --batch 64 --repeats 10

Same weights on both sides (the reference model's random weights converted with
timm_bcos.weights.convert_bcos_v2_state_dict). Cases:
  top-5:   timm_bcos `model.explain(x, topk=5)` vs bcos `explain()` per image and class (16 x 5 calls)
  top-1:   timm_bcos `model.explain(x)` vs bcos `explain()` per image (16 calls), and vs a plain
           forward pass of the batch (no grad)
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402

import timm  # noqa: E402

import timm_bcos  # noqa: E402,F401
from timm_bcos.weights import convert_bcos_v2_state_dict  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-reference", action="store_true", help="leave out the bcos package's per-image loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    import bcos.models.pretrained as ref_models
    from bcos.data.transforms import AddInverse

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ref_models.resnet50(pretrained=False).eval()
    ours = timm.create_model("bcos_resnet50").eval()
    ours.load_state_dict(convert_bcos_v2_state_dict(ref.state_dict(), "resnet50"))
    ref, ours = ref.to(dev), ours.to(dev)
    x = torch.rand(args.batch, 3, 224, 224, device=dev)
    with torch.no_grad():
        top5 = ours(x).topk(5, dim=1).indices

    def ref_loop(k):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for i in range(args.batch):
                    enc = AddInverse()(x[i:i + 1])
                    for j in range(k):
                        ref.explain(enc.clone().requires_grad_(True), idx=int(top5[i, j]))
            sync()
        return run

    def plain_forward():
        with torch.no_grad():
            ours(x)
        sync()

    def forward_recording():  # a forward with autograd recording, as in training
        ours(x).sum()
        sync()

    def explain(**kw):
        def run():
            ours.explain(x, **kw)
            sync()
        return run

    fns = {"timm_bcos top-5": explain(topk=5), "timm_bcos top-1": explain()}
    if not args.no_reference:
        fns.update({"bcos loop top-5": ref_loop(5), "bcos loop top-1": ref_loop(1)})
    fns.update({"forward (no grad)": plain_forward, "forward (autograd on)": forward_recording})
    t = time_interleaved(fns, repeats=args.repeats, warmup=1)
    print(f"# {args.device}" + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else "")
          + f", batch {args.batch}")
    for k, v in t.items():
        print(f"{k}: {v * 1e3:.0f} ms")
    if not args.no_reference:
        print(f"top-5: bcos loop / timm_bcos = {t['bcos loop top-5'] / t['timm_bcos top-5']:.2f}x")
        print(f"top-1: bcos loop / timm_bcos = {t['bcos loop top-1'] / t['timm_bcos top-1']:.2f}x")
    print(f"top-1: timm_bcos / forward = {t['timm_bcos top-1'] / t['forward (no grad)']:.2f}x")
    print(f"top-1: timm_bcos / forward with autograd on = {t['timm_bcos top-1'] / t['forward (autograd on)']:.2f}x")


if __name__ == "__main__":
    main()
