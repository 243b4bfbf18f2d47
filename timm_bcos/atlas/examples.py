"""Pass 2 of an atlas: explain each kept (image, neuron, position) as the paper's Figs. 8 and 10 do, the
contribution map W_{1->l}(x) of that neuron at that position, cropped to its receptive field."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ..explain.render import weights_to_rgba


@dataclass
class Example:
    """One explained neuron on one image: the image and explanation cropped to the receptive field."""

    image: np.ndarray        # [h, w, 3] uint8, the crop of the model's input
    explanation: np.ndarray  # [h, w, 4] uint8 RGBA, the same crop of the explanation
    box: tuple[int, int, int, int]  # (top, left, bottom, right) of the crop in the input, bottom/right exclusive
    explained: float         # the neuron's value that the explanation decomposes


def receptive_boxes(weights: Tensor) -> list[tuple[int, int, int, int]]:
    """The box around the pixels with a non-zero weight, per image ([B, 6, H, W] -> B boxes).

    A neuron's dynamic weights are exactly zero outside the pixels it depends on, so this is its
    receptive field as the input meets it (clipped by the image border)."""
    support = weights.detach().abs().sum(1) > 0  # [B, H, W]
    boxes = []
    for s in support:
        rows, cols = s.any(1).nonzero().flatten(), s.any(0).nonzero().flatten()
        if len(rows) == 0:  # a neuron that is zero on this image: nothing to crop to
            boxes.append((0, 0, s.shape[0], s.shape[1]))
        else:
            boxes.append((int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1))
    return boxes


def _to_uint8(a: np.ndarray) -> np.ndarray:
    return (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def explain_examples(model: nn.Module, layer: str, images: Tensor, channels: Tensor, positions: Tensor | None, *,
                     mean: Tensor, std: Tensor, smooth: int = 0) -> list[Example]:
    """Explain channel `channels[i]` of `layer` at `positions[i]` (row, col) on `images[i]` ([0, 1] RGB), as
    one batch (the caller cuts the batches); one Example per image, cropped to the neuron's receptive field."""
    x = images.to(mean.device)
    target = channels[:, None].to(mean.device)
    pos = None if positions is None else positions[:, None].to(mean.device)
    expl = model.explain((x - mean) / std, target=target, layer=layer, position=pos).to("cpu")
    rgba = weights_to_rgba(expl.weights[:, 0], expl.encoded_input, smooth=smooth)
    out = []
    for i, (t, l, b, r) in enumerate(receptive_boxes(expl.weights[:, 0])):
        seen = x[i].detach().cpu().permute(1, 2, 0).numpy()
        out.append(Example(image=_to_uint8(seen[t:b, l:r]), explanation=_to_uint8(rgba[i, t:b, l:r]),
                           box=(t, l, b, r), explained=float(expl.explained[i, 0])))
    return out
