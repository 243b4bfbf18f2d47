"""The paper's B-cos Inception-v3 (Tab. 2): timm's Inception-v3 with MaxOut 2, no norms,
activations or max pooling (the reduction blocks' pooling branches average instead)."""
import torch.nn.functional as F
from timm.models import generate_default_cfgs, register_model
from timm.models.inception_v3 import InceptionB, InceptionD, InceptionV3
from torch import nn

from ..convert import RECURSE, Context, HeadSpec, register_family
from ._builder import bcos_cfg, build_bcos

_AVG_POOL_BRANCH_CLASSES: dict[type, type] = {}


def _avg_pool_branch_class(cls: type) -> type:
    """`cls` with its pooling branch a 3x3/2 average pool (timm's F.max_pool2d in `_forward`; same shape)."""
    if cls not in _AVG_POOL_BRANCH_CLASSES:
        def _forward(self, x):
            outputs = cls._forward(self, x)
            outputs[-1] = F.avg_pool2d(x, kernel_size=3, stride=2)
            return outputs
        _AVG_POOL_BRANCH_CLASSES[cls] = type(f"AvgPool{cls.__name__}", (cls,), {"_forward": _forward})
    return _AVG_POOL_BRANCH_CLASSES[cls]


def pool_branch_to_avg_rule(m: nn.Module, path: str, ctx: Context):
    """Inception's reduction blocks call F.max_pool2d in their forward: where the recipe turns
    max pooling into average pooling, swap in the subclass that averages; then convert the convs."""
    if ctx.recipe.max_pool_to_avg:
        m.__class__ = _avg_pool_branch_class(type(m))
    return RECURSE


register_family(InceptionV3, head=HeadSpec(classifier="fc", pool="global_pool"),
                rules={InceptionB: pool_branch_to_avg_rule, InceptionD: pool_branch_to_avg_rule})


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, first_conv="Conv2d_1a_3x3.conv", classifier="fc",
                    input_size=(3, 299, 299), pool_size=(8, 8), min_input_size=(3, 75, 75), **kwargs)


default_cfgs = generate_default_cfgs({
    "bcos_inception_v3_v1.untrained": _cfg(),
})


@register_model
def bcos_inception_v3_v1(pretrained=False, **kwargs):
    """The paper's B-cos Inception-v3."""
    return build_bcos("bcos_inception_v3_v1", pretrained, conventional="inception_v3", recipe="v1",
                      **kwargs)
