"""The k most strongly activating images of every channel of a layer, kept while streaming a data set.

Memory is bounded by channels x (k + batch): each batch is merged into the running top-k and dropped,
so a pass over ImageNet keeps no more than a pass over ten images. (A tensor merge rather than one
Python heap per channel: the same bound, one `topk` call per batch for all channels at once.)
"""
from __future__ import annotations

import torch
from torch import Tensor


class ChannelTopK:
    """Running top-k per channel of per-image scores [N, C], with the image's data-set index, the
    position of its maximum [N, C, 2] and any per-image columns ([N] tensors: label, prediction, ...)."""

    def __init__(self, channels: int, k: int, columns: tuple[str, ...] = ()) -> None:
        if channels < 1 or k < 1:
            raise ValueError(f"need at least one channel and k >= 1, got channels={channels}, k={k}")
        self.k = k
        self.values = torch.full((channels, 0), float("-inf"))
        self.index = torch.zeros((channels, 0), dtype=torch.long)
        self.positions = torch.zeros((channels, 0, 2), dtype=torch.long)
        self.columns = {name: torch.zeros((channels, 0), dtype=torch.long) for name in columns}
        self.seen = 0

    @property
    def channels(self) -> int:
        return self.values.shape[0]

    def update(self, scores: Tensor, index: Tensor, positions: Tensor | None = None, **columns: Tensor) -> None:
        """Merge a batch: scores [N, C], index [N] (data-set indices), positions [N, C, 2] or None,
        columns: one [N] tensor per name given at construction."""
        n, c = scores.shape
        if c != self.channels:
            raise ValueError(f"the layer gave {c} channels, the running top-k has {self.channels}")
        if set(columns) != set(self.columns):
            raise ValueError(f"expected the columns {sorted(self.columns)}, got {sorted(columns)}")
        if positions is None:
            positions = torch.zeros((n, c, 2), dtype=torch.long)
        values = torch.cat([self.values, scores.detach().float().cpu().T], 1)  # [C, kept + N]
        top = values.topk(min(self.k, values.shape[1]), dim=1)
        keep = top.indices
        self.values = top.values
        self.index = torch.cat([self.index, index.cpu().expand(c, n)], 1).gather(1, keep)
        merged = torch.cat([self.positions, positions.cpu().transpose(0, 1)], 1)
        self.positions = merged.gather(1, keep[..., None].expand(-1, -1, 2))
        for name, col in columns.items():
            self.columns[name] = torch.cat([self.columns[name], col.cpu().long().expand(c, n)], 1).gather(1, keep)
        self.seen += n
