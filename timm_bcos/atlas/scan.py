"""Pass 1 of an atlas: stream a data set through the model once and keep, for every channel of one
layer, the images that activate it most (where: the position of the maximum) and the model's
prediction on them."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from ..explain.explain import channel_maxima, named_layer
from .topk import ChannelTopK


class AtlasError(ValueError):
    """An atlas that cannot be built as asked: unknown layer, channel out of range, no images."""


def progress(iterable, total: int | None, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, total=total, desc=desc, unit="batch", mininterval=2.0)


@torch.no_grad()
def scan_layer(model: nn.Module, layer: str, batches: Iterable[dict], k: int, *, mean: torch.Tensor,
               std: torch.Tensor, total: int | None = None,
               check_channels: Callable[[int], object] | None = None) -> ChannelTopK:
    """The top-k images of every channel of `layer` over `batches` ({"images": [0, 1] RGB [N, 3, H, W],
    "labels": [N], "indices": [N]}, as `open_split`'s loader gives), each image normalised by mean/std.
    Kept per image: label (-1 when unlabeled) and the model's top class (-1 for a model without head).
    `check_channels(C)` runs on the first batch: a request the layer cannot meet fails before the pass."""
    try:
        module = named_layer(model, layer)
    except ValueError as e:
        raise AtlasError(str(e)) from None
    device = mean.device
    read: dict[str, torch.Tensor] = {}
    hook = module.register_forward_hook(lambda m, i, o: read.__setitem__("out", o))
    has_head = bool(getattr(model, "num_classes", 0))
    tracker = None
    try:
        for batch in progress(batches, total, f"scanning {layer}"):
            if batch["images"].numel() == 0:  # every image of the batch was undecodable
                continue
            x = (batch["images"].to(device) - mean) / std
            logits = model(x)
            if "out" not in read:
                raise AtlasError(f"layer {layer!r} was not called during the forward pass; name a module the model runs")
            try:
                scores, positions = channel_maxima(read.pop("out"))
            except ValueError as e:
                raise AtlasError(f"layer {layer!r}: {e}") from None
            if tracker is None:
                if check_channels is not None:
                    check_channels(scores.shape[1])
                tracker = ChannelTopK(scores.shape[1], k, ("label", "prediction"))
            prediction = logits.argmax(1) if has_head else torch.full_like(batch["labels"], -1)
            tracker.update(scores, batch["indices"], positions, label=batch["labels"], prediction=prediction)
    finally:
        hook.remove()
    if tracker is None:
        raise AtlasError("the data set gave no decodable image (it is empty, or every image failed to decode)")
    return tracker
