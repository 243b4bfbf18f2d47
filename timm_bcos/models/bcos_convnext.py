"""B-cos ConvNeXt (v2 zoo): position norm (centered LayerNorm2d) or uncentered batch norm variants.

timm's ConvNeXt is built with conv_mlp=True so that blocks run channels-first
like the reference (dwconv -> norm -> 1x1 -> 1x1 -> layer scale).
"""
from timm.models import generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt
from torch import nn

from ..convert import HeadSpec, register_family
from ._builder import bcos_cfg, build_bcos, model_cfgs


def _head(model: ConvNeXt, carry_weights: bool) -> HeadSpec | None:
    """The v2 layout pool(fc(norm(x))), as the v2 zoo's checkpoints have it, where it keeps the function.

    timm's default head is pool -> norm -> fc. With weights carried over, moving fc before the pool
    would move it across that LayerNorm (not exact at B=1 once the map is larger than 1x1), so the
    family's own head stays. `head_norm_first=True` puts the norm in `norm_pre`, before the pool: the
    v2 layout is exact there. A hidden head layer (`head_hidden_size`) keeps the family's head.
    """
    head = model.head
    if not isinstance(getattr(head, "pre_logits", None), (nn.Identity, type(None))):
        return None
    norm = getattr(head, "norm", None)
    if norm is None or isinstance(norm, nn.Identity):  # head_norm_first: the norm ran before the pool
        return HeadSpec(classifier="head.fc", pool="head.global_pool", after=("head.flatten",))
    if carry_weights:
        return None
    return HeadSpec(classifier="head.fc", pool="head.global_pool", before=("head.norm",), after=("head.flatten",))


register_family(ConvNeXt, head=_head)


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, first_conv="stem.0", classifier="head.fc", min_input_size=(3, 32, 32), **kwargs)


default_cfgs = generate_default_cfgs(model_cfgs([
    "bcos_convnext_tiny",
    "bcos_convnext_base",
    "bcos_convnext_tiny_bnu",
    "bcos_convnext_base_bnu",
], _cfg))


def _create(variant: str, conventional: str, pretrained: bool, recipe: str, **kwargs):
    return build_bcos(variant, pretrained, conventional=conventional, recipe=recipe,
                      conventional_kwargs=dict(conv_mlp=True),
                      feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True), **kwargs)


@register_model
def bcos_convnext_tiny(pretrained=False, **kwargs):
    """B-cos v2 ConvNeXt-T with detachable position norms."""
    return _create("bcos_convnext_tiny", "convnext_tiny", pretrained, "v2", **kwargs)


@register_model
def bcos_convnext_base(pretrained=False, **kwargs):
    """B-cos v2 ConvNeXt-B with detachable position norms."""
    return _create("bcos_convnext_base", "convnext_base", pretrained, "v2", **kwargs)


@register_model
def bcos_convnext_tiny_bnu(pretrained=False, **kwargs):
    """B-cos v2 ConvNeXt-T with uncentered batch norms."""
    return _create("bcos_convnext_tiny_bnu", "convnext_tiny", pretrained, "v2_bnu", **kwargs)


@register_model
def bcos_convnext_base_bnu(pretrained=False, **kwargs):
    """B-cos v2 ConvNeXt-B with uncentered batch norms."""
    return _create("bcos_convnext_base_bnu", "convnext_base", pretrained, "v2_bnu", **kwargs)
