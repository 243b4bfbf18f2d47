"""Run exported graphs in their own runtime (onnxruntime, or torch.export's loader) and compare
them with the PyTorch model: the figures `python -m timm_bcos export` prints after writing."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn


def run_graph(path: str | Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The outputs of an exported graph (.onnx through onnxruntime's CPU provider, .pt2 through torch)."""
    path = Path(path)
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("running an ONNX graph needs onnxruntime: pip install 'timm_bcos[export]'") from None
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: not the optimiser's notes on constants it cannot fold
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, inputs)
    program = torch.export.load(str(path)).module()
    with torch.no_grad():
        out = program(*[torch.from_numpy(v) for v in inputs.values()])
    return [t.numpy() for t in (out if isinstance(out, (tuple, list)) else (out,))]


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def compare_with_model(model: nn.Module, files, *, explain: str | None, k: int, batch: int = 2) -> dict[str, float]:
    """Norm-wise relative differences from PyTorch (bias-free quantities: random-init logits sit at the
    logit bias) and the completeness residual inside the explaining graph, on `batch` random images."""
    first = next(model.parameters())
    import timm.data

    size = tuple(timm.data.resolve_data_config({}, model=model)["input_size"])
    x = torch.rand(batch, *size, generator=torch.Generator().manual_seed(1)).to(first.dtype)
    bias = float(model.logit_layer.logit_bias)
    (logits,) = run_graph(files.classifier, {"images": x.numpy()})
    with torch.no_grad():
        ref = model(x).double().numpy()
    figures = {"classifier logits - bias": _rel(logits - bias, ref - bias)}
    if files.explainer is None:
        return figures
    inputs = {"images": x.numpy()}
    target = None
    if explain == "class":
        target = torch.randint(0, model.num_classes, (batch, k), generator=torch.Generator().manual_seed(2))
        inputs["targets"] = target.numpy()
    _, targets, explained, contributions, weights, fixed_share = run_graph(files.explainer, inputs)
    e = model.explain(x, target, topk=None if explain == "class" else k)
    figures.update({
        "share of explained classes that differ": float((targets != e.targets.numpy()).mean()),
        "explained (logit - bias)": _rel(explained, e.explained.numpy()),
        "contributions": _rel(contributions, e.contributions.numpy()),
        "weights": _rel(weights, e.weights.numpy()),
        "completeness in the graph": _rel(contributions.sum((2, 3)) + fixed_share, explained),
    })
    return figures
