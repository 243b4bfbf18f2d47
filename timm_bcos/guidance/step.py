"""The guidance term of one training step."""
from __future__ import annotations

from torch import Tensor, nn

from .contributions import contribution_maps
from .losses import guidance_loss


def guided_loss(model: nn.Module, images: Tensor, labels: Tensor, masks: Tensor, annotated: Tensor, *,
                loss: str = "energy", layer: str | None = None) -> Tensor | None:
    """The guidance loss of the annotated images' label logits (None when no image of the batch
    is annotated). `model` is the plain module (not a DDP wrapper: this second forward must
    not count as DDP's forward; the gradients still reach DDP's hooks in the one backward).
    Labels must be class indices (with mixup, pass the dominant class)."""
    if not bool(annotated.any()):
        return None
    keep = annotated.nonzero().squeeze(1)
    maps = contribution_maps(model, images[keep], labels[keep], layer=layer, size=tuple(masks.shape[-2:]))
    return guidance_loss(loss, maps, masks[keep].to(maps.device))
