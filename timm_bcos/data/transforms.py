"""Image transforms for training and evaluation: timm's for a model's data config, the CIFAR recipe
(pad, random crop, flip) on uint8 tensors, and timm's eval resize + centre crop to plain [0, 1] RGB."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class PadCropFlip:
    """The CIFAR training transform (zero-pad, random crop, horizontal flip, to [0, 1], normalise)
    on uint8 tensors, cheaper than the PIL pipeline (it matters on a 2-core machine)."""

    def __init__(self, size, pad: int = 4, hflip: float = 0.5, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)):
        self.size = tuple(size)
        self.pad = pad
        self.hflip = hflip
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, img) -> torch.Tensor:
        x = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True)).permute(2, 0, 1)
        x = torch.nn.functional.pad(x, (self.pad,) * 4)
        h, w = self.size
        top = int(torch.randint(0, x.shape[1] - h + 1, (1,)))
        left = int(torch.randint(0, x.shape[2] - w + 1, (1,)))
        x = x[:, top:top + h, left:left + w]
        if float(torch.rand(())) < self.hflip:
            x = x.flip(-1)
        return (x.float() / 255.0 - self.mean) / self.std


def build_transform(model, *, is_training: bool, crop: str = "rrc", pad: int = 4, img_size: int | None = None,
                    **timm_kwargs) -> Callable:
    """timm's transform for `model`'s pretrained cfg (at `img_size` if given); `crop="pad"` is the
    CIFAR recipe (pad, random crop, flip)."""
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({"img_size": img_size} if img_size else {}, model=model)
    if is_training and crop == "pad":
        return PadCropFlip(cfg["input_size"][-2:], pad, hflip=timm_kwargs.get("hflip", 0.5),
                           mean=cfg["mean"], std=cfg["std"])
    if crop not in ("rrc", "pad"):
        raise ValueError(f"crop must be 'rrc' (timm's random resized crop) or 'pad' (CIFAR), got {crop!r}")
    kwargs = {k: v for k, v in timm_kwargs.items() if v is not None}
    return create_transform(**cfg, is_training=is_training, **kwargs)


def eval_transform(input_size=(3, 32, 32), crop_pct: float = 1.0, interpolation: str = "bilinear") -> Callable:
    """timm's eval resize + centre crop to plain [0, 1] RGB tensors (no mean/std)."""
    from timm.data import create_transform

    return create_transform(input_size=tuple(input_size), crop_pct=crop_pct, interpolation=interpolation,
                            mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_training=False)
