"""Pictures and numbers the explorer shows for one explained target, as plain arrays and text.

The explanation is the paper's colour rendering (Sec. 4, via `weights_to_rgba`) over white;
the contribution map uses the same diverging blue-white-red scale as the PNG grid, with a
symmetric limit so that zero stays white. Maps are enlarged by pixel repetition so the
user sees the model's own resolution.
"""
from __future__ import annotations

import numpy as np
import torch

from ..explain.render import contribution_limits, weights_to_rgba
from ..explain.result import Explanation

DISPLAY_SIDE = 256  # small inputs (CIFAR: 32 px) are enlarged to about this size


def enlarge(img: np.ndarray, side: int = DISPLAY_SIDE) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor, so every model pixel stays a square."""
    factor = max(1, side // max(img.shape[:2]))
    return img.repeat(factor, 0).repeat(factor, 1) if factor > 1 else img


def explanation_picture(expl: Explanation, j: int, smooth: int = 0, percentile: float = 99.5) -> np.ndarray:
    """[H, W, 3] uint8: the colour explanation of target j of the first image, composited on white."""
    rgba = weights_to_rgba(expl.weights[:1, j], expl.encoded_input[:1], smooth=smooth,
                           alpha_percentile=percentile)[0]
    alpha = rgba[..., 3:]
    rgb = rgba[..., :3] * alpha + (1.0 - alpha)
    return enlarge((rgb * 255).round().astype(np.uint8))


def contribution_picture(expl: Explanation, j: int, percentile: float = 99.5) -> np.ndarray:
    """[H, W, 3] uint8: signed contributions (Eq. 15) in blue (negative) - white - red (positive)."""
    c = expl.contributions[0, j].detach().double()
    lim = contribution_limits(c, percentile)
    v = (c / lim).clamp(-1, 1).numpy()[..., None]
    neg, pos = np.minimum(v, 0), np.maximum(v, 0)
    rgb = np.concatenate([1 + neg, 1 - np.abs(v), 1 - pos], axis=-1)  # matplotlib's "bwr"
    return enlarge((rgb * 255).round().astype(np.uint8))


def numbers(expl: Explanation, j: int, logit_bias: float, label: str) -> str:
    """Markdown: logit, logit bias and the completeness check, sum of contributions = logit - bias."""
    total = float(expl.contributions[0, j].double().sum())
    explained = float(expl.explained[0, j])
    if expl.positions is not None:
        r, c = (int(v) for v in expl.positions[0, j])
        return (f"**{label}** at position ({r}, {c}): activation **{explained:+.4f}**, "
                f"sum of contributions **{total:+.4f}** (difference {total - explained:+.1e})")
    if expl.reference_targets is not None:
        return (f"**{label}**: logit difference **{explained:+.4f}** (the biases cancel), "
                f"sum of contributions **{total:+.4f}** (difference {total - explained:+.1e})")
    t = int(expl.targets[0, j])
    logit = float(expl.logits[0, t])
    return (f"**{label}**: logit **{logit:+.4f}**, logit bias **{logit_bias:+.4f}**, "
            f"logit - bias **{explained:+.4f}** = sum of contributions **{total:+.4f}** "
            f"(difference {total - explained:+.1e})")


def scores(expl: Explanation, class_names: list[str]) -> dict[str, float]:
    """The explained classes and their sigmoid scores (B-cos models are trained with BCE, Eq. 16)."""
    probs = torch.sigmoid(expl.logits[0].double())
    return {class_names[int(t)]: float(probs[int(t)]) for t in expl.targets[0]}
