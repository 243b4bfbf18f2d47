"""Reading user images for the explorer: any file a user may drop, an RGB PIL image out or a clear error.

Handled: grayscale, palette, 16-bit and float images, RGBA (composited on white, as the
page shows it), CMYK JPEGs, EXIF orientation (the image is turned the way it is shown),
animated images (first frame), and very large images (decoded reduced, then shrunk).
Refused with a message: files that are not images, images under MIN_SIDE pixels, and
images over MAX_PIXELS pixels.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIDE = 8                 # smaller images carry too little to explain
MAX_PIXELS = 120_000_000     # decoded size cap (10,000 x 10,000 fits); above this we refuse
WORKING_SIDE = 2048          # large images are shrunk to this long side before the model's transform


class ImageInputError(ValueError):
    """An uploaded file the explorer cannot use; the message is shown to the user."""


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageInputError(f"no file at {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
            img.size  # noqa: B018  (header parsed)
    except Image.DecompressionBombError as e:
        raise ImageInputError(f"image too large: {e}; expected at most {MAX_PIXELS / 1e6:.0f} MP") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        kind = _describe(path)
        raise ImageInputError(f"expected an image file (PNG, JPEG, GIF, WebP, BMP, TIFF); "
                              f"got {kind} that cannot be read as an image ({type(e).__name__})") from None
    return img


def _describe(path: Path) -> str:
    size = path.stat().st_size
    return f"'{path.name}' ({size} bytes)" if size else f"an empty file '{path.name}'"


def _check_size(img: Image.Image) -> None:
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise ImageInputError(f"image too small: {w}x{h} pixels; expected at least {MIN_SIDE}x{MIN_SIDE}")
    if w * h > MAX_PIXELS:
        raise ImageInputError(f"image too large: {w}x{h} pixels ({w * h / 1e6:.0f} MP); "
                              f"expected at most {MAX_PIXELS / 1e6:.0f} MP")


def _to_rgb(img: Image.Image) -> Image.Image:
    """RGB by the image's own meaning: transparency over white, high bit depths rescaled."""
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        img = Image.fromarray(a.astype(np.uint8), "L")
    if img.mode == "P" or img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    return img.convert("RGB")


def load_image(path: str | Path, working_side: int = WORKING_SIDE) -> Image.Image:
    """An RGB image, upright, first frame, long side at most `working_side`; ImageInputError otherwise."""
    img = _open(Path(path))
    _check_size(img)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.seek(0)  # animated GIF/WebP/APNG: the first frame
            if img.format == "JPEG":
                img.draft("RGB", (working_side, working_side))  # decode at a reduced scale: cheap for huge JPEGs
            img.load()
            img = ImageOps.exif_transpose(img)  # the orientation the photo is shown in
            if img.mode == "P":
                img = img.convert("RGBA")  # palette colours and transparency, before any resampling
            img = _to_rgb(_shrink(img, working_side))
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"expected a complete image file; '{Path(path).name}' is damaged or "
                              f"truncated ({type(e).__name__}: {e})") from None
    return _shrink(img, working_side)


def _shrink(img: Image.Image, side: int) -> Image.Image:
    """Long side at most `side`, in the image's own mode where Pillow can resample it (cheap for huge images)."""
    if max(img.size) > side and img.mode in ("1", "L", "LA", "RGB", "RGBA", "CMYK", "I", "F"):
        img.thumbnail((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return img
