"""What certifying unknown composites on a probe costs at conversion time (issue 40).

For each model: `convert(m, "bcosify")` as shipped (its composites are all on the certified list, so
no probe runs), against the same conversion with the list emptied, so that every composite is
certified on the float64 probe at the model's cfg input size (the worst case: a model none of whose
blocks the list knows). One process, the two alternated, medians of `--repeats`.

    python benchmarks/certify_cost.py --models resnet50 vit_base_patch16_224 --repeats 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from unittest import mock

import timm
import torch

import timm_bcos  # noqa: F401
from timm_bcos import convert


def timed_conversion(name: str, probe_all: bool) -> tuple[float, int]:
    model = timm.create_model(name, num_classes=1000)
    t0 = time.perf_counter()
    if probe_all:
        with mock.patch("timm_bcos.convert.walker.is_certified", return_value=False):
            converted = convert(model, "bcosify")
    else:
        converted = convert(model, "bcosify")
    return time.perf_counter() - t0, len(converted.bcos.probed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | input | convert (list) | convert + probe of every composite | composites probed | ratio |")
    print("|---|---|---:|---:|---:|---:|")
    for name in args.models:
        listed, probed, count = [], [], 0
        for _ in range(args.repeats):
            listed.append(timed_conversion(name, False)[0])
            seconds, count = timed_conversion(name, True)
            probed.append(seconds)
        a, b = statistics.median(listed), statistics.median(probed)
        size = timm.create_model(name, pretrained=False).pretrained_cfg["input_size"]
        print(f"| {name} | {size[1]}x{size[2]} | {a:.2f} s | {b:.2f} s | {count} | {b / a:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
