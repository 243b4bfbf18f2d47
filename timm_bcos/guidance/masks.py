"""Annotation masks as data sets store them, decoded to a boolean foreground.

Reading every mask as "grey > 127" silently empties 0/1 masks (numpy-saved PNGs) and palette
masks (VOC): each encoding gets its own rule here, and anything else is refused with what was
expected, never read as an empty mask.
"""
from __future__ import annotations

import numpy as np

from ..data.datasets import open_image

# grey stored as colour: channels this close count as equal (JPEG's chroma rounding)
_GREY_TOLERANCE = 8
# an 8-bit mask with this share of its in-between values in flat patches is an index mask
# (see `decode_mask`)
_MAX_FLAT_SHARE = 0.5
_SINGLE_CHANNEL_MODES = ("L", "I", "I;16", "I;16B", "I;16L", "F")
_EXPECTED = ("expected a single-channel mask with two values (0/1 or 0/255; the non-zero one is the "
             "foreground), a bilevel ('1') image or a palette ('P') index mask")


def decode_mask(value) -> np.ndarray:
    """bool [H, W] foreground of an annotation mask, from what `datasets` stores (an image as a
    bytes/path dict, path or PIL image; or a 2-D array).

    - bilevel ('1') images and boolean arrays: as stored.
    - palette ('P') images are index masks: foreground = index != 0 (index 0 must be black, the
      background). VOC's 255 "void" (object outlines, difficult objects) counts as foreground:
      it lies on or around objects.
    - single-channel images (L, I;16, I, F) and numeric arrays with two values {0, v} (0/1,
      0/255, a one-class index mask): foreground = v.
    - 8-bit masks with more values, a maximum of at least 128 and their in-between values
      (0 < value < maximum) on edges: foreground = value >= 128. These are 0/255 masks saved as
      JPEG or resized with anti-aliasing, whose in-between values change from pixel to pixel
      along the edges (JPEG's ringing stays within the 8x8 blocks an edge crosses). Areas of
      one in-between value are class indices instead (VOC stored as 'L': person = 15, void
      outline = 255, where ">= 128" would keep the outline only): when half of the in-between
      pixels or more lie in constant 2x2 patches the mask is refused. (JPEG at quality 30-95
      and PIL's resizes of 0/255 masks put at most a quarter of them in such patches; an index
      mask's objects, all of them.)
    - RGB, RGBA and LA images: as single-channel when the colour channels agree (grey stored as
      colour) and the alpha channel, if any, is opaque.

    Anything else (an index mask without a palette, a colour-coded mask, a mask in the alpha
    channel) raises ValueError naming what it got.
    """
    if isinstance(value, (np.ndarray, list, tuple)) and np.ndim(value) == 2:  # Array2D / Sequence columns
        values = np.asarray(value)
        return values if values.dtype == bool else _two_valued(values, f"{values.dtype} array")
    img = open_image(value)
    if img.mode == "1":
        return np.asarray(img, dtype=bool)
    if img.mode == "P":
        return _palette_foreground(img)
    if img.mode in ("RGB", "RGBA", "LA"):
        return _two_valued(_grey_of_colour(img), f"grey {img.mode}")
    if img.mode in _SINGLE_CHANNEL_MODES:
        return _two_valued(np.asarray(img), f"'{img.mode}' image")
    raise ValueError(f"a mask ('{img.mode}' image): {_EXPECTED}")


def _two_valued(values: np.ndarray, what: str) -> np.ndarray:
    """Foreground of a single-channel mask (see `decode_mask`)."""
    present = np.flatnonzero(np.bincount(values.ravel(), minlength=256)) if values.dtype == np.uint8 \
        else np.unique(values)
    nonzero = present[present != 0]
    if len(nonzero) <= 1:  # {0, v}, {v} or {0}
        return values == nonzero[0] if len(nonzero) else np.zeros(values.shape, dtype=bool)
    shown = ", ".join(str(v) for v in present[:8]) + (", ..." if len(present) > 8 else "")
    if values.dtype == np.uint8 and present.max() >= 128:
        flat = _share_in_flat_patches(values, present.max())
        if flat < _MAX_FLAT_SHARE:
            return values >= 128
        raise ValueError(f"a mask ({what}) with values {{{shown}}}, {flat:.0%} of the pixels between 0 and "
                         f"{present.max()} in areas of one value (class indices, not the blurred edges of a "
                         f"0/255 mask): {_EXPECTED}; save an index mask as a palette image, a binary one as 0/1 "
                         "or 0/255")
    raise ValueError(f"a mask ({what}) with values {{{shown}}}: {_EXPECTED}; save an index mask as a "
                     "palette image")


def _share_in_flat_patches(values: np.ndarray, top: int) -> float:
    """Share of the pixels with 0 < value < `top` that lie in a 2x2 patch of one value."""
    between = (values > 0) & (values < top)
    corner = values[:-1, :-1]
    patch = between[:-1, :-1] & (corner == values[1:, :-1]) & (corner == values[:-1, 1:]) & \
        (corner == values[1:, 1:])
    covered = np.zeros_like(between)
    for dy in (0, 1):
        for dx in (0, 1):
            covered[dy:dy + patch.shape[0], dx:dx + patch.shape[1]] |= patch
    return float(covered.sum() / max(int(between.sum()), 1))


def _palette_foreground(img) -> np.ndarray:
    palette = img.getpalette()
    if palette and tuple(palette[:3]) != (0, 0, 0):
        raise ValueError(f"a palette mask whose index 0 is the colour {tuple(palette[:3])}, not black: expected "
                         "index 0 to be the background (VOC-style index masks)")
    return np.asarray(img) != 0


def _grey_of_colour(img) -> np.ndarray:
    """uint8 [H, W] grey of a colour mask whose channels agree; ValueError otherwise."""
    values = np.asarray(img).astype(np.int16)
    if "A" in img.getbands():
        if (values[..., -1] != 255).any():
            raise ValueError(f"a mask ('{img.mode}' image) with transparent pixels: {_EXPECTED} (a mask in the alpha "
                             "channel is not read)")
        values = values[..., :-1]
    spread = int((values.max(-1) - values.min(-1)).max())
    if spread > _GREY_TOLERANCE:
        raise ValueError(f"a colour mask (its channels differ by up to {spread}): {_EXPECTED}; save a "
                         "colour-coded segmentation's class indices as a palette image")
    return np.rint(values.mean(-1)).astype(np.uint8)


__all__ = ["decode_mask"]
