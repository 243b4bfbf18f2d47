#!/usr/bin/env python
"""A shortcut benchmark from CIFAR-10 in the style of DecoyMNIST (Ross et al., IJCAI 2017).

Every training image gets a small patch in one of its four corners (a random one) whose
colour codes the image's class: a shortcut a network learns faster than the objects. The
`mask` column marks where the evidence may lie (everything but the patch), for
`train.py --guidance ... --mask-column mask`. Splits written (Hub parquet layout):

  train        patch colour = the label's colour                       (N_TRAIN images)
  test_decoy   patch colour = a random other class's colour: the shortcut lies
  test         the clean CIFAR-10 test images (no patch), mask all ones

  python train_scripts/make_decoy_cifar10.py --source ../shared/datasets/cifar10 --out runs/decoy_cifar10
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

# ten well-separated colours, one per class
PALETTE = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [255, 0, 255],
                    [0, 255, 255], [255, 128, 0], [128, 0, 255], [255, 255, 255], [0, 0, 0]], dtype=np.uint8)


def png(array: np.ndarray) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def stamp(image: np.ndarray, colour_class: int, corner: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The image with a size x size patch of the class colour in `corner` (0..3), and the
    uint8 mask that is 1 everywhere except on the patch."""
    h, w = image.shape[:2]
    top = 0 if corner in (0, 1) else h - size
    left = 0 if corner in (0, 2) else w - size
    out = image.copy()
    out[top:top + size, left:left + size] = PALETTE[colour_class]
    mask = np.full((h, w), 255, dtype=np.uint8)
    mask[top:top + size, left:left + size] = 0
    return out, mask


def build_split(rows, rng: np.random.Generator, size: int, mode: str) -> dict:
    from PIL import Image

    images, masks, labels, decoys = [], [], [], []
    for row in rows:
        img = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))
        label = int(row["label"])
        if mode == "clean":
            out, mask, decoy = img, np.full(img.shape[:2], 255, dtype=np.uint8), -1
        else:
            decoy = label if mode == "train" else int((label + rng.integers(1, 10)) % 10)
            out, mask = stamp(img, decoy, int(rng.integers(4)), size)
        images.append(png(out))
        masks.append(png(mask))
        labels.append(label)
        decoys.append(decoy)
    return {"image": images, "mask": masks, "label": labels, "decoy_class": decoys}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", default="../shared/datasets/cifar10", help="CIFAR-10 in the Hub parquet layout")
    p.add_argument("--out", required=True)
    p.add_argument("--train", type=int, default=20000, help="training images (%(default)s)")
    p.add_argument("--test", type=int, default=2000, help="test images per test split (%(default)s)")
    p.add_argument("--patch", type=int, default=4, help="patch side in pixels (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import datasets
    import pyarrow.parquet as pq

    src = Path(args.source) / "data"
    files = {s: sorted(src.glob(f"{s}-*.parquet")) for s in ("train", "test")}
    if not all(files.values()):
        raise SystemExit(f"error: {src} has no train-*/test-*.parquet files (Hub parquet layout expected)")
    rng = np.random.default_rng(args.seed)
    train_rows = pq.read_table(files["train"][0]).slice(0, args.train).to_pylist()
    test_rows = pq.read_table(files["test"][0]).slice(0, args.test).to_pylist()
    out = Path(args.out) / "data"
    out.mkdir(parents=True, exist_ok=True)
    for name, rows, mode in (("train", train_rows, "train"), ("test_decoy", test_rows, "decoy"),
                             ("test", test_rows, "clean")):
        split = datasets.Dataset.from_dict(build_split(rows, rng, args.patch, mode))
        split = split.cast_column("image", datasets.Image()).cast_column("mask", datasets.Image())
        split.to_parquet(str(out / f"{name}-00000-of-00001.parquet"))
        print(f"{name}: {len(rows)} images", flush=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
