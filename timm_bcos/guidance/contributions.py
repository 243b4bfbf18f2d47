"""Contribution maps that stay differentiable w.r.t. the model's parameters (double backward).

In explanation mode the input gradient of a logit is its row of W_{1->L}(x) (Eq. 14) and
`W(x) * x` summed over channels is its contribution map (Eq. 15). Taking that gradient with
`create_graph=True` keeps the map a function of the weights, so a loss on it trains them.
At a layer l the same holds for the layer's output a_l: the logit is W_{l->L}(a_l) a_l.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import InputEncoding, explanation_mode


@contextlib.contextmanager
def frozen_running_stats(model: nn.Module):
    """Batch norms use batch statistics but leave their running statistics as they are: the
    guidance forward is a second look at the step's images, not a second batch."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None) for m in norms]
    for m in norms:
        m.momentum = 0.0  # running <- (1 - 0) running + 0 batch
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def guidance_layer(model: nn.Module, where: str | None) -> str | None:
    """Module path for --guidance-layer: None/"input" (the encoded input), "final" / "mid"
    (the last / middle entry of timm's feature_info), or a module path."""
    if where in (None, "input"):
        return None
    if where in ("final", "mid"):
        info = getattr(model, "feature_info", None)
        if not info:
            raise ValueError(f"{type(model).__name__} has no feature_info: give --guidance-layer as a module path")
        modules = [f["module"] if isinstance(f, dict) else f for f in
                   (info.get_dicts() if hasattr(info, "get_dicts") else info)]
        return modules[-1] if where == "final" else modules[len(modules) // 2]
    model.get_submodule(where)  # raises AttributeError naming what is missing
    return where


def contribution_maps(model: nn.Module, x: Tensor, targets: Tensor, *, layer: str | None = None,
                      size: tuple[int, int] | None = None) -> Tensor:
    """[N, H, W] contributions of logit `targets[i]` of image i, differentiable w.r.t. the
    parameters; at `layer` (a module path) the map has the layer's resolution, bilinearly
    upsampled to `size` when given (as Rao et al. do). The model keeps its train/eval state.
    """
    if targets.shape != (x.shape[0],):
        raise ValueError(f"targets must be [N] = [{x.shape[0]}] class indices, got shape {tuple(targets.shape)}")
    captured: list[Tensor] = []

    def capture_leaf(module, inputs, output):  # the encoding has no parameters: a leaf is enough
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf

    if layer is None:
        encoders = [m for m in model.modules() if isinstance(m, InputEncoding)]
        hooks = [m.register_forward_hook(capture_leaf) for m in encoders]
    else:
        hooks = [model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o))]
    try:
        with torch.enable_grad(), explanation_mode(model), frozen_running_stats(model):
            logits = model(x)
            explained = logits.gather(1, targets[:, None].to(logits.device)).sum()
            grads = torch.autograd.grad(explained, captured, create_graph=True)
    finally:
        for h in hooks:
            h.remove()
    if not captured:
        raise ValueError(f"{type(model).__name__} has no InputEncoding module: is it a B-cos model?")
    if any(a.dim() != 4 for a in captured):
        raise ValueError(f"layer {layer!r} gives {tuple(captured[0].shape)}; guidance maps need [N, C, H, W] "
                         "outputs (a convolutional layer)")
    maps = sum((g * a).sum(1) for g, a in zip(grads, captured))
    if size is not None and tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return maps


__all__ = ["contribution_maps", "guidance_layer"]
