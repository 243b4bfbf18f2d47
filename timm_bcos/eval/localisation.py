"""How well an attribution map lies on an annotated region: energy pointing game and IoU."""
from __future__ import annotations

import torch
from torch import Tensor


def _check(maps: Tensor, masks: Tensor) -> None:
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"expected maps and masks of the same shape [N, H, W], got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")


@torch.no_grad()
def energy_pointing_game(maps: Tensor, masks: Tensor) -> Tensor:
    """[N] share of the positive attribution that falls inside the mask (Wang et al., 2020,
    Score-CAM's "energy-based pointing game"); 0 for a map without positive attribution."""
    _check(maps, masks)
    pos = maps.clamp_min(0).double()
    total = pos.flatten(1).sum(1)
    inside = (pos * masks.double()).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-300), torch.zeros_like(total))


@torch.no_grad()
def attribution_iou(maps: Tensor, masks: Tensor, threshold: float = 0.5) -> Tensor:
    """[N] intersection over union of the mask with the pixels whose positive attribution is at
    least `threshold` times the image's maximum (a map without positive attribution covers nothing)."""
    _check(maps, masks)
    pos = maps.clamp_min(0).double()
    peak = pos.flatten(1).amax(1)[:, None, None]
    covered = (pos >= threshold * peak) & (peak > 0)
    region = masks > 0.5
    inter = (covered & region).flatten(1).sum(1).double()
    union = (covered | region).flatten(1).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


__all__ = ["attribution_iou", "energy_pointing_game", "localisation_scores"]


def localisation_scores(model, loader, *, device=None, threshold: float = 0.5) -> dict[str, Tensor]:
    """Energy pointing game and IoU of a B-cos model's own explanation of each image's label over
    `loader` ({"images", "labels", "masks", "annotated"} batches, e.g. guidance.collate_annotated):
    {"epg": [M], "iou": [M]} for the M annotated images."""
    epg, iou = [], []
    for batch in loader:
        keep = batch["annotated"]
        if not bool(keep.any()):
            continue
        x, t = batch["images"][keep], batch["labels"][keep]
        if device is not None:
            x, t = x.to(device), t.to(device)
        maps = model.explain(x, target=t).contributions[:, 0].cpu()
        masks = batch["masks"][keep]
        epg.append(energy_pointing_game(maps, masks))
        iou.append(attribution_iou(maps, masks, threshold))
    if not epg:
        raise ValueError("no annotated image in the split: is the mask/boxes column empty?")
    return {"epg": torch.cat(epg), "iou": torch.cat(iou)}
