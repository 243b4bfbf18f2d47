"""The B-cos input encoding [r, g, b, 1-r, 1-g, 1-b] (paper Sec. 4, "Image encoding")."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class InputEncoding(nn.Module):
    """Append the inverse of every channel: [x, 1 - x].

    The first layer of every timm_bcos model, so models take plain [0, 1]
    images. Black pixels get a non-zero norm and colours with the same angle
    in RGB stay distinguishable.
    """

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self.in_chans = in_chans

    @property
    def out_chans(self) -> int:
        return 2 * self.in_chans

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected images of shape [N, {self.in_chans}, H, W] with values in [0, 1], "
                f"got shape {tuple(x.shape)}"
            )
        return torch.cat([x, 1 - x], dim=1)

    def extra_repr(self) -> str:
        return f"in_chans={self.in_chans}"
