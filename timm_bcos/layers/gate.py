"""Multiplicative gates (squeeze-excite) that stay dynamic linear."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .detach import DetachableModule

# sigmoid-like gates (squeeze-excite) and the gate branch of GLU MLPs, act(x_gate) * x
_GATES = {"sigmoid": F.sigmoid, "hard_sigmoid": F.hardsigmoid, "silu": F.silu, "gelu": F.gelu}


class DetachableGate(DetachableModule):
    """sigmoid(z) (or hard sigmoid), detached in explanation mode.

    A gate multiplies features by g(z(x)); with g detached that product is a
    per-input scaling of the features, so the model stays W(x) x.
    """

    def __init__(self, kind: str = "sigmoid") -> None:
        super().__init__()
        if kind not in _GATES:
            raise ValueError(f"gate kind must be one of {sorted(_GATES)}, got {kind!r}")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        g = _GATES[self.kind](x)
        return g.detach() if self.detach else g

    def extra_repr(self) -> str:
        return self.kind


# self-gated activations act(x) = x * g(x): their gates g
_SELF_GATES = {
    "gelu": lambda x: 0.5 * (1 + torch.erf(x * 0.7071067811865476)),   # GELU = x * Phi(x)
    "gelu_tanh": lambda x: 0.5 * (1 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3))),
    "quick_gelu": lambda x: torch.sigmoid(1.702 * x),
    "silu": torch.sigmoid,                                               # SiLU / Swish = x * sigmoid(x)
    "hard_swish": F.hardsigmoid,                                         # x * relu6(x + 3) / 6
    "mish": lambda x: torch.tanh(F.softplus(x)),                         # x * tanh(softplus(x))
}


class GatedActivation(DetachableModule):
    """x * g(x) with the gate g detached in explanation mode.

    B-cosification keeps a smooth activation such as the ViTs' GELU this way (Arya et al.
    2024, Sec. 3.2): training sees the original activation, and explanation mode a
    per-input scaling, so the model stays W(x) x.
    """

    def __init__(self, kind: str = "gelu") -> None:
        super().__init__()
        if kind not in _SELF_GATES:
            raise ValueError(f"gated activation kind must be one of {sorted(_SELF_GATES)}, got {kind!r}")
        self.kind = kind

    def forward(self, x: Tensor) -> Tensor:
        g = _SELF_GATES[self.kind](x)
        return x * (g.detach() if self.detach else g)

    def extra_repr(self) -> str:
        return self.kind


class DetachableSquaredReLU(DetachableModule):
    """scale * relu(x)^2 (timm's SquaredReLU and StarReLU without its bias) as scale * relu(x) * g,
    g = relu(x) detached in explanation mode: then y = J(x) x holds (degree 1), while the plain
    squared ReLU is homogeneous of degree 2 (J(x) x = 2y)."""

    def __init__(self, scale: bool = False) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1)) if scale else None  # StarReLU's learnable scale

    def forward(self, x: Tensor) -> Tensor:
        r = F.relu(x)
        y = r * (r.detach() if self.detach else r)
        return y * self.scale if self.scale is not None else y
