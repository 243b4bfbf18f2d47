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
        return e.logits, e.targets, e.explained, e.contributions, e.weights, e.fixed_share


class _TraceableOps(TorchFunctionMode):
    """Ops whose backward torch.export (2.14) traces into a program with a fake tensor among its
    constants ('We found a fake tensor in the exported program constant's list'), written as the
    plain ops they compute, whose backward traces cleanly: a matmul with batch dimensions (also
    inside F.linear and attention) as mm / bmm, scaled_dot_product_attention as
    softmax(q k^T * scale + mask) v, unbind as selects. Same values."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
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


def _matmul(a: Tensor, b: Tensor) -> Tensor:
    if a.dim() < 2 or b.dim() < 2:
        return torch.matmul(a, b)
    if b.dim() == 2:  # [..., n, k] @ [k, m]: one mm
        return torch.mm(a.reshape(-1, a.shape[-1]), b).reshape(*a.shape[:-1], b.shape[-1])
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a3 = a.expand(*batch, *a.shape[-2:]).reshape(-1, *a.shape[-2:])
    b3 = b.expand(*batch, *b.shape[-2:]).reshape(-1, *b.shape[-2:])
    return torch.bmm(a3, b3).reshape(*batch, a.shape[-2], b.shape[-1])


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    y = _matmul(x, weight.t())
    return y if bias is None else y + bias


def _unbind(x: Tensor, dim: int = 0) -> tuple[Tensor, ...]:
    return tuple(x.select(dim, i) for i in range(x.shape[dim]))


def _attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None = None, dropout_p: float = 0.0,
               is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False) -> Tensor:
    if dropout_p or enable_gqa:
        raise ValueError("an exported explanation supports attention without dropout or grouped queries")
    logits = _matmul(q, k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        logits = logits.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    return _matmul(logits.softmax(-1), v)
