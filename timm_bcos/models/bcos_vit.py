"""B-cos vision transformers (B-cos v2 zoo): simple ViT and ViT-C, built on timm's VisionTransformer.

The reference ("Better plain ViT baselines", B-cos v2): no class token, a fixed 2D
sin-cos position embedding, pre-norm blocks with bias-free centered LayerNorms, a
plain linear qkv (q and k only shape the attention matrix, which explanation mode
detaches), B-cos linear projections and MLPs without activations, mean pooling,
then LayerNorm and a B-cos linear classifier. ViT-C replaces the 16x16 patch
projection by a stem of 3x3 B-cos convolutions with GroupNorm(1) and a 1x1 projection.

The position embedding is added whatever the input: explanations account for
everything else, so contributions sum to the logit minus its bias up to the
embedding's share (as in the reference).
"""
from __future__ import annotations

from functools import partial

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import PatchEmbed
from timm.models import VisionTransformer, generate_default_cfgs, register_model
from torch import nn

from ..convert import register_composite
from ..layers import sincos_pos_embed
from ..weights.bcosification import bcosified_cfgs, bcosified_filter_fn
from ._builder import bcos_cfg, build_bcos, model_cfgs


class ConvStemPatchEmbed(PatchEmbed):
    """timm's PatchEmbed whose projection is a conv stem (Xiao et al., "Early convolutions
    help transformers see better"): 3x3 convs (stride 2 where channels grow), GroupNorm(1),
    the MLP's activation (GELU in the reference's conventional ViT-C; B-cos v2 removes it, the
    B-cosification gates it), then a 1x1 projection. `patch_size` is the stem's total stride."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, stem_channels=(), act_layer=nn.GELU,
                 **kwargs):
        kwargs.pop("bias", None)
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                         bias=False, **kwargs)
        dd = dict(device=kwargs.get("device"), dtype=kwargs.get("dtype"))
        layers: list[nn.Module] = []
        cin, encoded = in_chans, 2 * in_chans  # strides follow the reference, which sees the 6-channel encoding
        for c in stem_channels:
            layers += [nn.Conv2d(cin, c, 3, 2 if c > encoded else 1, 1, bias=False, **dd), nn.GroupNorm(1, c, **dd),
                       act_layer()]
            cin = encoded = c
        layers.append(nn.Conv2d(cin, embed_dim, 1, bias=False, **dd))
        self.proj = nn.Sequential(*layers)


register_composite(ConvStemPatchEmbed)  # a conv stack, then timm's PatchEmbed flattening


class SimpleVisionTransformer(VisionTransformer):
    """timm's VisionTransformer whose position embedding is the reference's fixed 2D sin-cos
    table: a buffer (saved in the state dict, never trained), as timm keeps fixed embeddings.

    head_per_token: fc_norm and the classifier on every token, then the mean (B-cosification's
    "gap reorder", Arya et al. 2024): each token's logits are explained by its own linear map.
    With it, forward_head(pre_logits=True) is the mean of the normalised tokens, whose image under
    the (non-linear) B-cos head is not the logits; global_pool "" gives every token's logits, and
    a pool other than "avg" or "" is timm's pool-then-head."""

    def __init__(self, *args, device=None, dtype=None, head_per_token: bool = False, **kwargs):
        kwargs["pos_embed"] = "none"
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        self.head_per_token = head_per_token
        del self.pos_embed  # the plain attribute None, replaced by the buffer
        self.register_buffer("pos_embed", self._sincos(dtype or torch.get_default_dtype(), device))

    def _sincos(self, dtype, device) -> torch.Tensor:
        h, w = self.patch_embed.grid_size
        return sincos_pos_embed(h, w, self.embed_dim).to(device=device, dtype=dtype)

    def set_input_size(self, img_size=None, patch_size=None) -> None:
        """timm's resize, with the table recomputed for the new grid (not interpolated, not a Parameter)."""
        old = self.pos_embed
        self.pos_embed = None
        try:
            super().set_input_size(img_size=img_size, patch_size=patch_size)
        finally:
            self.pos_embed = self._sincos(old.dtype, old.device)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if not self.head_per_token or self.global_pool != "avg":  # global_pool "": the tokens, as timm's
            return super().forward_head(x, pre_logits=pre_logits)
        x = self.head_drop(self.fc_norm(x[:, self.num_prefix_tokens:]))
        return x.mean(1) if pre_logits else self.head(x).mean(1)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return super().no_weight_decay() - {"pos_embed"}  # a buffer: nothing to decay


