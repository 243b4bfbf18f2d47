"""B-cos DenseNets: timm's DenseNet, converted (v2 zoo and the paper's v1 DenseNet-121)."""
from timm.models import generate_default_cfgs, register_model
from timm.models.densenet import DenseNet

from ..convert import HeadSpec, register_family
from ..weights.bcosification import bcosified_cfgs, bcosified_filter_fn
from ._builder import bcos_cfg, build_bcos, model_cfgs

register_family(DenseNet, head=HeadSpec(classifier="classifier", pool="global_pool"))


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, first_conv="features.conv0", classifier="classifier", min_input_size=(3, 32, 32), **kwargs)


default_cfgs = generate_default_cfgs(model_cfgs([
    "bcos_densenet121",
    "bcos_densenet161",
    "bcos_densenet169",
    "bcos_densenet201",
    "bcos_densenet121_v1",
], _cfg) | model_cfgs(["bcos_densenet121_bcosified"], _cfg, bcosified_cfgs))


def _create(variant: str, conventional: str, pretrained: bool, recipe: str = "v2", **kwargs):
    return build_bcos(variant, pretrained, conventional=conventional, recipe=recipe,
                      feature_cfg=dict(flatten_sequential=True), **kwargs)


@register_model
def bcos_densenet121(pretrained=False, **kwargs):
    """B-cos v2 DenseNet-121."""
    return _create("bcos_densenet121", "densenet121", pretrained, **kwargs)


@register_model
def bcos_densenet161(pretrained=False, **kwargs):
    """B-cos v2 DenseNet-161."""
    return _create("bcos_densenet161", "densenet161", pretrained, **kwargs)


@register_model
def bcos_densenet169(pretrained=False, **kwargs):
    """B-cos v2 DenseNet-169."""
    return _create("bcos_densenet169", "densenet169", pretrained, **kwargs)


@register_model
def bcos_densenet201(pretrained=False, **kwargs):
    """B-cos v2 DenseNet-201."""
    return _create("bcos_densenet201", "densenet201", pretrained, **kwargs)


@register_model
def bcos_densenet121_v1(pretrained=False, **kwargs):
    """The paper's B-cos DenseNet-121 (Tab. 2): MaxOut 2, no norms, activations or max pooling."""
    return _create("bcos_densenet121_v1", "densenet121", pretrained, recipe="v1", **kwargs)


@register_model
def bcos_densenet121_bcosified(pretrained=False, **kwargs):
    """DenseNet-121 B-cosified as Arya et al. (2024) release it: recipe "bcosify" (ReLU kept,
    normalised [x, 1-x] input, no weight norm); tag bcosify_in1k takes the release checkpoint (file=...)."""
    return _create("bcos_densenet121_bcosified", "densenet121", pretrained, recipe="bcosify",
                   pretrained_filter_fn=bcosified_filter_fn, **kwargs)
