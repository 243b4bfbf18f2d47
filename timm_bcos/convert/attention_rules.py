"""Generic rules for attention: in explanation mode the attention matrix A(x) (softmax, or a
linear-attention kernel) is detached, so an attention block is A(x) v, dynamic linear in x.

Blocks that compute their attention inside `forward` get a subclass of their own class with
an explanation-mode switch (the flag `bcos_detach`), made once per class and named in this
module's namespace (made by the converting process; whole models do not pickle, see runtime).
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from .. import layers as L
from ..layers.detached_ops import detached_softmax
from .rules import carry
from .walker import RECURSE, ConversionError, Context


def timm_attention_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    for norm in ("q_norm", "k_norm"):
        if not isinstance(getattr(m, norm, nn.Identity()), nn.Identity):
            raise ConversionError(f"{path}: attention with {norm} is not supported yet")
    dim, r = m.qkv.in_features, ctx.recipe
    new = L.BcosAttention(dim, num_heads=m.num_heads, head_dim=m.head_dim, b=r.b, max_out=r.max_out,
                          qkv_bias=r.linear_bias and m.qkv.bias is not None,
                          proj_bias=r.linear_bias and m.proj.bias is not None,
                          weight_norm=r.weight_norm).to(m.qkv.weight.dtype)
    carry(new.qkv.weight, m.qkv.weight, ctx)
    carry(new.proj.weight, m.proj.weight.repeat_interleave(r.max_out, dim=0), ctx)
    for name, kept in (("qkv", new.qkv.bias), ("proj", new.proj.bias)):  # fixed terms (explain/fixed.py)
        if kept is not None:
            old = getattr(m, name).bias
            carry(kept, old if name == "qkv" else old.repeat_interleave(r.max_out), ctx)
            ctx.fixed_terms.append(f"{path}.{name}.bias")
    return new


def softmax_rule(m: nn.Softmax, path: str, ctx: Context) -> nn.Module:
    return L.DetachableSoftmax(m.dim if m.dim is not None else -1)


def unfused_attention_rule(m: nn.Module, path: str, ctx: Context):
    """Attention modules with a fused (SDPA) path: use their explicit softmax path instead,
    whose Softmax module becomes detachable."""
    m.fused_attn = False
    return RECURSE



def _switchable_subclass(cls: type, name: str, overrides: dict, cache: dict[type, type]) -> type:
    """A subclass of `cls` named `name` with `overrides` and an explanation-mode switch (the
    flag `bcos_detach`), made once per class (`cache`) and named in this module's namespace."""
    if cls not in cache:
        cache[cls] = type(name, (cls,), {
            **overrides,
            "set_explanation_mode": lambda self, activate=True: setattr(self, "bcos_detach", bool(activate)),
            "is_in_explanation_mode": property(lambda self: self.bcos_detach),
            "__module__": __name__, "__qualname__": name,
        })
        setattr(sys.modules[__name__], name, cache[cls])
    return cache[cls]


_DETACHED_SOFTMAX_CLASSES: dict[type, type] = {}


def _detached_softmax_class(cls: type) -> type:
    def forward(self, *args, **kwargs):
        if self.bcos_detach:
            with detached_softmax():
                return cls.forward(self, *args, **kwargs)
        return cls.forward(self, *args, **kwargs)

    name = f"DetachedSoftmax_{cls.__module__.replace('.', '_')}_{cls.__qualname__}"
    return _switchable_subclass(cls, name, {"forward": forward, "_bcos_detached_softmax": True},
                                _DETACHED_SOFTMAX_CLASSES)


def functional_softmax_rule(m: nn.Module, path: str, ctx: Context):
    """Blocks that call softmax / SDPA in their forward (attention): in explanation mode the
    attention matrix A(x) (and any softmax gate) is detached, so the block is A(x) v."""
    if not getattr(type(m), "_bcos_detached_softmax", False):
        m.__class__ = _detached_softmax_class(type(m))
        m.bcos_detach = False
    return RECURSE


def _mobilevit_linear_attention(self, x: torch.Tensor) -> torch.Tensor:
    """MobileViT-v2 separable self-attention, B-cos form: out = v * c(x), the relu on v dropped
    (activations go); the context c = sum over tokens of k * softmax(q) plays the attention
    matrix's part and is detached in explanation mode."""
    q, k, v = self.qkv_proj(x).split([1, self.embed_dim, self.embed_dim], dim=1)
    context = (k * self.attn_drop(q.softmax(dim=-1))).sum(dim=-1, keepdim=True)
    if self.bcos_detach:
        context = context.detach()
    return self.out_drop(self.out_proj(v * context))


def _mobilevit_no_cross_attention(self, x, x_prev=None):
    raise NotImplementedError("B-cos MobileViT-v2 attention: cross-attention (x_prev) has no rule yet")


_MOBILEVIT_CLASSES: dict[type, type] = {}


def mobilevit_linear_attention_rule(m: nn.Module, path: str, ctx: Context):
    """mobilevitv2: see `_mobilevit_linear_attention`."""
    cls = type(m)
    if not getattr(cls, "_bcos_linear_attention", False):
        m.__class__ = _switchable_subclass(cls, f"Bcos{cls.__name__}", {
            "_forward_self_attn": _mobilevit_linear_attention, "_forward_cross_attn": _mobilevit_no_cross_attention,
            "_bcos_linear_attention": True}, _MOBILEVIT_CLASSES)
        m.bcos_detach = False
    return RECURSE


def _lite_mla_attention(self, q, k, v):
    """EfficientViT's ReLU linear attention, out = A v with A = relu(q) relu(k)^T / row sums:
    the ReLU kernel belongs to A (as softmax does), and q, k are detached in explanation mode."""
    in_dtype, dtype = v.dtype, torch.promote_types(v.dtype, torch.float32)  # timm: float32; float64 stays
    q, k, v = torch.relu(q).to(dtype), torch.relu(k).to(dtype), v.to(dtype)
    if self.bcos_detach:
        q, k = q.detach(), k.detach()
    out = q @ (k.transpose(-1, -2) @ v)  # v carries a column of ones: its output is the row sum of A
    return (out[..., :-1] / (out[..., -1:] + self.eps)).to(in_dtype)


_LITE_MLA_CLASSES: dict[type, type] = {}


def lite_mla_rule(m: nn.Module, path: str, ctx: Context):
    """efficientvit (MIT): see `_lite_mla_attention`; the kernel moves into the attention, so the
    walker's activation rule does not remove it."""
    cls = type(m)
    if getattr(cls, "_bcos_linear_attention", False):
        return RECURSE
    if not isinstance(m.kernel_func, nn.ReLU):
        raise ConversionError(f"{path}: LiteMLA with kernel {type(m.kernel_func).__name__} has no rule (only ReLU)")
    m.__class__ = _switchable_subclass(cls, f"Bcos{cls.__name__}",
                                       {"_attn": _lite_mla_attention, "_bcos_linear_attention": True},
                                       _LITE_MLA_CLASSES)
    m.kernel_func = nn.Identity()
    m.bcos_detach = False
    return RECURSE


def attention_qkv_bias_rule(m: nn.Module, path: str, ctx: Context):
    """BEiT / EVA attention: separate q, k, v biases dropped (affine maps lose their bias),
    then detached attention as in `functional_softmax_rule`."""
    for name in ("q_bias", "k_bias", "v_bias"):
        if getattr(m, name, None) is not None:
            setattr(m, name, None)
    return functional_softmax_rule(m, path, ctx)


