"""B-cos linear layer on [..., in_features] inputs (vectors and tokens)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import b_repr, bcos_repr, check_bcos_args, check_input
from .detach import DetachableModule
from .functional import bcos_scale, max_out, scales_output, unit_norm_rows

# Added to ||x|| in the cosine denominator, as in the reference.
VECTOR_NORM_EPS = 1e-12


class BcosLinear(DetachableModule):
    """B-cos linear transform: unit-norm rows, output scaled by |cos|^(B-1).

    `weight` has shape [out_features * max_out, in_features].
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        b: float = 2.0,
        max_out: int = 1,
        scale: float | None = None,
        weight_norm: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        check_bcos_args(b, max_out)
        self.in_features = in_features
        self.out_features = out_features
        self.b = float(b)
        self.max_out = max_out
        self.scale = scale
        self.weight = nn.Parameter(
            torch.empty(out_features * max_out, in_features, device=device, dtype=dtype)
        )
        self.weight_norm = weight_norm  # False: the weights keep their scale (B-cosification)
        self.bias = nn.Parameter(torch.zeros(out_features * max_out, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, layer=type(self).__name__, ndim=None, channels=self.in_features, channel_dim=-1)
        out = F.linear(x, unit_norm_rows(self.weight) if self.weight_norm else self.weight, self.bias)
        out = max_out(out, self.max_out, dim=-1)
        if scales_output(self.b):
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) + VECTOR_NORM_EPS
            out = bcos_scale(out, norm, self.b, self.detach)
        if self.scale is not None:
            out = out / self.scale
        return out

    def extra_repr(self) -> str:
        s = f"in_features={self.in_features}, out_features={self.out_features}, b={b_repr(self.b)}"
        if not self.weight_norm:
            s += ", weight_norm=False"
        if self.bias is not None:
            s += ", bias=True"
        return s + bcos_repr(self.max_out, self.scale)
