"""The paper's colour image of an explanation from an exported graph's outputs, with numpy only.

Self-contained on purpose: a serving runtime without PyTorch can copy this file. Same maths as
`timm_bcos.explain.render.weights_to_rgba` (paper Sec. 4, "Visualisation details").
"""
from __future__ import annotations

import numpy as np


def explanation_rgba(weights, contributions, smooth: int = 0, alpha_percentile: float = 99.5) -> np.ndarray:
    """[..., H, W, 4] float32 RGBA images from the explainer's `weights` [..., 6, H, W] and
    `contributions` [..., H, W]: each pixel's colour is the angle of its (c, 1-c) weight pairs,
    its opacity ||w||_2 / the `alpha_percentile`-th percentile of the image, 0 where it
    contributes nothing positive; `smooth` > 1 averages the opacity over a smooth x smooth window."""
    w = np.asarray(weights, dtype=np.float64)
    c = np.asarray(contributions, dtype=np.float64)
    if w.ndim < 3 or w.shape[-3] != 6 or c.shape != w.shape[:-3] + w.shape[-2:]:
        raise ValueError(f"expected weights [..., 6, H, W] and contributions [..., H, W]; "
                         f"got {w.shape} and {c.shape}")
    lead, (h, wd) = w.shape[:-3], w.shape[-2:]
    flat = w.reshape(-1, 6, h, wd)
    # scale per pixel, drop negative weights, then each (c, 1-c) pair sums to 1
    scaled = np.clip(flat / (np.abs(flat).max(axis=1, keepdims=True) + 1e-12), 0, None)
    rgb = scaled[:, :3] / (scaled[:, :3] + scaled[:, 3:] + 1e-12)
    alpha = np.where(c.reshape(-1, h, wd) > 0, np.sqrt((flat ** 2).sum(axis=1)), 0.0)
    if smooth and smooth > 1:
        alpha = _box_mean(alpha, smooth)
    limit = np.maximum(np.quantile(alpha.reshape(alpha.shape[0], -1), alpha_percentile / 100, axis=1), 1e-30)
    alpha = np.clip(alpha / limit[:, None, None], 0, 1)
    rgba = np.concatenate([rgb, alpha[:, None]], axis=1).transpose(0, 2, 3, 1)
    return rgba.reshape(*lead, h, wd, 4).astype(np.float32)


def _box_mean(a: np.ndarray, size: int) -> np.ndarray:
    """Mean over the size x size window of each pixel, only over pixels inside the image
    (torch's avg_pool2d with padding size // 2, count_include_pad=False, cropped to the image)."""
    pad = size // 2
    h, w = a.shape[-2:]

    def window_sums(v: np.ndarray) -> np.ndarray:
        padded = np.pad(v, [(0, 0)] * (v.ndim - 2) + [(pad + 1, pad), (pad + 1, pad)])
        s = padded.cumsum(-2).cumsum(-1)  # integral image with a leading zero row and column
        return (s[..., size:size + h, size:size + w] - s[..., :h, size:size + w]
                - s[..., size:size + h, :w] + s[..., :h, :w])

    return window_sums(a) / window_sums(np.ones((h, w)))
