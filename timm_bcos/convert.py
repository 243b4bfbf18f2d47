"""The generic conversion pass: a conventional (timm) model in, a B-cos model out.

A table of rules maps module types to their B-cos replacement (paper Sec. 3.3:
linear transforms -> B-cos transforms; activations, MaxPool and norms removed
or replaced by ones that keep the model dynamic linear). Families whose head
must change shape (v2: 1x1 B-cos classifier before global pooling) register a
`HeadSpec`. Anything without a rule raises `ConversionError` naming its type
and path; nothing conventional is left behind silently.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

import sys

import torch
from torch import nn

from . import layers as L
from .layers import affine as LA
from .layers.detached_ops import detached_softmax
from .explain.mixin import attach_bcos_mixin
from .origin import record_origin
from .recipes import Recipe, resolve_recipe


class ConversionError(TypeError):
    """A module that the conversion pass cannot turn into a B-cos module."""


@dataclass(frozen=True)
class HeadSpec:
    """Where a family's head lives, for the v2 layout pool(classifier(before(x)))."""

    classifier: str                 # path of the final Linear
    pool: str                       # path of the global pooling module
    before: tuple[str, ...] = ()    # modules applied to the feature map first
    after: tuple[str, ...] = ()     # modules applied after pooling (e.g. a flatten)
    drop_rate_attr: str | None = "drop_rate"  # attribute holding the head dropout rate


@dataclass
class Context:
    recipe: Recipe
    carry_weights: bool
    first_conv: str | None
    classifier: str | None
    classifier_as_conv: bool
    stem_convs: frozenset = frozenset()  # every conv that reads the raw image (gets the encoded input)
    fixed_terms: list = field(default_factory=list)  # input-independent additive terms (paths), see explain
    image_modules: frozenset = frozenset()  # leaf modules registered before the first conv (they read the image)
    first_conv_in: int = 3                  # input channels of the first conv
    encoded_upstream: dict = field(default_factory=dict)  # conv path -> pixel blocks of an encoded space-to-depth


# ----------------------------------------------------------------------------- rules
KEEP = object()     # sentinel: leave the module as it is
RECURSE = object()  # sentinel: a container, convert its children

Rule = Callable[[nn.Module, str, Context], Any]


def _output_scale(ctx: Context, kernel_size, in_channels: int) -> float | None:
    if ctx.recipe.v1_output_scale is None:
        return None
    return L.v1_output_scale(kernel_size, in_channels, ctx.recipe.v1_output_scale)


def _carry(dst: torch.Tensor, src: torch.Tensor, ctx: Context) -> None:
    if ctx.carry_weights:
        with torch.no_grad():
            dst.copy_(src.to(dst.dtype))


def conv_rule(m: nn.Conv2d, path: str, ctx: Context) -> nn.Module:
    if m.padding_mode != "zeros":
        raise ConversionError(f"{path}: padding_mode={m.padding_mode!r} is not supported (only 'zeros')")
    r = ctx.recipe
    blocks = ctx.encoded_upstream.get(path)
    stem = (path == ctx.first_conv or path in ctx.stem_convs) and not blocks
    in_ch = m.in_channels * 2 if stem or blocks else m.in_channels
    new = L.BcosConv2d(
        in_ch, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
        b=r.b, max_out=r.max_out, scale=_output_scale(ctx, m.kernel_size, in_ch), encode_input=stem,
    ).to(m.weight.dtype)
    w = m.weight.repeat_interleave(r.max_out, dim=0)
    if stem:  # the inverse channels [1-r, 1-g, 1-b] start at zero weight
        w = torch.cat([w, torch.zeros_like(w)], dim=1)
    elif blocks:  # after a space-to-depth of the encoded image the channels are (block, [rgb, 1-rgb])
        o, _, kh, kw = w.shape
        w = w.reshape(o, blocks, -1, kh, kw)
        w = torch.cat([w, torch.zeros_like(w)], dim=2).reshape(o, -1, kh, kw)
    _carry(new.weight, w, ctx)
    return new


def unsupported(reason: str) -> Rule:
    def rule(m: nn.Module, path: str, ctx: Context):
        raise ConversionError(f"{path}: {type(m).__module__}.{type(m).__qualname__} is not supported: {reason}")
    return rule


