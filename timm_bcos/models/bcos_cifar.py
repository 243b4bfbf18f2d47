"""The paper's CIFAR-10 network (Sec. 4) and its conventional counterpart.

Nine convolutions, kernel 3 (the last 1x1), strides 1,1,2,1,1,2,1,1,1,
channels 64,64,128,128,128,256,256,256,10 (times `width` except the classes),
then global average pooling. The conventional network (`cifar_convnet`, with
`norm=True` for BN + ReLU) follows timm's model contract; `bcos_cifar10`
is that network converted: B-cos layers with two MaxOut units, no norms and
no activations (the paper's plain "MaxOut B-cos network").
"""
from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn
from timm.layers import SelectAdaptivePool2d
from timm.models import generate_default_cfgs, register_model

from ..convert import HeadSpec, register_family
from ._builder import bcos_cfg, build_bcos

CHANNELS = (64, 64, 128, 128, 128, 256, 256, 256)
STRIDES = (1, 1, 2, 1, 1, 2, 1, 1)


class CifarConvNet(nn.Module):
    """Plain CIFAR CNN: 8 conv blocks, then a 1x1 classifier (`fc`) and global pooling."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, width: float = 1.0, norm: bool = False,
                 drop_rate: float = 0.0, global_pool: str = "avg", device=None, dtype=None) -> None:
        super().__init__()
        dd = dict(device=device, dtype=dtype)  # timm's factory kwargs: create the weights where asked
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        blocks: list[nn.Module] = []
        cin = in_chans
        self.feature_info = []
        for i, (c, s) in enumerate(zip(CHANNELS, STRIDES)):
            cout = max(1, int(round(c * width)))
            block = nn.Sequential(
                nn.Conv2d(cin, cout, 3, s, 1, bias=not norm, **dd),
                nn.BatchNorm2d(cout, **dd) if norm else nn.Identity(),
                nn.ReLU(),
            )
            blocks.append(block)
            cin = cout
            reduction = 1
            for st in STRIDES[: i + 1]:
                reduction *= st
            self.feature_info.append(dict(num_chs=cout, reduction=reduction, module=f"features.{i}"))
        self.features = nn.Sequential(*blocks)
        self.num_features = self.head_hidden_size = cin
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        self.fc = nn.Linear(cin, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=bool(global_pool))
        ref = next(self.parameters())
        self.fc = (nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
                   if num_classes > 0 else nn.Identity())

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward_features(self, x: Tensor) -> Tensor:
        if self.grad_checkpointing:
            from timm.models import checkpoint_seq

            return checkpoint_seq(self.features, x)
        return self.features(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


register_family(CifarConvNet, head=HeadSpec(classifier="fc", pool="global_pool"))


def _cfg(url: str = "", **kwargs):
    return bcos_cfg(url, num_classes=10, input_size=(3, 32, 32), pool_size=(8, 8), crop_pct=1.0,
                    first_conv="features.0.0", classifier="fc", **kwargs)


# Weights trained in this repository and shipped inside the package (a few MB), so that
# pretrained=True works offline. How they were made: reports/cifar10.md.
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # what cifar_convnet is trained on
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

default_cfgs = generate_default_cfgs({
    "bcos_cifar10.untrained": _cfg(),
    "bcos_cifar10_w050_bnu.cpu30e_cifar10": _cfg(  # tag: recipe (30 epochs on CPU) + data set, as timm names tags
        file=str(SHIPPED_WEIGHTS / "bcos_cifar10_w050_bnu.cpu30e.safetensors"), label_names=CIFAR10_LABELS,
        origin_url="train_scripts/configs/cifar10_bcos_cpu.yaml",
    ),
    "bcos_cifar10_w050_bnu.untrained": _cfg(),
    "bcos_cifar10_w050_bcosified.bcosify_cpu10e_cifar10": _cfg(  # B-cosified, then fine-tuned 10 epochs on CPU
        file=str(SHIPPED_WEIGHTS / "bcos_cifar10_w050_bcosified.bcosify_cpu10e.safetensors"),
        label_names=CIFAR10_LABELS, origin_url="train_scripts/bcosify_cifar10.sh",
        notes=("reports/bcosification.md: cifar_convnet (width 0.5) trained 20 epochs (SGD), B-cosified with "
               "recipe 'bcosify' and fine-tuned 10 epochs (Adam 1e-3, BCE)",),
    ),
    "bcos_cifar10_w050_bcosified.aloe_cpu6e_cifar10": _cfg(  # B-cosified, aligned 6 epochs without labels
        file=str(SHIPPED_WEIGHTS / "bcos_cifar10_w050_bcosified.aloe_cpu6e.safetensors"),
        label_names=CIFAR10_LABELS, origin_url="train_scripts/align_cifar10.sh",
        notes=("reports/alignment.md: cifar_convnet (width 0.5, 30 epochs, 85.94%) B-cosified with recipe "
               "'bcosify' and aligned to it for 6 epochs without labels (train.py --align-to, Adam 1e-3)",),
    ),
    "bcos_cifar10_w050_bcosified.aloe_sgd10e_cifar10": _cfg(  # aligned 10 epochs without labels to an SGD teacher
        file=str(SHIPPED_WEIGHTS / "bcos_cifar10_w050_bcosified.aloe_sgd10e.safetensors"),
        label_names=CIFAR10_LABELS, origin_url="train_scripts/align_cifar10.sh",
        notes=("reports/alignment.md: cifar_convnet (width 0.5, 20 epochs SGD with weight decay, 86.24%) B-cosified "
               "with recipe 'bcosify' and aligned to it for 10 epochs without labels (train.py --align-to, Adam 1e-3)",),
    ),
    "bcos_cifar10_w050_bcosified.untrained": _cfg(),
    "cifar_convnet.untrained": _cfg(mean=CIFAR10_MEAN, std=CIFAR10_STD),
})


@register_model
def bcos_cifar10(pretrained=False, width: float = 1.0, norm: bool = False, **kwargs):
    """The paper's MaxOut B-cos CIFAR-10 network (B=2 by default; `b`, `max_out`, `width` adjustable).

    `norm=True` keeps a batch norm after every convolution as an uncentered batch norm
    without bias (the B-cos v2 way to keep a deep stack's signal) instead of relying on
    the v1 output scale alone.
    """
    kwargs.setdefault("num_classes", 10)
    if norm:
        kwargs.setdefault("norms", {"batch": "bn_uncentered"})
    arch = dict(width=width, norm=norm)
    return build_bcos("bcos_cifar10", pretrained, conventional=CifarConvNet, recipe="v1",
                      conventional_kwargs=arch, entrypoint_args=arch,
                      feature_cfg=dict(flatten_sequential=True), **kwargs)


@register_model
def bcos_cifar10_w050_bnu(pretrained=False, **kwargs):
    """timm_bcos's own CIFAR-10 model: the paper's network at half width, B=2, no MaxOut,
    uncentered batch norm without bias. `pretrained=True` loads the weights trained on
    2 CPU cores with train_scripts/configs/cifar10_bcos_cpu.yaml (accuracy: reports/cifar10.md)."""
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("norms", {"batch": "bn_uncentered"})
    kwargs.setdefault("max_out", 1)
    kwargs.setdefault("b", 2.0)
    arch = dict(width=0.5, norm=True)
    return build_bcos("bcos_cifar10_w050_bnu", pretrained, conventional=CifarConvNet, recipe="v1",
                      conventional_kwargs=arch, entrypoint_args={}, feature_cfg=dict(flatten_sequential=True),
                      **kwargs)


@register_model
def bcos_cifar10_w050_bcosified(pretrained=False, **kwargs):
    """`cifar_convnet` at half width B-cosified (recipe "bcosify": ReLU kept, the normalised
    [x, 1-x] input with the first conv at [W, -W]/2, uncentered BN, B=2): the architecture that
    `train.py --bcosify-from` makes of that network, as a named model (reports/bcosification.md)."""
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("input_mean", CIFAR10_MEAN)
    kwargs.setdefault("input_std", CIFAR10_STD)
    arch = dict(width=0.5, norm=True)
    return build_bcos("bcos_cifar10_w050_bcosified", pretrained, conventional=CifarConvNet, recipe="bcosify",
                      conventional_kwargs=arch, entrypoint_args={}, feature_cfg=dict(flatten_sequential=True),
                      **kwargs)


@register_model
def cifar_convnet(pretrained=False, width: float = 1.0, norm: bool = True, **kwargs):
    """The conventional counterpart of `bcos_cifar10` (conv + BN + ReLU), the baseline for comparisons."""
    from timm.models import build_model_with_cfg

    kwargs.setdefault("num_classes", 10)
    return build_model_with_cfg(CifarConvNet, "cifar_convnet", pretrained, width=width, norm=norm,
                                feature_cfg=dict(flatten_sequential=True), **kwargs)
