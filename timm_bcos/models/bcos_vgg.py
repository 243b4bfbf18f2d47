"""B-cos VGG-11: v2 with uncentered batch norm ("bnu") and the paper's v1 (MaxOut 2, no norms)."""
import timm
from timm.models import generate_default_cfgs, register_model
from timm.models.vgg import VGG

from ..convert import HeadSpec, register_family
from ._builder import bcos_cfg, build_bcos, model_cfgs

register_family(VGG, head=HeadSpec(classifier="head.fc", pool="head.global_pool", before=("pre_logits",)))


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, first_conv="features.0", classifier="head.fc", min_input_size=(3, 32, 32), **kwargs)


default_cfgs = generate_default_cfgs(model_cfgs([
    "bcos_vgg11_bnu",
    "bcos_vgg11_v1",
], _cfg))


def _vgg_with_padded_head(name: str):
    """timm's VGG with the B-cos v2 head: its 7x7 conv is padded (3) and keeps the 7x7 map,
    the classifier then runs on every position before global pooling."""
    def make(**kwargs):
        model = timm.create_model(name, pretrained=False, **kwargs)
        model.pre_logits.fc1.padding = (3, 3)
        # timm upsamples maps smaller than 7x7 before fc1; with padding the reference does not
        model.pre_logits.input_kernel_size = 1
        return model
    return make


def _create(variant: str, conventional: str, pretrained: bool, recipe: str, **kwargs):
    # like timm's VGG: stride-1 features too, so six feature levels
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3, 4, 5))
    return build_bcos(variant, pretrained, conventional=_vgg_with_padded_head(conventional), recipe=recipe,
                      feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs)


@register_model
def bcos_vgg11_bnu(pretrained=False, **kwargs):
    """B-cos v2 VGG-11 with uncentered batch norm; its 7x7/1x1 conv MLP and classifier run before pooling."""
    return _create("bcos_vgg11_bnu", "vgg11_bn", pretrained, "v2", **kwargs)


@register_model
def bcos_vgg11_v1(pretrained=False, **kwargs):
    """The paper's B-cos VGG-11 (Tab. 2): MaxOut 2, no norms, activations or max pooling."""
    return _create("bcos_vgg11_v1", "vgg11", pretrained, "v1", **kwargs)
