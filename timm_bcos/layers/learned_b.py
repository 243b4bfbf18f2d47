"""Learned B: the B-cosification paper's ablation (Arya et al. 2024), where each B-cos layer's B is
a trained scalar instead of a fixed 2."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .bcos_conv import BcosConv2d
from .bcos_linear import BcosLinear


def learn_b(module: nn.Module) -> int:
    """Make B a learned 0-d parameter `b` in every B-cos conv and linear layer under `module`,
    starting at the layer's B, in its weight's dtype and device. Returns how many layers changed;
    a layer whose B is learned already is left alone. The layers then take the general formula
    |cos|^(B-1) (no fused kernel, no B=2 shortcut); explanations stay complete, since the factor
    is detached in explanation mode whatever B is."""
    changed = 0
    for layer in module.modules():
        if isinstance(layer, (BcosConv2d, BcosLinear)) and not isinstance(layer.b, Tensor):
            start = layer.b
            del layer.b  # a plain attribute: the parameter below takes its name
            layer.b = nn.Parameter(torch.tensor(start, dtype=layer.weight.dtype, device=layer.weight.device))
            changed += 1
    return changed
