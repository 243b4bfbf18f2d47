"""Losses a run adds to its classification loss, each computed on the plain model (not the DDP
wrapper) and its micro-batch: guidance on the model's own explanations today, alignment to a teacher
later. `train` asks `loss_hooks` for the run's hooks; a hook returns None for a batch it has nothing
to say about, and its mean value is logged as train/<name>."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .config import TrainConfig
from .errors import fail


class LossHook(Protocol):
    name: str
    weight: float

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor | None: ...


@dataclass
class GuidanceHook:
    """--guidance: a loss on the label's contribution map where the batch's masks say the evidence is."""

    loss: str
    layer: str | None
    weight: float = 1.0
    name: str = "guidance"

    def __call__(self, model: torch.nn.Module, images: torch.Tensor, batch: dict) -> torch.Tensor | None:
        from ..guidance import guided_loss

        return guided_loss(model, images, batch["labels"].to(images.device), batch["masks"], batch["annotated"],
                           loss=self.loss, layer=self.layer)


def loss_hooks(config: TrainConfig, model: torch.nn.Module) -> list[LossHook]:
    """The hooks `config` asks for, checked against the model."""
    hooks: list[LossHook] = []
    if config.guidance:
        from ..guidance import guidance_layer

        try:
            layer = guidance_layer(model, config.guidance_layer)
        except (ValueError, AttributeError) as e:
            fail(f"--guidance-layer {config.guidance_layer}: {e}")
        hooks.append(GuidanceHook(config.guidance, layer, config.guidance_weight))
    return hooks