def _simple_vit(stem_channels=None, **kwargs) -> VisionTransformer:
    """The conventional counterpart, with the reference's fixed position embedding."""
    defaults = dict(
        img_size=224, patch_size=16, class_token=False, global_pool="avg", fc_norm=True, qkv_bias=False,
        norm_layer=partial(nn.LayerNorm, eps=1e-5),
        embed_layer=partial(ConvStemPatchEmbed, stem_channels=stem_channels) if stem_channels else PatchEmbed,
    )
    return SimpleVisionTransformer(**{**defaults, **kwargs})  # a saved config's global_pool etc. override


def _cfg(url: str = "", first_conv: str = "patch_embed.proj", **kwargs):
    # token output, no pooled map (pool_size None, as timm's ViTs); the grid is fixed by the embedding
    return bcos_cfg(url, first_conv=first_conv, classifier="head", pool_size=None, fixed_input_size=True,
                    min_input_size=(3, 224, 224), **kwargs)


def _cfg_c(url: str = "", **kwargs):
    return _cfg(url, first_conv="patch_embed.proj.0", **kwargs)


_ARCHS = {
    "bcos_simple_vit_ti_patch16_224": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4),
    "bcos_simple_vit_s_patch16_224": dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4),
    "bcos_simple_vit_b_patch16_224": dict(embed_dim=768, depth=12, num_heads=12, mlp_ratio=4),
    "bcos_simple_vit_l_patch16_224": dict(embed_dim=1024, depth=14, num_heads=16, mlp_ratio=4),
    "bcos_vitc_ti_patch1_14": dict(embed_dim=192, depth=11, num_heads=3, mlp_ratio=4, stem_channels=(24, 48, 96, 192)),
    "bcos_vitc_s_patch1_14": dict(embed_dim=384, depth=11, num_heads=6, mlp_ratio=4, stem_channels=(48, 96, 192, 384)),
    "bcos_vitc_b_patch1_14": dict(embed_dim=768, depth=11, num_heads=12, mlp_ratio=4,
                                  stem_channels=(64, 128, 128, 256, 256, 512)),
    "bcos_vitc_l_patch1_14": dict(embed_dim=1024, depth=13, num_heads=16, mlp_ratio=4,
                                  stem_channels=(64, 128, 128, 256, 256, 512)),
}

default_cfgs = generate_default_cfgs({
    **model_cfgs([n for n in _ARCHS if "simple" in n], _cfg),
    **model_cfgs([n for n in _ARCHS if "vitc" in n], _cfg_c),
    **model_cfgs([f"{n}_bcosified" for n in _ARCHS if "simple" in n], _cfg, bcosified_cfgs),
    **model_cfgs([f"{n}_bcosified" for n in _ARCHS if "vitc" in n], _cfg_c, bcosified_cfgs),
})


def _sized(kwargs: dict) -> dict:
    """A ViT built for another input size (`img_size=`, as train.py --img-size builds one) takes and
    expects that size: its cfg's input and minimum size follow (an overlay given explicitly wins)."""
    size = kwargs.get("img_size")
    if size is None:
        return kwargs
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    overlay = {"input_size": (3, h, w), "min_input_size": (3, h, w), **(kwargs.get("pretrained_cfg_overlay") or {})}
    return {**kwargs, "pretrained_cfg_overlay": overlay}


def _create(variant: str, pretrained: bool, **kwargs):
    kwargs = _sized(kwargs)
    return build_bcos(variant, pretrained, conventional=_simple_vit, recipe="v2",
                      conventional_kwargs=_ARCHS[variant], feature_cfg=dict(feature_cls="getter"), **kwargs)


def _create_bcosified(variant: str, pretrained: bool, **kwargs):
    """The B-cosification release's ViTs (Arya et al. 2024): the conventional ViT of B-cos v2
    B-cosified with recipe "bcosify" (gated GELU, weight-only centered LayerNorms, normalised
    [x, 1-x] input, B-cos linears without weight norm) and the head on every token."""
    arch = {**_ARCHS[variant.removesuffix("_bcosified")], "head_per_token": True}
    kwargs = _sized(kwargs)
    kwargs.setdefault("input_mean", IMAGENET_DEFAULT_MEAN)  # what the B-cos v2 conventional ViTs were trained on
    kwargs.setdefault("input_std", IMAGENET_DEFAULT_STD)
    return build_bcos(variant, pretrained, conventional=_simple_vit, recipe="bcosify", conventional_kwargs=arch,
                      feature_cfg=dict(feature_cls="getter"), pretrained_filter_fn=bcosified_filter_fn, **kwargs)


