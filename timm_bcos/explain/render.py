"""Rendering of B-cos explanations (paper Sec. 4, "Visualisation details")."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.atomic import atomic_path


def weights_to_rgba(weights: Tensor, encoded_input: Tensor, smooth: int = 0,
                    alpha_percentile: float = 99.5) -> np.ndarray:
    """Colour images of dynamic linear weights.

    weights: [..., 6, H, W]; encoded_input: the matching [..., 6, H, W] (or broadcastable
    [N, 6, H, W] for weights [N, K, 6, H, W]). Pixels with positive total contribution
    keep their colour: each channel pair (c, 1-c) is normalised to sum to 1, so the
    angle decodes to a colour in [0, 1]; opacity is min(||w||_2 / p_{alpha_percentile}, 1).
    `smooth` > 1 averages the opacity over a smooth x smooth window. Returns float32 RGBA.
    """
    w = weights.detach().double()
    x = encoded_input.detach().double()
    if w.dim() == 5 and x.dim() == 4:
        x = x[:, None]
    if w.shape[-3] != 6:
        raise ValueError(f"expected weights with 6 channels ([..., 6, H, W]), got shape {tuple(w.shape)}")
    contributions = (w * x).sum(-3)
    lead = w.shape[:-3]
    h, wd = w.shape[-2:]
    flat = w.reshape(-1, 6, h, wd)
    # scale per pixel, drop negative weights, then each (c, 1-c) pair sums to 1
    scaled = (flat / (flat.abs().amax(1, keepdim=True) + 1e-12)).clamp(min=0)
    rgb = scaled[:, :3] / (scaled[:, :3] + scaled[:, 3:] + 1e-12)
    alpha = flat.norm(dim=1, keepdim=True)
    alpha = torch.where(contributions.reshape(-1, 1, h, wd) > 0, alpha, torch.zeros_like(alpha))
    if smooth and smooth > 1:
        alpha = F.avg_pool2d(alpha, smooth, stride=1, padding=smooth // 2, count_include_pad=False)[..., :h, :wd]
    limit = torch.quantile(alpha.flatten(1), alpha_percentile / 100, dim=1).clamp_min(1e-30)
    alpha = (alpha / limit[:, None, None, None]).clamp(0, 1)
    rgba = torch.cat([rgb, alpha], dim=1).permute(0, 2, 3, 1)
    return rgba.reshape(*lead, h, wd, 4).float().numpy()


def contribution_limits(contributions: Tensor, percentile: float = 99.5) -> Tensor:
    """Symmetric colour limit per map for a diverging colour map (0 stays white)."""
    c = contributions.detach().abs().flatten(-2).double()
    return torch.quantile(c, percentile / 100, dim=-1).clamp_min(1e-30)


def save_explanation_grid(
    path: str | Path,
    images: Tensor,
    explanation,
    class_names: Sequence[str] | None = None,
    smooth: int = 0,
    dpi: int = 100,
) -> Path:
    """PNG grid, one row per image: image | explanation and contribution map per explained target.

    Written to a temporary name and renamed, so `path` is never half-written.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError("writing the explanation grid needs matplotlib: pip install 'timm_bcos[eval]' "
                          "(or pip install matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    rgba = explanation.rgba(smooth=smooth)
    n, k = explanation.targets.shape
    cols = 1 + 2 * k
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.3 * n), squeeze=False)
    imgs = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    limits = contribution_limits(explanation.contributions)
    probs = torch.sigmoid(explanation.logits.detach().double())
    for i in range(n):
        axes[i, 0].imshow(imgs[i])
        axes[i, 0].set_title("input", fontsize=8)
        for j in range(k):
            t = int(explanation.targets[i, j])
            name = class_names[t] if class_names is not None and t < len(class_names) else str(t)
            label = name
            if explanation.logits.shape[-1] > t and explanation.positions is None:
                label = f"{name} ({probs[i, t]:.2f})"
            if explanation.reference_targets is not None:
                ref = int(explanation.reference_targets[i, j])
                label = f"{name} - {class_names[ref] if class_names else ref}"
            ax = axes[i, 1 + 2 * j]
            ax.imshow(np.zeros_like(imgs[i]) + 1.0)  # white behind transparent pixels
            ax.imshow(rgba[i, j])
            ax.set_title(label, fontsize=8)
            lim = float(limits[i, j])
            axc = axes[i, 2 + 2 * j]
            axc.imshow(explanation.contributions[i, j].detach().cpu().float().numpy(), cmap="bwr", vmin=-lim, vmax=lim)
            axc.set_title("contributions", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path
