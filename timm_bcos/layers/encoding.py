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


class NormalizedEncoding(nn.Module):
    """Mean/std normalisation of an encoded image [x, 1 - x], written as the linear map it is.

    B-cosified models keep their pretrained weights, which expect (x - mean) / std. On the
    encoding the constant is not needed: x + (1 - x) = 1, so (x - m) / s = ((1 - m) x - m (1 - x)) / s,
    and the inverse channels normalised with mean 1 - m are its negation. The output [n, -n] is
    linear in the encoded input, so explanations stay complete (Eq. 13) with respect to it.
    """

    def __init__(self, mean, std) -> None:
        super().__init__()
        mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        if len(mean) != len(std) or not all(v > 0 for v in std):
            raise ValueError(f"mean and std must be equal-length sequences with std > 0, got {mean} and {std}")
        # plain floats, made tensors in the input's dtype: a float32 buffer would round 0.485 for
        # a float64 model (and the recipe rebuilds them, so they stay out of the state dict)
        self.mean, self.std = mean, std

    def forward(self, e: Tensor) -> Tensor:
        c = len(self.mean)
        if e.dim() != 4 or e.shape[1] != 2 * c:
            raise ValueError(f"expected an encoded image [N, {2 * c}, H, W], got shape {tuple(e.shape)}")
        m = torch.tensor(self.mean, dtype=e.dtype, device=e.device)[:, None, None]
        s = torch.tensor(self.std, dtype=e.dtype, device=e.device)[:, None, None]
        n = ((1 - m) * e[:, :c] - m * e[:, c:]) / s
        return torch.cat([n, -n], dim=1)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
