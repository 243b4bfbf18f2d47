"""Detach the input-dependent factors that a module computes with functional calls.

Some attention blocks call `softmax` or `scaled_dot_product_attention` inside their
forward instead of through a module. `detached_softmax()` is a torch function mode:
while active, softmax outputs (attention matrices, gates) are detached and SDPA
gets detached queries and keys. The result is A(x) v with A(x) detached, so the
block stays W(x) x in explanation mode (Eqs. 13-15).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_SOFTMAX = {torch.softmax, torch.Tensor.softmax, F.softmax, torch.special.softmax}
_SDPA = {F.scaled_dot_product_attention}


class detached_softmax(TorchFunctionMode):
    """Within the block: softmax(z) -> softmax(z).detach(); sdpa(q, k, v) -> sdpa(q.detach(), k.detach(), v)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _SOFTMAX:
            return func(*args, **kwargs).detach()
        if func in _SDPA:
            args = [a.detach() if i < 2 else a for i, a in enumerate(args)]
            kwargs = {n: (t.detach() if n in ("query", "key") else t) for n, t in kwargs.items()}
            return func(*args, **kwargs)
        return func(*args, **kwargs)