def linear_rule(m: nn.Linear, path: str, ctx: Context) -> nn.Module:
    r = ctx.recipe
    w = m.weight.repeat_interleave(r.max_out, dim=0)
    if path == ctx.classifier and ctx.classifier_as_conv:
        new = L.BcosConv2d(m.in_features, m.out_features, 1, b=r.b, max_out=r.max_out,
                           scale=_output_scale(ctx, 1, m.in_features)).to(m.weight.dtype)
        _carry(new.weight, w[:, :, None, None], ctx)
        return new
    new = L.BcosLinear(m.in_features, m.out_features, b=r.b, max_out=r.max_out,
                       scale=_output_scale(ctx, 1, m.in_features)).to(m.weight.dtype)
    _carry(new.weight, w, ctx)
    return new


def _finish_norm(new: nn.Module, old: nn.Module, ctx: Context) -> nn.Module:
    param = next(old.parameters(), None)
    if param is not None:
        new = new.to(param.dtype)
    for name in ("weight", "bias", "running_var"):
        src, dst = getattr(old, name, None), getattr(new, name, None)
        if src is not None and dst is not None and src.shape == dst.shape:
            _carry(dst, src, ctx)
    if not ctx.recipe.norm_bias and getattr(new, "bias", None) is not None:
        L.drop_bias(new)
    return new


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


def keep(m: nn.Module, path: str, ctx: Context):
    return KEEP


def recurse(m: nn.Module, path: str, ctx: Context):
    return RECURSE


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


def timm_attention_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    for norm in ("q_norm", "k_norm"):
        if not isinstance(getattr(m, norm, nn.Identity()), nn.Identity):
            raise ConversionError(f"{path}: attention with {norm} is not supported yet")
    dim = m.qkv.in_features
    new = L.BcosAttention(dim, num_heads=m.num_heads, head_dim=m.head_dim, b=ctx.recipe.b,
                          max_out=ctx.recipe.max_out).to(m.qkv.weight.dtype)
    _carry(new.qkv.weight, m.qkv.weight, ctx)
    _carry(new.proj.weight, m.proj.weight.repeat_interleave(ctx.recipe.max_out, dim=0), ctx)
    return new


def softmax_rule(m: nn.Softmax, path: str, ctx: Context) -> nn.Module:
    return L.DetachableSoftmax(m.dim if m.dim is not None else -1)


def unfused_attention_rule(m: nn.Module, path: str, ctx: Context):
    """Attention modules with a fused (SDPA) path: use their explicit softmax path instead,
    whose Softmax module becomes detachable."""
    m.fused_attn = False
    return RECURSE


_AVG_POOL_BRANCH_CLASSES: dict[type, type] = {}


def pool_branch_to_avg_rule(m: nn.Module, path: str, ctx: Context):
    """Inception reduction blocks call F.max_pool2d in their forward; swap in a subclass
    whose pooling branch is a 3x3/2 average pool (same output shape)."""
    if ctx.recipe.max_pool_to_avg:
        cls = type(m)
        if cls not in _AVG_POOL_BRANCH_CLASSES:
            def _forward(self, x):
                outputs = cls._forward(self, x)
                outputs[-1] = torch.nn.functional.avg_pool2d(x, kernel_size=3, stride=2)
                return outputs
            _AVG_POOL_BRANCH_CLASSES[cls] = type(f"AvgPool{cls.__name__}", (cls,), {"_forward": _forward})
        m.__class__ = _AVG_POOL_BRANCH_CLASSES[cls]
    return RECURSE


# ----------------------------------------------------------------------------- linear and affine blocks
def grn_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """GRN: x * (1 + gamma N(x)), N(x) a degree-0 scale detached in explanation mode; the bias is dropped."""
    new = LA.DetachableGlobalResponseNorm(m.weight.shape[0], m.eps, channels_last=m.channel_dim == -1)
    new = new.to(m.weight.dtype)
    _carry(new.weight, m.weight, ctx)
    return new


def affine_scale_rule(m: nn.Module, path: str, ctx: Context) -> nn.Module:
    """scale * x + bias: the scale is a fixed linear map and stays, the bias goes (as in the norms)."""
    new = LA.Scale(torch.ones_like(m.scale))
    _carry(new.weight, m.scale, ctx)
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


def _switchable_subclass(cls: type, name: str, overrides: dict, cache: dict[type, type]) -> type:
    """A subclass of `cls` named `name` with `overrides` and an explanation-mode switch (the
    flag `bcos_detach`), made once per class (`cache`) and importable from this module, so
    converted models pickle."""
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


def _timm_types(names: dict[str, Rule]) -> dict[type, Rule]:
    """Rules for timm classes, looked up by dotted name so missing ones are skipped."""
    import importlib

    out: dict[type, Rule] = {}
    for dotted, rule in names.items():
        mod, _, cls = dotted.rpartition(".")
        try:
            out[getattr(importlib.import_module(mod), cls)] = rule
        except (ImportError, AttributeError):
            continue
    return out


