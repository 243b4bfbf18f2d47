"""Export a B-cos model, and optionally its explanation, as ONNX or torch.export graphs.

Every graph is traced and translated before anything is written, and each file is written to a
temporary name and renamed: a failed export leaves the output folder as it was.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..utils.atomic import atomic_path
from ..utils.errors import one_line
from .config import export_config
from .decompositions import onnx_decompositions
from .graphs import CLASSIFIER_OUTPUTS, EXPLAIN_OUTPUTS, ExplainingGraph

FORMATS = {"onnx": ".onnx", "torch-export": ".pt2"}
EXPLAIN_MODES = ("topk", "class")
DTYPES = {"float32": torch.float32, "float16": torch.float16}
CONFIG_NAME = "preprocessing.json"


class ExportError(RuntimeError):
    """An exporter cannot express the model (or its explanation); the message says which and why."""


@dataclass
class ExportedFiles:
    classifier: Path | None
    explainer: Path | None
    config: Path


def export_model(model: nn.Module, out_dir: str | Path, *, fmt: str = "onnx", explain: str | None = "topk",
                 k: int = 1, dynamic_batch: bool = False, batch_size: int = 1, opset: int | None = None,
                 dtype: str = "float32", name: str | None = None, optimize: bool = True,
                 classifier: bool = True) -> ExportedFiles:
    """Write `classifier<ext>`, with `explain` also `explainer<ext>` (the outputs of EXPLAIN_OUTPUTS
    for the `k` highest logits, or for given classes with explain="class"), and preprocessing.json.

    The graphs take `batch_size` images, or any number with `dynamic_batch`, of the model's input
    size. `optimize=False` skips onnxscript's graph optimiser (about half of an ONNX export's time;
    onnxruntime optimises the graph again when it loads it). `classifier=False` writes the explaining
    graph alone (it returns the logits too)."""
    _check_options(model, fmt, explain, k, dtype, batch_size)
    if not classifier and not explain:
        raise ValueError("classifier=False needs an explaining graph (explain='topk' or 'class'): nothing to write")
    model = as_exported(model, dtype)
    name = name or (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
    data_config = _data_config(model)
    x = _example_images(model, data_config, 2 if dynamic_batch else batch_size, DTYPES[dtype])
    batch = torch.export.Dim("batch", min=1, max=65536) if dynamic_batch else None
    graphs = {"classifier": (model, (x,), ({0: batch},) if batch else None)} if classifier else {}
    if explain:
        targets = torch.zeros(x.shape[0], k, dtype=torch.long)
        explainer = ExplainingGraph(model, topk=k, by_class=explain == "class")
        args = (x, targets) if explain == "class" else (x,)
        shapes = tuple({0: batch} for _ in args) if batch else None
        graphs["explainer"] = (explainer, args, shapes)
    built = {role: _build(role, module, args, shapes, fmt, opset, name, optimize)
             for role, (module, args, shapes) in graphs.items()}
    out_dir = Path(out_dir)
    paths = {role: out_dir / f"{role}{FORMATS[fmt]}" for role in built}
    config = export_config(model, data_config, name, files={role: p.name for role, p in paths.items()}, fmt=fmt,
                           explain=explain, k=k, dtype=dtype, opset=opset, batch=None if dynamic_batch else batch_size)
    for role, artefact in built.items():
        with atomic_path(paths[role]) as tmp:
            _save(artefact, tmp, fmt)
    config_path = out_dir / CONFIG_NAME
    with atomic_path(config_path) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    for stale in {out_dir / f"{role}{ext}" for role in ("classifier", "explainer") for ext in FORMATS.values()}:
        if stale not in paths.values():  # an earlier export's graph, not described by the new config
            stale.unlink(missing_ok=True)
    return ExportedFiles(paths.get("classifier"), paths.get("explainer"), config_path)


def _check_options(model: nn.Module, fmt: str, explain: str | None, k: int, dtype: str, batch_size: int) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if explain is not None and explain not in EXPLAIN_MODES:
        raise ValueError(f"explain must be None or one of {', '.join(EXPLAIN_MODES)}; got {explain!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1; got {batch_size}")
    if not hasattr(model, "explain"):
        raise ValueError(f"{type(model).__name__} is not a B-cos model (it has no explain()); export a bcos_* "
                         "model or one made by timm_bcos.convert")
    classes = getattr(model, "num_classes", 0)
    if explain and not 1 <= k <= classes:
        raise ValueError(f"k (targets explained per image) must be in [1, {classes}]; got {k}")


def as_exported(model: nn.Module, dtype: str = "float32") -> nn.Module:
    """The model as it is exported: eval mode, `dtype` ("float32" or "float16"); a copy where that
    changes anything, so the caller's model stays as it was."""
    first = next(model.parameters(), None)
    if not model.training and (first is None or first.dtype == DTYPES[dtype]):
        return model
    logit = {k: v.clone() for k, v in model.logit_layer.state_dict().items()}
    model = copy.deepcopy(model).eval().to(DTYPES[dtype])
    model.logit_layer.double().load_state_dict(logit)  # bias and temperature stay exact float64 buffers,
    return model                                       # cast in its forward


