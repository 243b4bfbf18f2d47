"""The paper's B-cos Inception-v3 (Tab. 2): timm's Inception-v3 with MaxOut 2, no norms,
activations or max pooling (the reduction blocks' pooling branches average instead)."""
from timm.models import generate_default_cfgs, register_model

from ._builder import bcos_cfg, build_bcos


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
