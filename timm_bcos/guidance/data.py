"""Annotated images for guidance: a mask (or boxes) per image, cropped and flipped with it.

The mask goes through the image's own transform with the image's per-sample seed, so it
sees the same random crop and flip (geometry only: colour augmentation is refused, it
would repaint the mask). Only a seeded `fraction` of the images counts as annotated, and an
image whose annotated region is empty after the crop (cropped away, or an empty mask) counts
as not annotated: an empty region is no target, it would push all evidence out.
"""
from __future__ import annotations

import numpy as np
import torch

from ..data.datasets import ImageClassificationDataset, collate_skipping, decode_image
from .masks import decode_mask


def boxes_to_mask(boxes, height: int, width: int, dilation: int = 0) -> np.ndarray:
    """uint8 [H, W] mask, 1 inside any box [x0, y0, x1, y1] (pixels, x1/y1 exclusive), each
    grown by `dilation` pixels on every side and clipped to the image."""
    mask = np.zeros((height, width), dtype=np.uint8)
    for box in boxes or []:
        if len(box) != 4:
            raise ValueError(f"a box is [x0, y0, x1, y1] in pixels, got {box!r}")
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        x0, y0 = max(x0 - dilation, 0), max(y0 - dilation, 0)
        x1, y1 = min(x1 + dilation, width), min(y1 + dilation, height)
        mask[y0:y1, x0:x1] = 1
    return mask


def is_annotated(index: int, fraction: float, seed: int) -> bool:
    """Whether sample `index` keeps its annotation: a fixed draw per (seed, index), so the same
    images are annotated in every epoch, process and resumed run."""
    if fraction >= 1:
        return True
    g = torch.Generator().manual_seed(seed * 7_919 + index)
    return float(torch.rand((), generator=g)) < fraction


class AnnotatedImageDataset(ImageClassificationDataset):
    """(image, label, mask [H, W] float, annotated bool) samples; None where undecodable."""

    def __init__(self, hf_dataset, info, transform, *, mask_column: str | None = None,
                 boxes_column: str | None = None, fraction: float = 1.0, dilation: int = 0,
                 mask_threshold: float = 0.5, seed: int = 0) -> None:
        super().__init__(hf_dataset, info, transform, seed=seed)
        if (mask_column is None) == (boxes_column is None):
            raise ValueError("give exactly one of mask_column (an image column) or boxes_column")
        for column in (mask_column, boxes_column):
            if column is not None and column not in hf_dataset.column_names:
                raise ValueError(f"no column {column!r} in the data set; it has {hf_dataset.column_names}")
        self.mask_column, self.boxes_column = mask_column, boxes_column
        self.fraction, self.dilation, self.mask_threshold = fraction, dilation, mask_threshold

    def __getitems__(self, indices: list[int]) -> list:
        indices = [int(i) for i in indices]
        rows = self.data[indices]
        notes = rows[self.mask_column or self.boxes_column]
        return [self._annotated_sample(i, img, label, note) for i, img, label, note in
                zip(indices, rows[self.info.image_column], rows[self.info.label_column], notes)]

    def _annotated_sample(self, index: int, value, label, note):
        try:
            img = decode_image(value)
        except Exception:  # counted by the collate step, as in ImageClassificationDataset
            return None
        x, label = self.seeded_transform(index, img), int(label)
        no_annotation = x, label, torch.zeros(x.shape[-2:]), False
        if note is None or not is_annotated(index, self.fraction, self.seed):
            return no_annotation
        mask = self._transform_mask(index, self._raw_mask(index, note, img.size))
        # an empty region (no box, an empty mask, or cropped away) would push all evidence out
        return (x, label, mask, True) if bool(mask.any()) else no_annotation

    def _raw_mask(self, index: int, note, size: tuple[int, int]) -> np.ndarray:
        """uint8 [H, W] 0/1 annotation of sample `index` at its image's `size` (width, height)."""
        if self.boxes_column is not None:
            return boxes_to_mask(note, size[1], size[0], self.dilation)
        try:
            raw = decode_mask(note)
        except ValueError as e:
            raise ValueError(f"mask of sample {index}: {e}") from None
        if raw.shape != (size[1], size[0]):
            raise ValueError(f"mask of sample {index} is {raw.shape[::-1]} pixels, its image {size}")
        return raw.astype(np.uint8)

    def _transform_mask(self, index: int, raw: np.ndarray) -> torch.Tensor:
        """The mask through the image's transform, replaying the image's random draws."""
        from PIL import Image

        m = self.seeded_transform(index, Image.fromarray(np.repeat(raw[..., None] * 255, 3, axis=2)))
        return (m[0] > self.mask_threshold).float()


def collate_annotated(samples) -> dict[str, torch.Tensor]:
    """collate_skipping plus `masks` [N, H, W] and `annotated` [N] of the kept samples."""
    batch = collate_skipping([None if s is None else s[:2] for s in samples])
    kept = [s for s in samples if s is not None]
    batch["masks"] = torch.stack([s[2] for s in kept]) if kept else torch.empty(0)
    batch["annotated"] = torch.tensor([s[3] for s in kept], dtype=torch.bool)
    return batch


__all__ = ["AnnotatedImageDataset", "boxes_to_mask", "collate_annotated", "is_annotated"]
