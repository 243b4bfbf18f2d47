"""Where the student meets its teacher: the depths to align, and forward hooks that keep what those
modules and the classifier's input computed during one forward."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


def default_layers(model: nn.Module) -> list[str]:
    """ALOE's depths: of the model's L feature levels (timm's feature_info: a ViT's blocks, a CNN's
    stages), those at floor(L/3), floor(2L/3) and L (1-based), without repeats."""
    info = getattr(model, "feature_info", None) or []
    modules = [entry["module"] for entry in info if entry.get("module")]
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.Sequential) and len(blocks) > len(modules):
        modules = [f"blocks.{i}" for i in range(len(blocks))]
    depth = len(modules)
    picked = sorted({max(1, depth // 3), max(1, 2 * depth // 3), depth}) if depth else []
    return [modules[d - 1] for d in picked]


def pooled(features: torch.Tensor) -> torch.Tensor:
    """[B, C] from what a classifier took: a map [B, C, H, W] (the v2 head, classifier before the
    pool) is averaged over its positions, as its pool does."""
    return features.mean((2, 3)) if features.dim() == 4 else features.flatten(1)


@contextmanager
def tapped(model: nn.Module, layers: list[str]) -> Iterator[dict[str, torch.Tensor]]:
    """{path: output} of each of `layers`, and {"pooled": the classifier's input} (when the model has a
    classifier), filled by the next forward of `model`."""
    seen: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name):
        def hook(module, args, output):
            seen[name] = output[0] if isinstance(output, (tuple, list)) else output
        return hook

    try:
        for path in layers:
            handles.append(model.get_submodule(path).register_forward_hook(keep(path)))
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        if isinstance(classifier, nn.Module) and not isinstance(classifier, nn.Identity):
            handles.append(classifier.register_forward_pre_hook(
                lambda module, args: seen.__setitem__("pooled", pooled(args[0]))))
        yield seen
    finally:
        for h in handles:
            h.remove()
