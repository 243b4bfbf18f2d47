"""Small linear and affine building blocks, in the form that keeps a model dynamic linear.

Each one is y = W(x) x: a fixed scale, a per-input scale detached in explanation
mode (Eqs. 13-15 hold with W(x) detached), or a gate. Additive biases are dropped:
they are input-independent terms the contributions would miss.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .detach import DetachableModule
from .norms import BatchNormUncentered2d


class Scale(nn.Module):
    """y = x * weight (broadcast): a fixed linear map, e.g. an affine block with its bias dropped."""

    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.weight

    def extra_repr(self) -> str:
        return f"shape={tuple(self.weight.shape)}"


class DetachableGlobalResponseNorm(DetachableModule):
    """ConvNeXt-V2's GRN without its bias: x + weight * x * N(x).

    N(x) = ||x||_spatial / mean_c ||x||_spatial is a per-input, per-channel scale of
    degree 0; detached in explanation mode, the layer is x * (1 + weight * N(x)).
    """

    def __init__(self, dim: int, eps: float = 1e-6, channels_last: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.channels_last = channels_last
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        spatial, channel, shape = ((1, 2), -1, (1, 1, 1, -1)) if self.channels_last else ((2, 3), 1, (1, -1, 1, 1))
        g = x.norm(p=2, dim=spatial, keepdim=True)
        n = g / (g.mean(dim=channel, keepdim=True) + self.eps)
        if self.detach:
            n = n.detach()
        return x + self.weight.view(shape) * x * n

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, channels_last={self.channels_last}"


class DetachableRadixSoftmax(DetachableModule):
    """Split attention's gate (ResNeSt): softmax over the radix branches, sigmoid for radix 1.

    The gate multiplies the branches' features; detached in explanation mode it is a
    per-input weighting of them, like a squeeze-excite gate.
    """

    def __init__(self, radix: int, cardinality: int) -> None:
        super().__init__()
        self.radix = radix
        self.cardinality = cardinality

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if self.radix > 1:
            g = x.view(n, self.cardinality, self.radix, -1).transpose(1, 2).softmax(dim=1).reshape(n, -1)
        else:
            g = torch.sigmoid(x)
        return g.detach() if self.detach else g

    def extra_repr(self) -> str:
        return f"radix={self.radix}, cardinality={self.cardinality}"


class BatchNormUncentered1d(BatchNormUncentered2d):
    """Uncentered batch norm over [N, C] or [N, C, L] (tokens), keys as torch's BatchNorm1d."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"{type(self).__name__} expects [N, C] or [N, C, L], got shape {tuple(x.shape)}")
        y = super().forward(x[..., None, None] if x.dim() == 2 else x[..., None])
        return y.reshape(x.shape)


class DetachableDropout(nn.Dropout, DetachableModule):
    """Dropout applied to an attention matrix right after its softmax: detached in explanation mode."""

    def __init__(self, p: float = 0.0) -> None:
        DetachableModule.__init__(self)
        nn.Dropout.__init__(self, p)

    def forward(self, x: Tensor) -> Tensor:
        x = super().forward(x)
        return x.detach() if self.detach else x
