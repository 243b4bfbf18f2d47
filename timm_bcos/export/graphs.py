"""What gets exported: the classifier, and a module whose forward *is* the explanation.

`ExplainingGraph.forward` runs `model.explain` (paper Eqs. 13-15) inside the traced graph:
the forward pass in explanation mode and one input-gradient pass per explained target, so a
runtime without PyTorch returns the prediction and its explanation from one call.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

# the explaining graph's outputs, in order; shapes for N images and K explained targets
EXPLAIN_OUTPUTS = {
    "logits": "[N, C] the model's logits",
    "classes": "[N, K] int64, the explained classes",
    "explained": "[N, K] the explained logits minus the logit bias",
    "contributions": "[N, K, H, W] Eq. 15 summed over the six encoded channels",
    "weights": "[N, K, 6, H, W] rows of W_{1->L}(x) (Eq. 13-14) for the encoded input [r, g, b, 1-r, 1-g, 1-b]",
    "fixed_share": "[N, K] share of the input-independent terms (class token, position embedding; 0 for CNNs); "
                   "contributions.sum((2, 3)) + fixed_share == explained",
}
CLASSIFIER_OUTPUTS = {"logits": "[N, C] the model's logits"}


class ExplainingGraph(nn.Module):
    """forward(x) explains the `topk` highest logits; with `by_class`, forward(x, targets)
    explains the given classes ([N, K] int64). Returns the tensors of EXPLAIN_OUTPUTS, in order."""

    def __init__(self, model: nn.Module, topk: int | None = 1, by_class: bool = False) -> None:
        super().__init__()
        if not hasattr(model, "explain"):
            raise ValueError(f"{type(model).__name__} is not a B-cos model (it has no explain())")
        self.model = model
        self.topk = None if by_class else topk
        self.by_class = by_class

    def forward(self, x: Tensor, targets: Tensor | None = None) -> tuple[Tensor, ...]:
        if self.by_class and targets is None:
            raise ValueError("this graph explains given classes: call it with (images, targets [N, K])")
        with _TraceableOps():
            e = self.model.explain(x, targets, topk=self.topk)
        classes = e.targets.clone() if self.by_class else e.targets  # an output of its own, not the input renamed
        return e.logits, classes, e.explained, e.contributions, e.weights, e.fixed_share


class _TraceableOps(TorchFunctionMode):
    """Ops whose backward torch.export (2.14) traces into a program with a fake tensor among its
    constants ('We found a fake tensor in the exported program constant's list'), written as the
    plain ops they compute, whose backward traces cleanly: a matmul with batch dimensions (also
    inside F.linear and attention) as mm / bmm, scaled_dot_product_attention as
    softmax(q k^T * scale + mask) v, unbind as selects. Same values; calls with `out=` pass through."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "out" in kwargs:
            return func(*args, **kwargs)
        if func is F.linear:
            return _linear(*args, **kwargs)
        if func in (torch.matmul, Tensor.matmul, Tensor.__matmul__):
            return _matmul(*args, **kwargs)
        if func is Tensor.__rmatmul__:
            return _matmul(args[1], args[0])
        if func is F.scaled_dot_product_attention:
            return _attention(*args, **kwargs)
        if func in (torch.unbind, Tensor.unbind):
            return _unbind(*args, **kwargs)
        return func(*args, **kwargs)


def _matmul(input: Tensor, other: Tensor) -> Tensor:  # torch.matmul's argument names
    a, b = input, other
    if a.dim() < 2 or b.dim() < 2:
        return torch.matmul(a, b)
    if b.dim() == 2:  # [..., n, k] @ [k, m]: one mm
        return torch.mm(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return torch.bmm(a3, b3).reshape(*batch, a.shape[-2], b.shape[-1])


def _linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:  # F.linear's names
    y = _matmul(input, weight.t())
    return y if bias is None else y + bias


def _unbind(input: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    return tuple(input.select(dim, i) for i in range(input.shape[dim]))


def _attention(query: Tensor, key: Tensor, value: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    """F.scaled_dot_product_attention's maths and names; a fully masked query row gives 0, as torch's does."""
    if dropout_p or enable_gqa:
        raise ValueError("an exported explanation supports attention without dropout or grouped queries "
                         f"(dropout_p={dropout_p}, enable_gqa={enable_gqa})")
    if is_causal and attn_mask is not None:
        raise ValueError("scaled_dot_product_attention takes attn_mask or is_causal, not both")
    logits = _matmul(query, key.transpose(-2, -1)) * (query.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        attn_mask = torch.ones(query.shape[-2], key.shape[-2], dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        logits = logits + attn_mask.to(logits.dtype)
        attn_mask = None
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf"))
    weights = logits.softmax(-1)
    if attn_mask is not None:
        weights = weights.masked_fill(~attn_mask.any(-1, keepdim=True), 0.0)
    return _matmul(weights, value)
