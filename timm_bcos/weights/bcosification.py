"""The released B-cosified ImageNet CNNs and ViTs (Arya, Rao, Boehle, Schiele, NeurIPS 2024; shrebox/B-cosification,
release v0.0.1-checkpoints): which `bcos_*_bcosified` model and tag each experiment is, and the conversion of
its checkpoint (a Lightning last.ckpt, or the state dict inside it) to our layout on load.

The release's file names and hashes are not recorded here (they could not be checked from this
project), so the tags carry no download location: pass the downloaded file with
`pretrained_cfg_overlay=dict(file=PATH)`. The published accuracies are in the paper's tables; they are
not copied into the cfgs until someone checks them against the files.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .renames import add_logit_layer, rename_reference_keys
from .timm_filter import without_foreign_logit_layer

RELEASE_PAGE = "https://github.com/shrebox/B-cosification/releases/tag/v0.0.1-checkpoints"


@dataclass(frozen=True)
class BcosifiedRelease:
    experiment: str  # the reference's experiment name (bcos/experiments/ImageNet/{bcosification,vit_bcosification})
    model: str       # timm_bcos entrypoint
    tag: str         # timm pretrained tag
    source: str      # the conventional torchvision weights it was B-cosified from


BCOSIFIED_RELEASES: tuple[BcosifiedRelease, ...] = (
    BcosifiedRelease("resnet_18", "bcos_resnet18_bcosified", "bcosify_in1k", "torchvision ResNet18_Weights.DEFAULT"),
    BcosifiedRelease("resnet_50", "bcos_resnet50_bcosified", "bcosify_in1k", "torchvision ResNet50_Weights.DEFAULT"),
    BcosifiedRelease("resnet_50_V1", "bcos_resnet50_bcosified", "bcosify_tv_in1k", "torchvision IMAGENET1K_V1"),
    BcosifiedRelease("densenet_121", "bcos_densenet121_bcosified", "bcosify_in1k", "torchvision DenseNet121_Weights.DEFAULT"),
    *(BcosifiedRelease(f"bcosifyv2_bcos_{arch}_0.001_{'lrWarmup_' if size in ('b', 'l') else ''}gapReorder",
                       f"bcos_{arch}_bcosified", "bcosify_in1k", f"B-cos v2 standard_{arch} (conventional)")
      for arch, size in [(f"{kind}_{s}_{patch}", s) for kind, patch in (("simple_vit", "patch16_224"), ("vitc", "patch1_14"))
                         for s in ("ti", "s", "b", "l")]),
)

# the reference turns torchvision DenseNet's named `features` into an indexed Sequential
_DENSENET_FEATURES = {"0": "conv0", "1": "norm0", "3": "pool0", "4": "denseblock1", "5": "transition1",
                      "6": "denseblock2", "7": "transition2", "8": "denseblock3", "9": "transition3",
                      "10": "denseblock4", "11": "norm5"}
_TRANSITION = {"0": "norm", "2": "conv"}


def bcosified_cfgs(model: str, make_cfg: Callable[..., dict]) -> dict[str, dict]:
    """timm pretrained cfgs ("<model>.<tag>") of the released B-cosified checkpoints of `model`."""
    return {
        f"{r.model}.{r.tag}": make_cfg(
            origin_url=RELEASE_PAGE,
            paper_ids="arXiv:2411.00715",
            paper_name="B-cosification: Transforming Deep Neural Networks to be Inherently Interpretable",
            license="other",  # ImageNet-derived weights: research, non-commercial
            notes=(f"B-cosification release checkpoint of experiment {r.experiment!r} (from {r.source}), "
                   "converted on load by timm_bcos; not downloaded automatically: pass the file with "
                   "pretrained_cfg_overlay=dict(file=PATH)",),
        )
        for r in BCOSIFIED_RELEASES if r.model == model
    }


def _densenet_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "features" and parts[1] in _DENSENET_FEATURES:
        parts[1] = _DENSENET_FEATURES[parts[1]]
        if parts[1].startswith("transition") and parts[2] in _TRANSITION:
            parts[2] = _TRANSITION[parts[2]]
    return ".".join(parts)


def convert_bcosified_state_dict(state: dict, num_classes: int | None = None,
                                 grid_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """A B-cosification checkpoint (Lightning `{"state_dict": ...}` or the state dict itself, keys
    "model.model.<key>" or "model.<key>") in the `bcos_*_bcosified` layout, with the logit layer
    (-log(C - 1), the reference's default). ViTs: as the B-cos v2 ViTs (`grid_size`: the token grid
    of the position table, default the reference's 224x224 one)."""
    if isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    while any(k.startswith("model.") for k in state):  # Lightning's module, then the reference's wrapper
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if not any(k.endswith(".linear.weight") for k in state):
        raise ValueError("not a B-cosification checkpoint: expected B-cos layers' '<name>.linear.weight' keys, "
                         f"got e.g. {sorted(state)[:3]}")
    if any(k.startswith("transformer.") for k in state):  # the B-cos v2 ViT layout, B-cosified
        return add_logit_layer(rename_reference_keys(state, "simple_vit", grid_size), num_classes)
    densenet = any(re.match(r"features\.\d+\.", k) for k in state)
    out = {}
    for key, value in state.items():
        key = key.replace(".linear.weight", ".weight")
        out[_densenet_key(key) if densenet else key] = value
    return add_logit_layer(out, num_classes)


def bcosified_filter_fn(state_dict: dict, model: nn.Module) -> dict[str, torch.Tensor]:
    """timm `pretrained_filter_fn` of the `bcos_*_bcosified` models: a release checkpoint is converted,
    our own layout (a saved folder) passes unchanged; a checkpoint for another number of classes
    leaves the model its own logit bias."""
    if any(k.endswith(".linear.weight") for k in state_dict) or isinstance(state_dict.get("state_dict"), dict):
        grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)  # a ViT's token grid
        state_dict = convert_bcosified_state_dict(state_dict, grid_size=grid)
    return without_foreign_logit_layer(state_dict, model)