_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Mish, nn.LeakyReLU, nn.ELU, nn.CELU,
    nn.SELU, nn.PReLU, nn.Tanh, nn.Softplus, nn.Hardtanh,
)

RULES: dict[type, Rule] = {
    # already B-cos
    **{t: keep for t in (
        L.BcosConv2d, L.BcosLinear, L.BcosAttention, L.DetachableSoftmax, L.InputEncoding, L.LogitLayer, L.DetachableGate,
        L.BatchNormUncentered2d, L.GroupNormUncentered2d, L.DetachableGroupNorm2d, L.DetachableLayerNorm,
        L.DetachablePositionNorm2d, L.PositionNormUncentered2d,
    )},
    nn.Conv2d: conv_rule,
    nn.Linear: linear_rule,
    nn.BatchNorm2d: batch_norm_rule,
    nn.LayerNorm: layer_norm_rule,
    nn.GroupNorm: group_norm_rule,
    nn.BatchNorm1d: batch_norm1d_rule,
    **{t: remove for t in _ACTIVATIONS},
    nn.Sigmoid: gate_rule("sigmoid"),
    nn.Softmax: softmax_rule,
    nn.Hardsigmoid: gate_rule("hard_sigmoid"),
    nn.MaxPool2d: max_pool_rule,
    nn.AdaptiveMaxPool2d: adaptive_max_pool_rule,
    # parameter-free linear plumbing
    **{t: keep for t in (
        nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
        nn.ZeroPad2d, nn.Upsample,
    )},
    nn.Sequential: recurse, nn.ModuleList: recurse, nn.ModuleDict: recurse,
    **_timm_types({
        "timm.layers.LayerNorm2d": layer_norm2d_rule,
        "timm.layers.norm.LayerNorm2d": layer_norm2d_rule,
        "timm.layers.Conv2dSame": unsupported("TF 'SAME' padding is computed per input size"),
        "timm.layers.activations.Swish": remove, "timm.layers.activations.Mish": remove,
        "timm.layers.activations.HardSwish": remove, "timm.layers.activations.HardMish": remove,
        "timm.layers.activations.GELU": remove, "timm.layers.activations.GELUTanh": remove,
        "timm.layers.activations.QuickGELU": remove, "timm.layers.activations.PReLU": remove,
        "timm.layers.activations.Tanh": remove,
        "timm.layers.activations.Sigmoid": gate_rule("sigmoid"),
        "timm.layers.activations.HardSigmoid": gate_rule("hard_sigmoid"),
        "timm.layers.activations_me.SwishMe": remove, "timm.layers.activations_me.HardSwishMe": remove,
        "timm.layers.activations_me.HardSigmoidMe": gate_rule("hard_sigmoid"),
        "timm.layers.DropPath": keep,
        "timm.layers.LayerScale": keep,
        "timm.layers.LayerScale2d": keep,
        "timm.layers.Attention": timm_attention_rule,
        "timm.models.swin_transformer.WindowAttention": unfused_attention_rule,
        "timm.models.inception_v3.InceptionB": pool_branch_to_avg_rule,
        "timm.models.inception_v3.InceptionD": pool_branch_to_avg_rule,
        "timm.layers.adaptive_avgmax_pool.FastAdaptiveAvgPool": keep,
        "timm.layers.adaptive_avgmax_pool.AdaptiveAvgMaxPool2d": unsupported("avg+max pooling; use global_pool='avg'"),
    }),
    # timm.layers building blocks; each line says why it stays W(x) x in explanation mode
    **_timm_types({
        "timm.layers.grn.GlobalResponseNorm": grn_rule,          # x * (1 + gamma N(x)), N detached, bias dropped
        "timm.layers.blur_pool.BlurPool2d": keep,                 # a fixed low-pass filter: linear
        "timm.layers.space_to_depth.SpaceToDepth": space_to_depth_rule,  # a permutation of pixels into channels
        "timm.layers.space_to_depth.DepthToSpace": keep,          # its inverse permutation
        "timm.layers.split_attn.RadixSoftmax": radix_softmax_rule,  # softmax gate over branches, detached
        "timm.layers.pos_embed_rel.RelPosBias": keep,             # added to attention logits, detached with them
        "timm.layers.pos_embed_rel.RelPosBiasTf": keep,           # same
        "timm.layers.pos_embed_rel.RelPosMlp": keep,              # same (an MLP of fixed coordinates)
        "timm.layers.pos_embed_sincos.RotaryEmbeddingCat": keep,  # rotates q and k only, which are detached
        "timm.layers.pos_embed_sincos.RotaryEmbedding": keep,     # same
        "timm.layers.mlp.SwiGLU": glu_gate_rule,                  # act(x_gate) * x: a detached gate
        "timm.layers.mlp.GluMlp": glu_gate_rule,                  # same
        "timm.layers.layer_scale.LayerScale": keep,               # per-channel scale
        "timm.layers.layer_scale.LayerScale2d": keep,             # per-channel scale
    }),
    # model files' own small modules, by family
    **_timm_types({
        "timm.models.metaformer.Scale": keep,                     # poolformer/convformer: per-channel scale
        "timm.models.fastvit.LayerScale2d": keep,                 # fastvit: per-channel scale
        "timm.models.efficientformer.Flat": keep,                 # efficientformer: flatten + transpose
        "timm.models.hgnet.LearnableAffineBlock": affine_scale_rule,  # hgnet: scale * x + bias, bias dropped
        "timm.models.selecsls.SelectSeq": keep,                   # selecsls: picks or concatenates branches
        "timm.models.beit.Attention": attention_qkv_bias_rule,    # beit: q/v biases dropped, attention detached
        "timm.models.eva.EvaAttention": attention_qkv_bias_rule,  # eva: same
        "timm.models.edgenext.CrossCovarianceAttn": functional_softmax_rule,  # edgenext: channel attention detached
        "timm.models.levit.Attention": functional_softmax_rule,   # levit: attention detached
        "timm.models.levit.AttentionDownsample": functional_softmax_rule,
        "timm.models.efficientformer.Attention": functional_softmax_rule,  # efficientformer: attention detached
        "timm.models.mambaout.GatedConvBlock": glu_gate_rule,     # mambaout: act(g) * x, a detached gate
        "timm.models.levit.Downsample": keep,                     # levit: token subsampling (a selection)
        "timm.models.edgenext.PositionalEncodingFourier": keep,   # edgenext: input-independent, a fixed term
        "timm.models.mobilevit.LinearSelfAttention": mobilevit_linear_attention_rule,  # v * context, context detached
        "timm.models.efficientvit_mit.LiteMLA": lite_mla_rule,  # efficientvit: ReLU linear attention A(q, k) v, A detached
    }),
}

