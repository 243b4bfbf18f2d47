"""`python -m timm_bcos export ...`: write a model and its explanation as ONNX or torch.export graphs."""
from __future__ import annotations

import argparse

from .writer import DTYPES, EXPLAIN_MODES, FORMATS


def export_main(args: argparse.Namespace) -> int:
    from ..cli.common import load_model_from_args
    from .check import compare_with_model
    from .writer import ExportError, as_exported, export_model

    model = load_model_from_args(args)
    try:
        files = export_model(model, args.out, fmt=args.format, explain=args.explain, k=args.k,
                             dynamic_batch=args.dynamic_batch, batch_size=args.batch_size, opset=args.opset,
                             dtype=args.dtype, name=args.model)
    except (ExportError, ValueError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    for path in (files.classifier, files.explainer, files.config):
        if path is not None:
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    if args.no_check:
        return 0
    figures = compare_with_model(as_exported(model, args.dtype), files, explain=args.explain, k=args.k,
                                 batch=2 if args.dynamic_batch else args.batch_size)
    runtime = "onnxruntime" if args.format == "onnx" else "torch.export.load"
    print(f"checked with {runtime} on random images (norm-wise relative difference from PyTorch):")
    for name, value in figures.items():
        print(f"  {name}: {value:.2e}")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="export a B-cos model and its explanation (ONNX or torch.export)")
    p.add_argument("--model", required=True, help="a bcos_* model name, hf-hub:ORG/REPO or local-dir:PATH")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights")
    src.add_argument("--checkpoint", help="a .safetensors (or trusted .pth) state dict for the model")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--format", choices=list(FORMATS), default="onnx")
    p.add_argument("--out", required=True, help="folder to write the graphs and preprocessing.json into")
    p.add_argument("--explain", choices=EXPLAIN_MODES, default=None,
                   help="also write explainer.*: the top-k classes' explanations, or those of given classes")
    p.add_argument("--k", type=int, default=1, help="classes explained per image (default 1)")
    p.add_argument("--dynamic-batch", action="store_true", help="graphs take any batch size")
    p.add_argument("--batch-size", type=int, default=1, help="the fixed batch size without --dynamic-batch")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: torch's exporter's)")
    p.add_argument("--dtype", choices=list(DTYPES), default="float32")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the written graphs against PyTorch on random images")
    p.set_defaults(func=export_main)
