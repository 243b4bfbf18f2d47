"""Guidance losses on B-cos contribution maps (training with annotations).

Each loss takes contribution maps A [N, H, W] (positive: evidence for the class) and masks
M [N, H, W] in {0, 1} marking where the evidence should be, and returns one number per
image [N]. Rao et al., ICCV 2023 ("Studying How to Efficiently and Effectively Guide Models
with Explanations") compare these four on B-cos networks.
"""
from __future__ import annotations

import torch
from torch import Tensor

_EPS = 1e-12


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"expected maps and masks of the same shape [N, H, W], got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")


def _normalised_positive(maps: Tensor) -> Tensor:
    """max(A, 0) / max over the image: the [0, 1] attribution the L1 and PPCE losses compare."""
    pos = maps.clamp_min(0)
    return pos / pos.flatten(1).amax(1).clamp_min(_EPS)[:, None, None]


def energy_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """1 - (positive contribution inside the mask) / (all positive contribution).

    Rao et al. 2023, the "Energy" loss: one minus the energy pointing game score; 0 when all
    positive evidence lies inside the region, 1 when none does. Scale-free.
    """
    _check(maps, masks)
    pos = maps.clamp_min(0)
    inside = (pos * masks).flatten(1).sum(1)
    total = pos.flatten(1).sum(1)
    return 1 - inside / total.clamp_min(_EPS)


def l1_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """Mean |normalised positive contribution - mask| (the L1 loss of Rao et al. 2023, after
    GRADIA, Gao et al. 2022): pushes the map towards the mask's shape."""
    _check(maps, masks)
    return (_normalised_positive(maps) - masks).abs().flatten(1).mean(1)


def rrr_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """Sum of squared contributions outside the mask ("Right for the Right Reasons", Ross et
    al., IJCAI 2017, on input gradients; Rao et al. 2023 on attributions). Not scale-free:
    weight it to the logits' scale."""
    _check(maps, masks)
    return (maps * (1 - masks)).square().flatten(1).sum(1)


def ppce_loss(maps: Tensor, masks: Tensor) -> Tensor:
    """Per-pixel cross-entropy inside the mask: mean -log(normalised positive contribution)
    over the annotated pixels (Rao et al. 2023, after HAICS, Shen et al. 2021)."""
    _check(maps, masks)
    log_a = _normalised_positive(maps).clamp(1e-6, 1).log()
    area = masks.flatten(1).sum(1)
    return -(log_a * masks).flatten(1).sum(1) / area.clamp_min(1)


GUIDANCE_LOSSES = {"energy": energy_loss, "l1": l1_loss, "rrr": rrr_loss, "ppce": ppce_loss}


def guidance_loss(name: str, maps: Tensor, masks: Tensor, annotated: Tensor | None = None) -> Tensor:
    """Mean of loss `name` over the annotated images (`annotated` [N] bool; all when None);
    0 (still in the graph) when none is annotated."""
    if name not in GUIDANCE_LOSSES:
        raise ValueError(f"unknown guidance loss {name!r}; expected one of {sorted(GUIDANCE_LOSSES)}")
    if maps.dtype in (torch.float16, torch.bfloat16):  # eps and ratios need float32's range
        maps = maps.float()
    per_image = GUIDANCE_LOSSES[name](maps, masks.to(maps.dtype))
    if annotated is None:
        return per_image.mean()
    weight = annotated.to(per_image.dtype)
    return (per_image * weight).sum() / weight.sum().clamp_min(1)


__all__ = ["GUIDANCE_LOSSES", "energy_loss", "guidance_loss", "l1_loss", "ppce_loss", "rrr_loss"]
