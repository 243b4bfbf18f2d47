from __future__ import annotations

from torch import Tensor


def check_input(x: Tensor, *, layer: str, ndim: int | None, channels: int, channel_dim: int) -> None:
    """Raise a ValueError that says what `layer` expects and what it was given."""
    if ndim is not None and x.dim() != ndim:
        raise ValueError(
            f"{layer} expects a {ndim}D input, got a {x.dim()}D tensor of shape {tuple(x.shape)}"
        )
    if x.dim() == 0 or x.shape[channel_dim] != channels:
        where = "dim 1" if channel_dim == 1 else "the last dim"
        raise ValueError(
            f"{layer} expects {channels} channels in {where}, got shape {tuple(x.shape)}"
        )
