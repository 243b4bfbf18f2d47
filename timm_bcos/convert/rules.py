"""Generic rules for the linear, norm, pooling and activation modules of torch and timm.layers
(paper Sec. 3.3: linear transforms -> B-cos transforms; activations and MaxPool removed; norms
removed or replaced by ones that keep the model dynamic linear)."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .. import layers as L
from ..layers import affine as LA
from .walker import KEEP, RECURSE, ConversionError, Context, Rule, convert_modules


def _output_scale(ctx: Context, kernel_size, in_channels: int) -> float | None:
    if ctx.recipe.v1_output_scale is None:
        return None
    return L.v1_output_scale(kernel_size, in_channels, ctx.recipe.v1_output_scale)


def carry(dst: torch.Tensor, src: torch.Tensor, ctx: Context) -> None:
    if ctx.carry_weights:
        with torch.no_grad():
            dst.copy_(src.to(dst.dtype))


def _keep_bias(new: nn.Module, old: nn.Module, path: str, ctx: Context) -> None:
    """Carry a conv/linear bias the recipe keeps; in explanation mode it is a fixed term (explain/fixed.py)."""
    if new.bias is None:
        return
    if old.bias is not None:
        carry(new.bias, old.bias.repeat_interleave(ctx.recipe.max_out), ctx)
    ctx.fixed_terms.append(f"{path}.bias")


def _stem_weights(w: torch.Tensor, ctx: Context) -> torch.Tensor:
    """The first conv's weights on [x, 1-x]: [W, 0] (v2), or [W, -W]/2, which on the normalised
    encoding [n, -n] computes W n, the conventional conv (B-cosification, Sec. 3.2)."""
    if ctx.recipe.stem_init == "half_negated":
        return torch.cat([w, -w], dim=1) / 2
    return torch.cat([w, torch.zeros_like(w)], dim=1)


def _input_norm(ctx: Context, path: str):
    r = ctx.recipe
    if not r.normalize_input:
        return None
    if r.input_mean is None or r.input_std is None:
        raise ConversionError(f"{path}: recipe {r.name!r} normalises the input but has no input_mean/input_std")
    return (r.input_mean, r.input_std)


def conv_rule(m: nn.Conv2d, path: str, ctx: Context) -> nn.Module:
    if m.padding_mode != "zeros":
        raise ConversionError(f"{path}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    r = ctx.recipe
    blocks = ctx.encoded_upstream.get(path)
    stem = (path == ctx.first_conv or path in ctx.stem_convs) and not blocks
    if blocks and r.normalize_input:
        raise ConversionError(f"{path}: recipe {r.name!r} normalises the input, which a space-to-depth stem "
                              "does not support yet")
    in_ch = m.in_channels * 2 if stem or blocks else m.in_channels
    new = L.BcosConv2d(
        in_ch, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
        b=r.b, max_out=r.max_out, scale=_output_scale(ctx, m.kernel_size, in_ch), encode_input=stem,
        input_norm=_input_norm(ctx, path) if stem else None, weight_norm=r.weight_norm,
        bias=r.linear_bias and m.bias is not None,
    ).to(m.weight.dtype)
    w = m.weight.repeat_interleave(r.max_out, dim=0)
    if stem:
        w = _stem_weights(w, ctx)
    elif blocks:  # after a space-to-depth of the encoded image the channels are (block, [rgb, 1-rgb])
        o, _, kh, kw = w.shape
        w = w.reshape(o, blocks, -1, kh, kw)
        w = torch.cat([w, torch.zeros_like(w)], dim=2).reshape(o, -1, kh, kw)
    carry(new.weight, w, ctx)
    _keep_bias(new, m, path, ctx)
    return new


def unsupported(reason: str) -> Rule:
    def rule(m: nn.Module, path: str, ctx: Context):
        raise ConversionError(f"{path}: {type(m).__module__}.{type(m).__qualname__} is not supported: {reason}")
    return rule


def linear_rule(m: nn.Linear, path: str, ctx: Context) -> nn.Module:
    r = ctx.recipe
    w = m.weight.repeat_interleave(r.max_out, dim=0)
    bias = r.linear_bias and m.bias is not None
    if path == ctx.classifier and ctx.classifier_as_conv:
        new = L.BcosConv2d(m.in_features, m.out_features, 1, b=r.b, max_out=r.max_out,
                           scale=_output_scale(ctx, 1, m.in_features), weight_norm=r.weight_norm,
                           bias=bias).to(m.weight.dtype)
        carry(new.weight, w[:, :, None, None], ctx)
    else:
        new = L.BcosLinear(m.in_features, m.out_features, b=r.b, max_out=r.max_out,
                           scale=_output_scale(ctx, 1, m.in_features), weight_norm=r.weight_norm,
                           bias=bias).to(m.weight.dtype)
        carry(new.weight, w, ctx)
    _keep_bias(new, m, path, ctx)
    return new


def _finish_norm(new: nn.Module, old: nn.Module, ctx: Context) -> nn.Module:
    param = next(old.parameters(), None)
    if param is not None:
        new = new.to(param.dtype)
    for name in ("weight", "bias", "running_var"):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if src is not None and dst is not None and src.shape == dst.shape:
            carry(dst, src, ctx)
    if _folds_running_mean(new, old):
        # uncentered: (x - mu) / s * w + b == x / s * w + (b - mu / s * w) in eval mode, so a kept
        # bias carries the centering (the B-cosification code's "BnUncV2")
        std = (old.running_var + old.eps).sqrt()
        carry(new.bias, old.bias - old.running_mean / std * old.weight, ctx)
    if not ctx.recipe.norm_bias and getattr(new, "bias", None) is not None:
        L.drop_bias(new)
    return new


def _folds_running_mean(new: nn.Module, old: nn.Module) -> bool:
    return (isinstance(new, L.BatchNormUncentered2d) and isinstance(old, nn.modules.batchnorm._BatchNorm)
            and getattr(old, "running_mean", None) is not None and old.bias is not None
            and new.bias is not None and old.weight is not None)


def _norm_rule(kind: str, make: dict[str, Callable[[nn.Module], nn.Module]]) -> Rule:
    def rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
        choice = ctx.recipe.norms.get(kind, "none")
        if choice == "none":
            return nn.Identity()
        if choice not in make:
            raise ConversionError(f"{path}: recipe {ctx.recipe.name!r} asks for a {choice!r} replacement "
                                  f"of a {kind} norm ({type(m).__name__}), which does not exist")
        new = _finish_norm(make[choice](m), m, ctx)
        if getattr(new, "bias", None) is not None:  # a bias the recipe keeps on purpose: accounted as a fixed term
            ctx.fixed_terms.append(f"{path}.bias")
        return new
    return rule


def _channels(m: nn.Module) -> int:
    for attr in ("num_features", "num_channels"):
        if hasattr(m, attr):
            return getattr(m, attr)
    return m.normalized_shape[0]


def _affine(m: nn.Module) -> bool:
    return getattr(m, "weight", None) is not None


def _bn_uncentered(m: nn.Module) -> nn.Module:
    # a norm of another kind turned into a batch norm takes batch norm's own eps (as in B-cos v2's "bnu" models)
    eps = m.eps if isinstance(m, nn.BatchNorm2d) else 1e-5
    return L.BatchNormUncentered2d(_channels(m), eps=eps, affine=_affine(m))


batch_norm_rule = _norm_rule("batch", {
    "bn_uncentered": _bn_uncentered,
    "uncentered": _bn_uncentered,
})
layer_norm_rule = _norm_rule("layer", {
    "centered": lambda m: L.DetachableLayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=_affine(m)),
})
layer_norm2d_rule = _norm_rule("layer2d", {
    "centered": lambda m: L.DetachablePositionNorm2d(_channels(m), eps=m.eps, affine=_affine(m)),
    "uncentered": lambda m: L.PositionNormUncentered2d(_channels(m), eps=m.eps, affine=_affine(m)),
    "bn_uncentered": _bn_uncentered,
})
batch_norm1d_rule = _norm_rule("batch", {  # LeViT's token norms: [N, C] or [N, C, L]
    "bn_uncentered": lambda m: LA.BatchNormUncentered1d(m.num_features, eps=m.eps, affine=_affine(m)),
    "uncentered": lambda m: LA.BatchNormUncentered1d(m.num_features, eps=m.eps, affine=_affine(m)),
})
group_norm_rule = _norm_rule("group", {
    "centered": lambda m: L.DetachableGroupNorm2d(m.num_groups, m.num_channels, eps=m.eps, affine=_affine(m)),
    "uncentered": lambda m: L.GroupNormUncentered2d(m.num_groups, m.num_channels, eps=m.eps, affine=_affine(m)),
    "bn_uncentered": _bn_uncentered,
})


def remove(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    return nn.Identity()


def activation_rule(kind: str | None) -> Rule:
    """An activation under the recipe's `activations`: "remove" drops it (Sec. 3.3); "bcosify" keeps
    a piecewise-linear one (kind "keep": relu(x) = 1[x > 0] x is dynamic linear already), turns a
    self-gated one into x * g(x) with g detached (kind: its gate) and drops the rest (kind None)."""
    def rule(m: nn.Module, path: str, ctx: Context):
        if ctx.recipe.activations == "remove" or kind is None:
            return nn.Identity()
        if kind == "keep":
            if getattr(m, "inplace", False):
                m.inplace = False  # an in-place activation would overwrite a tensor explain() keeps
            return KEEP
        return L.GatedActivation(kind)
    return rule


def gate_rule(kind: str) -> Rule:
    return lambda m, path, ctx: L.DetachableGate(kind)


def max_pool_rule(m: nn.MaxPool2d, path: str, ctx: Context) -> nn.Module:
    if not ctx.recipe.max_pool_to_avg:
        return KEEP  # max pooling routes inputs: it is dynamic linear, only not in the paper's recipe
    if m.dilation not in (1, (1, 1)):
        raise ConversionError(f"{path}: MaxPool2d with dilation {m.dilation} has no AvgPool2d equivalent")
    return nn.AvgPool2d(m.kernel_size, m.stride, m.padding, ceil_mode=m.ceil_mode)


def adaptive_max_pool_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    return nn.AdaptiveAvgPool2d(m.output_size) if ctx.recipe.max_pool_to_avg else KEEP


# ----------------------------------------------------------------------------- timm.layers blocks
def grn_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """GRN: x * (1 + gamma N(x)), N(x) a degree-0 scale detached in explanation mode; the bias is dropped."""
    new = LA.DetachableGlobalResponseNorm(m.weight.shape[0], m.eps, channels_last=m.channel_dim == -1)
    new = new.to(m.weight.dtype)
    carry(new.weight, m.weight, ctx)
    return new


def affine_scale_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """scale * x + bias: the scale is a fixed linear map and stays, the bias goes (as in the norms)."""
    new = LA.Scale(torch.ones_like(m.scale))
    carry(new.weight, m.scale, ctx)
    return new


def space_to_depth_rule(m: nn.Module, path: str, ctx: Context):
    """A permutation of pixels into channels. One that reads the image (TResNet's stem) carries
    the input encoding in front, so that explanations stay per pixel, [6, H, W]."""
    if path not in ctx.image_modules:
        return KEEP
    blocks = m.bs * m.bs
    ctx.encoded_upstream[ctx.first_conv] = blocks
    return nn.Sequential(L.InputEncoding(ctx.first_conv_in // blocks), m)


def radix_softmax_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """Split attention's softmax over branches: a gate, detached in explanation mode."""
    return LA.DetachableRadixSoftmax(m.radix, m.cardinality)


_GATE_KINDS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "sigmoid": "sigmoid", "hardsigmoid": "hard_sigmoid"}


