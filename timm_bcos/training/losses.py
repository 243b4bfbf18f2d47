"""Training losses of the B-cos recipes."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class BcosBCELoss(nn.Module):
    """Binary cross-entropy on one-hot (or mixed) targets, paper Eq. 16.

    Every class is an independent sigmoid, so a logit is only pushed up by evidence for
    its own class. `off_label` raises the off-targets (v2 recipe: 1/C, "uniform off
    labels"); None keeps the paper's 0. Targets are class indices [N] or soft [N, C].
    """

    def __init__(self, off_label: float | str | None = None) -> None:
        super().__init__()
        if isinstance(off_label, str) and off_label != "uniform":
            raise ValueError(f"off_label must be a number, 'uniform' (1/C) or None, got {off_label!r}")
        self.off_label = off_label

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        num_classes = logits.shape[-1]
        if target.dim() == 1:
            target = F.one_hot(target.long(), num_classes).to(logits.dtype)
        elif target.shape != logits.shape:
            raise ValueError(f"targets must be [N] class indices or [N, {num_classes}], got {tuple(target.shape)}")
        if self.off_label is not None:
            off = 1.0 / num_classes if self.off_label == "uniform" else float(self.off_label)
            target = target.clamp_min(off)
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype))


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy for class indices or soft (mixup) targets."""

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.dim() == 1:
            return F.cross_entropy(logits, target)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


def create_loss(name: str) -> nn.Module:
    """"bce" (paper), "bce_uniform_off" (v2) or "ce" (conventional baselines)."""
    if name == "bce":
        return BcosBCELoss()
    if name == "bce_uniform_off":
        return BcosBCELoss(off_label="uniform")
    if name == "ce":
        return CrossEntropyLoss()
    raise ValueError(f"unknown loss {name!r}; expected 'bce', 'bce_uniform_off' or 'ce'")


def smooth_targets(labels: Tensor, num_classes: int, smoothing: float, dtype=torch.float32) -> Tensor:
    """Label smoothing as timm does it: 1 - smoothing + smoothing/C on the label, smoothing/C elsewhere.

    For runs without mixup/cutmix (timm's Mixup smooths its mixed targets itself).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
    off = smoothing / num_classes
    target = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return target.scatter_(1, labels.long()[:, None], 1.0 - smoothing + off)


__all__ = ["BcosBCELoss", "CrossEntropyLoss", "create_loss", "smooth_targets"]
