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


def check_bcos_args(b: float, max_out: int) -> None:
    """The arguments every B-cos transform takes: B >= 1 (B = 1 is linear) and at least one MaxOut unit."""
    if b < 1:
        raise ValueError(f"b must be >= 1, got {b}")
    if max_out < 1:
        raise ValueError(f"max_out must be >= 1, got {max_out}")


def bcos_repr(max_out: int, scale: float | None) -> str:
    """The extra_repr tail of a B-cos transform: MaxOut units and v1 output scale, where set."""
    s = f", max_out={max_out}" if max_out != 1 else ""
    return s + (f", scale={scale:.4g}" if scale is not None else "")


def b_repr(b) -> str:
    """B for a layer's repr: a fixed float, or a learned 0-d parameter's current value."""
    return f"{b.item():g} (learned)" if isinstance(b, Tensor) else f"{b:g}"
