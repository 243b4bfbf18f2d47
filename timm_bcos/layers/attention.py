"""B-cos attention for vision transformers.

Softmax attention is linear in the values once the attention matrix is fixed:
out = A(q, k) v. In explanation mode q and k are detached, so A is part of the
dynamic linear map W(x) and the gradient flows through v only (B-cos v2).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .bcos_linear import BcosLinear
from .detach import DetachableModule


def detachable_attention(
    q: Tensor, k: Tensor, v: Tensor, detach: bool, scale: float | None = None,
    attn_mask: Tensor | None = None, is_causal: bool = False,
) -> Tensor:
    """softmax(q k^T * scale + mask) v over [..., tokens, head_dim]; q, k detached when `detach`."""
    if detach:
        q, k = q.detach(), k.detach()
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)


def attention_matrix(q: Tensor, k: Tensor, scale: float, attn_mask: Tensor | None = None,
                     is_causal: bool = False) -> Tensor:
    """softmax(q k^T * scale + mask) [..., tokens, tokens]: the matrix scaled_dot_product_attention applies."""
    logits = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        t, s = logits.shape[-2:]
        logits = logits.masked_fill(~logits.new_ones(t, s, dtype=torch.bool).tril(), float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    return logits.softmax(-1)


class DetachableSoftmax(DetachableModule):
    """Softmax whose output (an attention matrix) is detached in explanation mode."""

    def __init__(self, dim: int = -1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        out = x.softmax(self.dim)
        return out.detach() if self.detach else out

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class BcosAttention(DetachableModule):
    """Multi-head self-attention in timm's layout (`qkv`, `proj`).

    `qkv` is a plain linear layer, bias-free unless asked: q and k only shape the (detached)
    attention matrix and v enters linearly (a v bias is an input-independent term). `proj` is a
    B-cos linear layer.
    Input and output: [N, tokens, dim].
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int | None = None,
        b: float = 2.0,
        max_out: int = 1,
        qkv_bias: bool = False,
        proj_bias: bool = False,
        weight_norm: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
            head_dim = dim // num_heads
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = head_dim ** -0.5
        inner = head_dim * num_heads
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = BcosLinear(inner, dim, b=b, max_out=max_out, weight_norm=weight_norm, bias=proj_bias)
        # set by attention-based attributions (rollout, Chefer et al.): the forward then applies the attention
        # matrix explicitly and keeps it (in the autograd graph) as `self.attention` [N, heads, T, T]
        self.keep_attention = False
        self.attention: Tensor | None = None

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if x.dim() != 3 or x.shape[-1] != self.qkv.in_features:
            raise ValueError(
                f"{type(self).__name__} expects tokens of shape [N, T, {self.qkv.in_features}], "
                f"got shape {tuple(x.shape)}"
            )
        n, t, _ = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        if self.keep_attention:
            a = attention_matrix(q.detach() if self.detach else q, k.detach() if self.detach else k, self.scale,
                                 attn_mask, is_causal)
            self.attention, out = a, a @ v
        else:
            out = detachable_attention(q, k, v, self.detach, self.scale, attn_mask, is_causal)
        return self.proj(out.transpose(1, 2).reshape(n, t, -1))
