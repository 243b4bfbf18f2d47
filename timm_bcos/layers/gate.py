"""Multiplicative gates (squeeze-excite) that stay dynamic linear."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

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
