"""Image-classification data from Hugging Face `datasets` (a Hub id or a local folder).

Images are decoded here rather than by `datasets`, so that one unreadable file is
skipped and counted instead of ending a run. Random augmentation is seeded per
(seed, epoch, index): the same sample gets the same crop whatever the number of
processes or workers, and a resumed run sees the images an uninterrupted one saw.
"""
from __future__ import annotations

import io
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from .transforms import eval_transform

_TORCH_RNG = torch.default_generator
IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "class", "target")


class DataError(ValueError):
    """A data set that cannot be used as asked (missing split or column)."""


@dataclass
class ImageDatasetInfo:
    image_column: str
    label_column: str | None  # None: an unlabeled data set (its samples' label is -1)
    num_classes: int
    label_names: list[str] | None


UNLABELED = -1


def labels_of(rows: dict, info: ImageDatasetInfo, count: int) -> list:
    """The label column of a batch of rows, or UNLABELED for each row of an unlabeled data set."""
    return rows[info.label_column] if info.label_column else [UNLABELED] * count


def find_column(columns: Sequence[str], wanted: str | None, candidates: Sequence[str], what: str,
                 source: str, required: bool = True) -> str | None:
    """The column named `wanted`, else the first of `candidates` present; None if none is and the
    column is not `required`."""
    if wanted is not None:
        if wanted not in columns:
            raise DataError(f"{source} has no {what} column {wanted!r}; its columns are {list(columns)}")
        return wanted
    for name in candidates:
        if name in columns:
            return name
    if not required:
        return None
    raise DataError(
        f"{source}: no {what} column found; expected one of {list(candidates)}, the columns are "
        f"{list(columns)}. Name it with --{what}-column."
    )


def load_split(source: str, split: str, *, cache_dir: str | None = None, image_column: str | None = None,
               label_column: str | None = None, max_samples: int | None = None, require_labels: bool = True):
    """Load one split of a Hub data set or a local folder (parquet layout or class subfolders).

    `split` accepts `datasets` slicing ("train[:500]"). Returns (dataset, ImageDatasetInfo);
    the image column is left undecoded (bytes/paths) for `ImageClassificationDataset`. Without
    `require_labels`, a split with no label column (a folder of images without class folders) is
    unlabeled: no label column, 0 classes.
    """
    import datasets

    base_split = split.split("[")[0]
    local = Path(source)
    if not local.is_dir() and (local.suffix or source.startswith((".", "/"))):
        if local.is_file():
            raise DataError(f"data set {source} is a file; expected a data set folder (parquet shards, or images "
                            f"with or without class subfolders), a Hub id such as ORG/NAME, or wds:FOLDER")
        raise DataError(f"data set folder not found: {source}")
    try:
        splits = datasets.get_dataset_split_names(source, cache_dir=cache_dir)
    except Exception as e:  # datasets raises many types for a missing or malformed source
        raise DataError(f"cannot open data set {source!r}: {type(e).__name__}: {e}") from e
    if splits and base_split not in splits:
        raise DataError(f"data set {source!r} has no split {base_split!r}; its splits are {splits}")
    ds = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    image_col = find_column(ds.column_names, image_column, IMAGE_COLUMNS, "image", f"data set {source!r}")
    label_col = find_column(ds.column_names, label_column, LABEL_COLUMNS, "label", f"data set {source!r}",
                            required=require_labels)
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    feature = ds.features[label_col] if label_col else None
    if feature is None:
        num_classes, names = 0, None
    elif isinstance(feature, datasets.ClassLabel):
        num_classes, names = feature.num_classes, list(feature.names)
    else:
        labels = ds[label_col]
        num_classes, names = int(max(labels)) + 1, None
    if isinstance(ds.features[image_col], datasets.Image):
        ds = ds.cast_column(image_col, datasets.Image(decode=False))
    return ds, ImageDatasetInfo(image_col, label_col, num_classes, names)


def open_image(value):
    """A loaded PIL image in its stored mode from what `datasets` stores (bytes/path dict, path,
    PIL image or array)."""
    from PIL import Image

    if isinstance(value, dict):
        img = Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    elif isinstance(value, (str, Path)):
        img = Image.open(value)
    elif isinstance(value, Image.Image):
        img = value
    else:
        img = Image.fromarray(np.asarray(value))
    img.load()
    return img


def decode_image(value):
    """A PIL RGB image from what `datasets` stores (see `open_image`)."""
    return open_image(value).convert("RGB")


