"""The logit layer: f(x) / T + b (the bias b of Eq. 16)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def default_logit_bias(num_classes: int) -> float:
    """-log(C - 1): with all outputs at zero, sigmoid(logit) = 1/C."""
    return -math.log(num_classes - 1) if num_classes > 1 else 0.0


class LogitLayer(nn.Module):
    """Divide by a temperature and add a bias; both are buffers, saved with the weights.

    The bias is input independent; completeness holds for `logit - logit_bias`.
    The buffers are created in float64 (cast to the input's dtype in forward) so
    that a float64 model reproduces the exact bias, e.g. -log(999).
    """

    def __init__(self, logit_bias: float = 0.0, logit_temperature: float = 1.0) -> None:
        super().__init__()
        if logit_temperature <= 0:
            raise ValueError(f"logit_temperature must be > 0, got {logit_temperature}")
        self.register_buffer("logit_bias", torch.tensor(float(logit_bias), dtype=torch.float64))
        self.register_buffer("logit_temperature", torch.tensor(float(logit_temperature), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return x / self.logit_temperature.to(x.dtype) + self.logit_bias.to(x.dtype)

    def extra_repr(self) -> str:
        if self.logit_bias.is_meta:  # a model built on the meta device has no values to show
            return "logit_bias=<meta>, logit_temperature=<meta>"
        return f"logit_bias={self.logit_bias.item():.4g}, logit_temperature={self.logit_temperature.item():.4g}"