# Families whose v2 head is pool(classifier(before(x))): keyed by timm class name.
HEAD_SPECS: dict[str, HeadSpec] = {
    "timm.models.resnet.ResNet": HeadSpec(classifier="fc", pool="global_pool"),
    "timm.models.densenet.DenseNet": HeadSpec(classifier="classifier", pool="global_pool"),
    "timm.models.inception_v3.InceptionV3": HeadSpec(classifier="fc", pool="global_pool"),
    "timm_bcos.models.bcos_cifar.CifarConvNet": HeadSpec(classifier="fc", pool="global_pool"),
    "timm.models.vgg.VGG": HeadSpec(classifier="head.fc", pool="head.global_pool", before=("pre_logits",)),
    "timm.models.convnext.ConvNeXt": HeadSpec(classifier="head.fc", pool="head.global_pool", before=("head.norm",),
                                              after=("head.flatten",)),
}


def find_rule(module: nn.Module, rules: dict[type, Rule]) -> Rule | None:
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls]
    return None


def _head_spec_for(model: nn.Module) -> HeadSpec | None:
    for cls in type(model).__mro__:
        spec = HEAD_SPECS.get(f"{cls.__module__}.{cls.__qualname__}")
        if spec is not None:
            return spec
    return None


def _first_conv_path(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0]
    modules = dict(model.named_modules())
    if first and isinstance(modules.get(first), nn.Conv2d):
        return first
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name
    return None


def _stem_conv_paths(model: nn.Module, first: str) -> frozenset:
    """The first conv and every conv registered before any conv of another input width that has
    the image's channel count: re-parameterisable stems (RepVGG, MobileOne, FastViT) run several
    branches on the image, and each must read the encoded input, or its share is lost."""
    width = model.get_submodule(first).in_channels
    paths = {first}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels != width:
                break
            paths.add(name)
    return frozenset(paths)


def _image_modules(model: nn.Module, first: str) -> frozenset:
    """Leaf modules registered before the first conv: those that read the image."""
    paths = set()
    for name, m in model.named_modules():
        if name == first:
            break
        if next(m.children(), None) is None:
            paths.add(name)
    return frozenset(paths)