class ImageClassificationDataset(Dataset):
    """(image tensor, label) pairs; undecodable images come back as None (see `collate_skipping`)."""

    def __init__(self, hf_dataset, info: ImageDatasetInfo, transform: Callable, seed: int = 0) -> None:
        self.data = hf_dataset
        self.info = info
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.data)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        """Batched row access: one arrow read per batch instead of one per image."""
        indices = [int(i) for i in indices]
        rows = self.data[indices]
        return [self.sample(i, img, label) for i, img, label in
                zip(indices, rows[self.info.image_column], labels_of(rows, self.info, len(indices)))]

    def sample(self, index: int, value, label):
        """(transformed image, label) of split row `index` from its stored value; None if undecodable."""
        try:
            img = decode_image(value)
        except Exception:  # PIL raises several types for corrupt files; the collate step counts them
            return None
        return self.seeded_transform(index, img), int(label)

    def seeded_transform(self, index: int, img):
        """self.transform(img) with torch's, Python's and numpy's global RNGs (what torchvision,
        timm and user transforms draw from) seeded for (seed, epoch, index) only."""
        sample_seed = ((self.seed * 1_000_003 + self.epoch) * 10_000_019 + index) % 2**63  # large --seed too
        if get_worker_info() is not None:  # a loader worker's RNGs are ours: saving them costs ~0.1 ms an image
            self._seed_all(sample_seed)
            return self.transform(img)
        torch_state, py_state, np_state = _TORCH_RNG.get_state(), random.getstate(), np.random.get_state()
        self._seed_all(sample_seed)
        try:
            return self.transform(img)
        finally:  # the main process (workers=0) gets the caller's RNG states back
            _TORCH_RNG.set_state(torch_state)
            random.setstate(py_state)
            np.random.set_state(np_state)

    @staticmethod
    def _seed_all(seed: int) -> None:
        _TORCH_RNG.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)


def collate_skipping(samples) -> dict[str, torch.Tensor]:
    """Stack the decodable samples; `skipped` counts the undecodable ones (None) in the batch."""
    kept = [s for s in samples if s is not None]
    skipped = torch.tensor(len(samples) - len(kept))
    if not kept:
        return {"images": torch.empty(0), "labels": torch.empty(0, dtype=torch.long), "skipped": skipped}
    images = torch.stack([s[0] for s in kept])
    labels = torch.tensor([s[1] for s in kept], dtype=torch.long)
    return {"images": images, "labels": labels, "skipped": skipped}


class EpochSampler(Sampler[int]):
    """A permutation per epoch drawn from (seed, epoch) alone, so a resumed run can replay it."""

    def __init__(self, length: int, seed: int = 0, shuffle: bool = True) -> None:
        self.length = length
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=g).tolist())


def load_eval_dataset(source: str, split: str, *, input_size=(3, 32, 32), crop_pct: float = 1.0,
                      interpolation: str = "bilinear", max_samples: int | None = None,
                      cache_dir: str | None = None, image_column: str | None = None,
                      label_column: str | None = None,
                      require_labels: bool = True) -> tuple[ImageClassificationDataset, ImageDatasetInfo]:
    """One split as a lazily decoded data set of plain [0, 1] RGB tensors (timm's eval resize +
    centre crop, no mean/std: put the model behind its own normalisation)."""
    ds, info = load_split(source, split, cache_dir=cache_dir, image_column=image_column,
                          label_column=label_column, max_samples=max_samples, require_labels=require_labels)
    return ImageClassificationDataset(ds, info, eval_transform(input_size, crop_pct, interpolation)), info


class IndexedSamples(Dataset):
    """(image, label, index) samples of a data set (None where undecodable), for `collate_indexed`."""

    def __init__(self, data: ImageClassificationDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> list:
        return [None if s is None else (s[0], s[1], int(i)) for s, i in zip(self.data.__getitems__(indices), indices)]


def collate_indexed(samples) -> dict[str, torch.Tensor]:
    """collate_skipping plus the data-set `indices` of the kept samples."""
    batch = collate_skipping([None if s is None else s[:2] for s in samples])
    batch["indices"] = torch.tensor([s[2] for s in samples if s is not None], dtype=torch.long)
    return batch


class LazyImages:
    """Images of a data set by index, decoded on access: `images[[3, 17]]` is a [2, C, H, W] tensor.

    Stands in for a materialised [N, C, H, W] tensor where only a few images are needed
    (pointing-game grids, examples): a whole ImageNet split would be ~30 GB as float tensors.
    """

    def __init__(self, data: ImageClassificationDataset, input_size) -> None:
        self.data = data
        self.shape = (len(data), *tuple(input_size))

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, indices) -> torch.Tensor:
        indices = [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]
        samples = self.data.__getitems__(indices)
        missing = [i for i, s in zip(indices, samples) if s is None]
        if missing:
            raise DataError(f"images {missing[:5]} are undecodable")
        return torch.stack([s[0] for s in samples])


def load_image_tensors(source: str, split: str, *, input_size=(3, 32, 32), crop_pct: float = 1.0,
                       interpolation: str = "bilinear", max_samples: int | None = None,
                       cache_dir: str | None = None, image_column: str | None = None,
                       label_column: str | None = None):
    """A whole split as plain [0, 1] RGB tensors [N, 3, H, W] and labels [N] (for small splits;
    large ones: `load_eval_dataset` + a DataLoader); undecodable images are left out.
    Returns (images, labels, info, skipped)."""
    data, info = load_eval_dataset(source, split, input_size=input_size, crop_pct=crop_pct,
                                   interpolation=interpolation, max_samples=max_samples, cache_dir=cache_dir,
                                   image_column=image_column, label_column=label_column)
    images, labels, skipped = [], [], 0
    for start in range(0, len(data), 512):
        for sample in data.__getitems__(list(range(start, min(start + 512, len(data))))):
            if sample is None:
                skipped += 1
                continue
            images.append(sample[0])
            labels.append(sample[1])
    if not images:
        raise DataError(f"no decodable image in {source!r} split {split!r}")
    return torch.stack(images), torch.tensor(labels), info, skipped
