"""Fixed (not learnt) position embeddings."""
from __future__ import annotations

import torch


def sincos_pos_embed(h: int, w: int, dim: int, temperature: float = 10_000.0) -> torch.Tensor:
    """[1, h*w, dim] fixed 2D sin-cos embedding, in the B-cos v2 reference's (x sin, x cos, y sin, y cos) order."""
    if dim % 4:
        raise ValueError(f"embedding dim must be a multiple of 4 for the sin-cos embedding, got {dim}")
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    omega = torch.arange(dim // 4) / (dim // 4 - 1)
    omega = 1.0 / (temperature ** omega)
    y = y.flatten()[:, None] * omega[None, :]
    x = x.flatten()[:, None] * omega[None, :]
    return torch.cat((x.sin(), x.cos(), y.sin(), y.cos()), dim=1)[None]