# timm's names for input-independent additive tokens and embeddings (their share is reported by explain)
FIXED_TERM_NAMES = frozenset({"cls_token", "reg_token", "dist_token", "pos_embed", "absolute_pos_embed"})
# modules whose output does not depend on the input and is added to the features
FIXED_TERM_MODULES = tuple(_timm_types({"timm.models.edgenext.PositionalEncodingFourier": keep}))
# modules holding tables that only rotate queries and keys (detached): not additive terms
_QK_ONLY = tuple(_timm_types({"timm.layers.pos_embed_sincos.RotaryEmbeddingCat": keep,
                              "timm.layers.pos_embed_sincos.RotaryEmbedding": keep}))


def _fixed_terms(model: nn.Module, ctx: Context) -> tuple[str, ...]:
    found = []
    for owner, module in model.named_modules():
        prefix = f"{owner}." if owner else ""
        if isinstance(module, FIXED_TERM_MODULES):
            found.append(owner)
        elif not isinstance(module, _QK_ONLY):
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            found += [prefix + name for name, t in tensors if t is not None and name in FIXED_TERM_NAMES]
    return tuple(dict.fromkeys([*found, *ctx.fixed_terms]))


def _classifier_path(model: nn.Module, spec: HeadSpec | None) -> str | None:
    if spec is not None:
        return spec.classifier
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    clf = get()
    for name, m in model.named_modules():
        if m is clf:
            return name
    return None


def _on_device_of(module: nn.Module):
    """A `torch.device` context of the module's first own tensor, or a no-op when it has none."""
    t = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device(t.device) if t is not None else contextlib.nullcontext()


def convert_modules(module: nn.Module, ctx: Context, rules: dict[type, Rule], prefix: str = "") -> nn.Module:
    """Replace every child of `module` in place by its B-cos counterpart."""
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        rule = find_rule(child, rules)
        if rule is None and hasattr(child, "fused_attn"):
            rule = functional_softmax_rule  # timm marks its attention blocks with `fused_attn`
        if rule is None:
            if next(child.children(), None) is None:
                raise ConversionError(
                    f"no B-cos rule for {type(child).__module__}.{type(child).__qualname__} at '{path}'; "
                    "pass rules={Type: rule} to convert() to add one"
                )
            rule = recurse
        with _on_device_of(child):  # a replacement lives where the module it replaces lived (meta included)
            new = rule(child, path, ctx)
        if new is RECURSE:
            convert_modules(child, ctx, rules, prefix=f"{path}.")
        elif new is not KEEP and new is not child:
            setattr(module, name, new)
    return module


def convert(
    model: nn.Module,
    recipe: str | Recipe = "v2",
    *,
    carry_weights: bool = False,
    head: HeadSpec | None | str = "auto",
    rules: dict[type, Rule] | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> nn.Module:
    """Turn `model` into a B-cos model in place and return it.

    recipe: "v2", "v2_bnu", "v1" or a `Recipe`; `overrides` replace recipe fields
        (b=2.5, max_out=2, logit_bias=..., norms={"batch": "none"}, ...).
    carry_weights: copy the conventional weights over (B-cosification);
        otherwise the B-cos layers keep their own initialisation.
    head: a `HeadSpec`, "auto" (the registered one for the model's family) or None
        (keep the family's own head: pool, then a B-cos linear classifier).
    rules: extra {module type: rule} entries, checked before the built-in table.
    """
    r = resolve_recipe(recipe, **overrides)
    spec = _head_spec_for(model) if head == "auto" else head
    if not r.head_before_pool:
        spec = None
    table = {**RULES, **(rules or {})}
    ctx = Context(
        recipe=r,
        carry_weights=carry_weights,
        first_conv=_first_conv_path(model),
        classifier=_classifier_path(model, spec),
        classifier_as_conv=spec is not None,
    )
    if ctx.first_conv is None:
        raise ConversionError(f"{type(model).__name__} has no Conv2d to carry the input encoding")
    ctx.stem_convs = _stem_conv_paths(model, ctx.first_conv)
    ctx.first_conv_in = model.get_submodule(ctx.first_conv).in_channels
    ctx.image_modules = _image_modules(model, ctx.first_conv)
    root_rule = find_rule(model, rules or {})
    if root_rule is not None:
        raise ConversionError("convert() takes a whole model; use its rules on submodules directly")
    convert_modules(model, ctx, table)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", 0)
    record_origin(model, r, spec, _head_spec_for(model))  # so that a saved config rebuilds it
    model = attach_bcos_mixin(model, r, spec, ctx, table, num_classes)
    # paths of input-independent terms: explain() reports their share beside the contributions
    model.bcos_fixed_terms = _fixed_terms(model, ctx)
    return model
