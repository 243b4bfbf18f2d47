"""B-cos ResNets and ResNeXts: timm's ResNet, converted.

v2 (Boehle et al. 2024): uncentered batch norm without bias, B=2, AvgPool in
the stem, 1x1 B-cos classifier before global pooling. v1 (the CVPR 2022
paper, Sec. 3.3): no norms, two MaxOut units per neuron.
"""
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import ResNet

from ..convert import HeadSpec, register_family
from ..weights.bcosification import bcosified_cfgs, bcosified_filter_fn
from ._builder import bcos_cfg, build_bcos, model_cfgs

register_family(ResNet, head=HeadSpec(classifier="fc", pool="global_pool"))


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, first_conv="conv1", classifier="fc", **kwargs)


default_cfgs = generate_default_cfgs(model_cfgs([
    "bcos_resnet18",
    "bcos_resnet34",
    "bcos_resnet50",
    "bcos_resnet101",
    "bcos_resnet152",
    "bcos_resnext50_32x4d",
    "bcos_resnet34_v1",
], _cfg) | model_cfgs(["bcos_resnet18_bcosified", "bcos_resnet50_bcosified"], _cfg, bcosified_cfgs))


def _create(variant: str, conventional: str, pretrained: bool, recipe: str = "v2", **kwargs):
    return build_bcos(variant, pretrained, conventional=conventional, recipe=recipe, **kwargs)


@register_model
def bcos_resnet18(pretrained=False, **kwargs):
    """B-cos v2 ResNet-18."""
    return _create("bcos_resnet18", "resnet18", pretrained, **kwargs)


@register_model
def bcos_resnet34(pretrained=False, **kwargs):
    """B-cos v2 ResNet-34."""
    return _create("bcos_resnet34", "resnet34", pretrained, **kwargs)


@register_model
def bcos_resnet50(pretrained=False, **kwargs):
    """B-cos v2 ResNet-50."""
    return _create("bcos_resnet50", "resnet50", pretrained, **kwargs)


@register_model
def bcos_resnet101(pretrained=False, **kwargs):
    """B-cos v2 ResNet-101."""
    return _create("bcos_resnet101", "resnet101", pretrained, **kwargs)


@register_model
def bcos_resnet152(pretrained=False, **kwargs):
    """B-cos v2 ResNet-152."""
    return _create("bcos_resnet152", "resnet152", pretrained, **kwargs)


@register_model
def bcos_resnext50_32x4d(pretrained=False, **kwargs):
    """B-cos v2 ResNeXt-50 32x4d."""
    return _create("bcos_resnext50_32x4d", "resnext50_32x4d", pretrained, **kwargs)


@register_model
def bcos_resnet34_v1(pretrained=False, **kwargs):
    """The paper's B-cos ResNet-34 (Tab. 2): MaxOut 2, no norms, activations or max pooling."""
    return _create("bcos_resnet34_v1", "resnet34", pretrained, recipe="v1", **kwargs)


@register_model
def bcos_resnet18_bcosified(pretrained=False, **kwargs):
    """ResNet-18 B-cosified as Arya et al. (2024) release it: recipe "bcosify" (ReLU kept, normalised
    [x, 1-x] input, no weight norm); tag bcosify_in1k takes the release checkpoint (file=...)."""
    return _create("bcos_resnet18_bcosified", "resnet18", pretrained, recipe="bcosify",
                   pretrained_filter_fn=bcosified_filter_fn, **kwargs)


@register_model
def bcos_resnet50_bcosified(pretrained=False, **kwargs):
    """ResNet-50 B-cosified as Arya et al. (2024) release it (from torchvision's V2 weights: tag
    bcosify_in1k; from V1: bcosify_tv_in1k)."""
    return _create("bcos_resnet50_bcosified", "resnet50", pretrained, recipe="bcosify",
                   pretrained_filter_fn=bcosified_filter_fn, **kwargs)
