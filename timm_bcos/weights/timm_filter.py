"""The timm `pretrained_filter_fn` of every bcos_* model: reference checkpoints are converted on load."""
from __future__ import annotations

import torch
from torch import nn

from .renames import add_logit_layer, rename_reference_keys


def bcos_v2_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """timm `pretrained_filter_fn`: convert a reference (`.linear.weight`) checkpoint on load.

    Our own layout passes through unchanged. The logit-layer buffers of a checkpoint
    for another number of classes are dropped so the model keeps -log(C-1) for its C.
    """
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if any(k.endswith(".linear.weight") for k in state_dict):
        name = cfg.get("architecture", "") or type(model).__name__
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)  # a ViT's token grid
        state_dict = add_logit_layer(rename_reference_keys(state_dict, name, grid))
    return without_foreign_logit_layer(state_dict, model)


def without_foreign_logit_layer(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """`state_dict` without its logit-layer buffers when its classifier is for another number of
    classes than the model's (a new head keeps -log(C-1) for its own C)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    w = state_dict.get(f"{classifier}.weight") if classifier else None
    try:
        own = getattr(model.get_submodule(classifier), "weight", None) if w is not None else None
    except AttributeError:  # num_classes=0: the classifier is gone
        own = None
    if w is not None and (own is None or w.shape[0] != own.shape[0]):
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("logit_layer.")}
    return state_dict