def _example_images(model: nn.Module, data_config: dict, n: int, dtype: torch.dtype) -> torch.Tensor:
    input_size = data_config["input_size"]
    first = next(model.parameters(), None)
    device = first.device if first is not None else None
    return torch.rand(n, *input_size, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)


def _data_config(model: nn.Module) -> dict:
    import timm.data

    return timm.data.resolve_data_config({}, model=model)


def _build(role: str, module: nn.Module, args: tuple, shapes: tuple | None, fmt: str, opset: int | None, name: str,
           optimize: bool):
    """The graph of `module`: an ExportedProgram, or for ONNX the translated program."""
    try:
        program = torch.export.export(module, args, dynamic_shapes=shapes)
    except Exception as e:
        raise ExportError(f"torch.export cannot trace the {role} of {name}: {one_line(e)}") from e
    return program if fmt != "onnx" else _to_onnx(role, program, args, opset, name, optimize)


def _to_onnx(role: str, program, args: tuple, opset: int | None, name: str, optimize: bool):
    try:
        if role == "explainer":  # its backward ops, as forward ops ONNX has (decompositions.py)
            program = program.run_decompositions(onnx_decompositions())
        onnx_program = torch.onnx.export(program, args, dynamo=True, opset_version=opset, verbose=False,
                                         input_names=["images", "targets"][: len(args)], optimize=optimize,
                                         output_names=list(EXPLAIN_OUTPUTS if role == "explainer" else CLASSIFIER_OUTPUTS))
    except Exception as e:
        raise ExportError(f"ONNX cannot express the {role} of {name}: {_onnx_reason(e)}") from e
    written = next((i.version for i in onnx_program.model_proto.opset_import if i.domain in ("", "ai.onnx")), None)
    if opset is not None and written != opset:  # the exporter falls back when it cannot convert
        raise ExportError(f"the {role} of {name} cannot be written in ONNX opset {opset}: the exporter "
                          f"produced opset {written} (its version converter failed); give --opset {written} "
                          "or leave it out")
    return onnx_program


def _save(artefact, path: Path, fmt: str) -> None:
    if fmt == "onnx":
        artefact.save(str(path))
    else:
        torch.export.save(artefact, str(path))


def _onnx_reason(e: BaseException) -> str:
    """The exporter's own reason (e.g. 'No ONNX function found for aten.X'), not its generic banner."""
    text = str(e)
    for line in text.splitlines():
        if "No ONNX function found" in line or "Error when translating" in line or "DispatchError" in line:
            return line.strip().lstrip("<>").strip()
    return one_line(e)