def glu_gate_rule(m: nn.Module, path: str, ctx: Context):
    """GLU MLPs (act(x_gate) * x): the activated branch is a gate, detached in explanation mode,
    so the block is a per-input scaling of the linear branch; the rest converts as usual."""
    act = getattr(m, "act", None)
    kind = _GATE_KINDS.get(type(act).__name__.lower().removesuffix("me"))
    if kind is None:
        raise ConversionError(f"{path}: gated MLP with activation {type(act).__name__} has no gate rule")
    m.act = L.DetachableGate(kind)
    return RECURSE


def batch_norm_act_rule(m: nn.Module, path: str, ctx: Context):
    """timm's BatchNormAct2d: the norm as the recipe says, then its activation as the recipe says
    (kept after the norm, in a BatchNormActUncentered2d with the same state-dict keys)."""
    new = batch_norm_rule(m, path, ctx)
    act = getattr(m, "act", None)
    if ctx.recipe.activations == "remove" or act is None or isinstance(act, nn.Identity):
        return new
    holder = nn.Module()
    holder.act = act
    convert_modules(holder, ctx, ctx.rules, prefix=f"{path}.")  # the activation rule decides
    if isinstance(holder.act, nn.Identity):
        return new
    if isinstance(new, nn.Identity):  # the recipe removes the norm: the activation alone
        return holder.act
    if type(new) is not L.BatchNormUncentered2d:
        raise ConversionError(f"{path}: {type(m).__name__} keeps its activation after an uncentered batch norm, "
                              f"the recipe gives {type(new).__name__}")
    new.__class__ = L.BatchNormActUncentered2d  # the same module, plus the activation child
    new.act = holder.act
    return new


def squared_relu_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """relu(x)^2 (times a learnable scale, plus a bias in StarReLU) is homogeneous of degree 2, not
    dynamic linear: it becomes relu(x) * relu(x).detach() in explanation mode; a bias is dropped
    as the norms' biases are (it would be an input-independent term)."""
    scale = getattr(m, "scale", None)
    new = L.DetachableSquaredReLU(scale=scale is not None)
    if scale is not None:
        new = new.to(scale.dtype)
        with torch.no_grad():
            new.scale.copy_(scale.detach().reshape(1))  # a learned scale is the model's, with or without carry
    return new