@register_model
def bcos_simple_vit_ti_patch16_224(pretrained=False, **kwargs):
    """B-cos v2 simple ViT-Ti/16."""
    return _create("bcos_simple_vit_ti_patch16_224", pretrained, **kwargs)


@register_model
def bcos_simple_vit_s_patch16_224(pretrained=False, **kwargs):
    """B-cos v2 simple ViT-S/16."""
    return _create("bcos_simple_vit_s_patch16_224", pretrained, **kwargs)


@register_model
def bcos_simple_vit_b_patch16_224(pretrained=False, **kwargs):
    """B-cos v2 simple ViT-B/16."""
    return _create("bcos_simple_vit_b_patch16_224", pretrained, **kwargs)


@register_model
def bcos_simple_vit_l_patch16_224(pretrained=False, **kwargs):
    """B-cos v2 simple ViT-L/16 (depth 14, as released)."""
    return _create("bcos_simple_vit_l_patch16_224", pretrained, **kwargs)


@register_model
def bcos_vitc_ti_patch1_14(pretrained=False, **kwargs):
    """B-cos v2 ViT-C-Ti: conv stem, then a ViT on the 14x14 grid."""
    return _create("bcos_vitc_ti_patch1_14", pretrained, **kwargs)


@register_model
def bcos_vitc_s_patch1_14(pretrained=False, **kwargs):
    """B-cos v2 ViT-C-S."""
    return _create("bcos_vitc_s_patch1_14", pretrained, **kwargs)


@register_model
def bcos_vitc_b_patch1_14(pretrained=False, **kwargs):
    """B-cos v2 ViT-C-B."""
    return _create("bcos_vitc_b_patch1_14", pretrained, **kwargs)


@register_model
def bcos_vitc_l_patch1_14(pretrained=False, **kwargs):
    """B-cos v2 ViT-C-L."""
    return _create("bcos_vitc_l_patch1_14", pretrained, **kwargs)


@register_model
def bcos_simple_vit_ti_patch16_224_bcosified(pretrained=False, **kwargs):
    """bcos_simple_vit_ti_patch16_224 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_simple_vit_ti_patch16_224_bcosified", pretrained, **kwargs)


@register_model
def bcos_simple_vit_s_patch16_224_bcosified(pretrained=False, **kwargs):
    """bcos_simple_vit_s_patch16_224 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_simple_vit_s_patch16_224_bcosified", pretrained, **kwargs)


@register_model
def bcos_simple_vit_b_patch16_224_bcosified(pretrained=False, **kwargs):
    """bcos_simple_vit_b_patch16_224 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_simple_vit_b_patch16_224_bcosified", pretrained, **kwargs)


@register_model
def bcos_simple_vit_l_patch16_224_bcosified(pretrained=False, **kwargs):
    """bcos_simple_vit_l_patch16_224 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_simple_vit_l_patch16_224_bcosified", pretrained, **kwargs)


@register_model
def bcos_vitc_ti_patch1_14_bcosified(pretrained=False, **kwargs):
    """bcos_vitc_ti_patch1_14 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_vitc_ti_patch1_14_bcosified", pretrained, **kwargs)


@register_model
def bcos_vitc_s_patch1_14_bcosified(pretrained=False, **kwargs):
    """bcos_vitc_s_patch1_14 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_vitc_s_patch1_14_bcosified", pretrained, **kwargs)


@register_model
def bcos_vitc_b_patch1_14_bcosified(pretrained=False, **kwargs):
    """bcos_vitc_b_patch1_14 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_vitc_b_patch1_14_bcosified", pretrained, **kwargs)


@register_model
def bcos_vitc_l_patch1_14_bcosified(pretrained=False, **kwargs):
    """bcos_vitc_l_patch1_14 as the B-cosification release has it (tag bcosify_in1k takes its checkpoint)."""
    return _create_bcosified("bcos_vitc_l_patch1_14_bcosified", pretrained, **kwargs)
