"""Exported graphs in onnxruntime (CPU) against PyTorch eager, in one process.

    python benchmarks/export.py [--threads 2] [--repeats 15]

Cases, each graph exported with timm_bcos.export (dynamic batch) and timed interleaved with
its PyTorch counterpart on the same images (medians of interleaved rounds, _timing.py):
  classifier: onnxruntime session.run vs `model(x)` under torch.inference_mode
  explainer:  onnxruntime session.run of the top-1 explaining graph vs `model.explain(x, topk=1)`
Models: the shipped CIFAR-10 model (batch 64, 32x32, trained weights) and bcos_resnet50
(batch 8, 224x224, random weights). Both runtimes get the same number of threads.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _timing import time_interleaved  # noqa: E402

import timm  # noqa: E402

import timm_bcos  # noqa: E402,F401
from timm_bcos.export import export_model  # noqa: E402

CASES = [("bcos_cifar10_w050_bnu", True, 64), ("bcos_resnet50", False, 8)]


def session(path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # no constant-folding chatter
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench_model(name: str, pretrained: bool, batch: int, threads: int, repeats: int, folder: str) -> None:
    model = timm.create_model(name, pretrained=pretrained).eval()
    t0 = time.perf_counter()
    files = export_model(model, os.path.join(folder, name), explain="topk", k=1, dynamic_batch=True)
    print(f"{name}: exported both graphs in {time.perf_counter() - t0:.0f} s")
    x = torch.rand(batch, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(0))
    feed = {"images": x.numpy()}
    classifier, explainer = session(files.classifier, threads), session(files.explainer, threads)

    def eager_forward():
        with torch.inference_mode():
            model(x)

    times = time_interleaved({
        "pytorch forward": eager_forward,
        "onnxruntime classifier": lambda: classifier.run(None, feed),
        "pytorch explain top-1": lambda: model.explain(x, topk=1),
        "onnxruntime explainer top-1": lambda: explainer.run(None, feed),
    }, repeats=repeats)
    print(f"  batch {batch}, {threads} threads, median of {repeats} interleaved rounds (ms per batch):")
    for case, seconds in times.items():
        print(f"  {case:>28}: {seconds * 1e3:8.1f}")
    print(f"  classifier onnxruntime / pytorch: {times['onnxruntime classifier'] / times['pytorch forward']:.2f}x; "
          f"explainer onnxruntime / pytorch: {times['onnxruntime explainer top-1'] / times['pytorch explain top-1']:.2f}x; "
          f"onnxruntime explainer / its classifier: "
          f"{times['onnxruntime explainer top-1'] / times['onnxruntime classifier']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--models", nargs="+", default=[c[0] for c in CASES])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}")
    with tempfile.TemporaryDirectory() as folder:
        for name, pretrained, batch in CASES:
            if name in args.models:
                bench_model(name, pretrained, batch, args.threads, args.repeats, folder)


if __name__ == "__main__":
    main()
