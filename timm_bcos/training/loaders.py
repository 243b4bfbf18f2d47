"""A run's data: the splits (map-style or streamed), the training and validation loaders, and batches
moved to the training device."""
from __future__ import annotations

import torch

from .config import TrainConfig
from .errors import fail


def load_data(config: TrainConfig, accelerator):
    """(train split, validation split or None, train info, validation info), prepared once by the main
    process. Under --align-to the splits may be unlabeled; a validation split without labels is dropped."""
    from ..data.datasets import DataError, load_split
    from ..data.streaming import ShardRows, open_stream_split, shared_rows

    labels = not config.align_to
    columns = {"image_column": config.image_column, "label_column": config.label_column, "require_labels": labels}
    try:
        with accelerator.main_process_first():  # one process downloads and prepares, the others reuse it
            val_hf, val_info = None, None
            if config.streaming:
                train_hf = open_stream_split(config.dataset, config.train_split, **columns,
                                             max_samples=config.max_train_samples, num_classes=config.num_classes)
                info = train_hf.info
                if config.val_split:  # read on demand too: no download of the validation split either
                    val = open_stream_split(config.dataset, config.val_split, **columns,
                                            max_samples=config.max_val_samples, num_classes=info.num_classes or None)
                    if shared_rows(val, train_hf):
                        fail(f"--val-split {config.val_split!r} reads shards of --train-split {config.train_split!r}: "
                             "name another split ('{split}' in a wds: pattern) or pass --val-split ''")
                    val_hf, val_info = (ShardRows(val), val.info) if val.info.label_column else (None, None)
            else:
                train_hf, info = load_split(config.dataset, config.train_split, cache_dir=config.cache_dir, **columns,
                                            max_samples=config.max_train_samples)
                if config.val_split:
                    val_hf, val_info = load_split(config.dataset, config.val_split, cache_dir=config.cache_dir,
                                                  image_column=info.image_column,
                                                  label_column=info.label_column or config.label_column,
                                                  max_samples=config.max_val_samples, require_labels=labels)
                    if not val_info.label_column:
                        val_hf = None
    except DataError as e:
        fail(str(e))
    return train_hf, val_hf, info, val_info


def training_dataset(config: TrainConfig, train_hf, info, transform, model):
    """The training data set and its collate function (with masks under --guidance)."""
    from ..data.datasets import ImageClassificationDataset, collate_skipping

    if not config.guidance:
        return ImageClassificationDataset(train_hf, info, transform, seed=config.seed), collate_skipping
    from ..guidance import AnnotatedImageDataset, collate_annotated

    mean, std = model.pretrained_cfg.get("mean", (0, 0, 0)), model.pretrained_cfg.get("std", (1, 1, 1))
    try:
        data = AnnotatedImageDataset(train_hf, info, transform, mask_column=config.mask_column,
                                     boxes_column=config.boxes_column, fraction=config.annotated_fraction,
                                     dilation=config.box_dilation, mask_threshold=(0.5 - mean[0]) / std[0],
                                     seed=config.seed)
    except ValueError as e:
        fail(str(e))
    return data, collate_annotated


def streaming_dataset(config: TrainConfig, split, transform):
    """This process's share of a streamed split, in per-process batches (Accelerate does not shard
    an iterable loader without reading it all on one process, so the stream shards itself)."""
    from accelerate.state import PartialState

    from ..data.streaming import ShardStream

    if config.guidance:
        fail("--guidance reads masks through the map-style data set: drop --streaming for it"
             + (" (a wds: data set is always streamed: use a parquet or image-folder copy)"
                if config.dataset.startswith("wds:") else ""))
    if config.shuffle_buffer < 1:
        fail(f"--shuffle-buffer must be at least 1 row, got {config.shuffle_buffer}")
    state = PartialState()
    per_process = config.batch_size // config.grad_accum // state.num_processes
    if per_process == 0:
        fail(f"--batch-size {config.batch_size} gives no image per process and micro-batch under --streaming")
    return ShardStream(split, transform, batch_size=per_process, rank=state.process_index,
                       world=state.num_processes, seed=config.seed, buffer=config.shuffle_buffer)


def build_loaders(config: TrainConfig, model, train_hf, val_hf, info, val_info=None):
    """(training data set, its epoch sampler, training loader, validation loader or None)."""
    from ..data.datasets import EpochSampler, ImageClassificationDataset, collate_skipping
    from ..data.transforms import build_transform

    per_step = config.batch_size // config.grad_accum
    pin = config.pin_mem and torch.cuda.is_available() and not config.cpu
    # under --guidance the masks go through the same transform: geometry only (timm's default
    # colour jitter would repaint them)
    train_tf = build_transform(model, is_training=True, crop=config.crop, hflip=config.hflip, img_size=config.img_size,
                               auto_augment=config.auto_augment, scale=config.scale and tuple(config.scale),
                               color_jitter=0.0 if config.guidance else None)
    if config.streaming:
        train_ds = sampler = streaming_dataset(config, train_hf, train_tf)
        # its own generator: the loader's base seed must not draw from torch's global RNG, which
        # a resume restores to the checkpoint's state (a resumed run would then be one draw ahead)
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=None, num_workers=config.workers,
                                                   generator=torch.Generator(), pin_memory=pin)
    else:
        train_ds, train_collate = training_dataset(config, train_hf, info, train_tf, model)
        sampler = EpochSampler(len(train_ds), seed=config.seed)
        train_loader = torch.utils.data.DataLoader(
            train_ds, batch_size=per_step, sampler=sampler, drop_last=True, num_workers=config.workers,
            collate_fn=train_collate, generator=torch.Generator(), pin_memory=pin,
        )
    if len(train_loader) == 0:
        if config.streaming:
            fail(f"{train_ds.share} training images per process are fewer than one batch of {train_ds.batch_size}")
        fail(f"{len(train_ds)} training images are fewer than one batch of {per_step}")
    val_loader = None
    if val_hf is not None:
        val_ds = ImageClassificationDataset(val_hf, val_info or info, build_transform(model, is_training=False,
                                                                          img_size=config.img_size))
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=per_step, num_workers=config.workers,
                                                 collate_fn=collate_skipping, pin_memory=pin)
    return train_ds, sampler, train_loader, val_loader


def batch_tensors(batch: dict, device: torch.device, dtype: torch.dtype, channels_last: bool, even: bool):
    """Images in the training device, dtype and layout (a streamed batch comes from the CPU); `even`
    drops one image of an odd batch (timm's Mixup pairs images)."""
    # non_blocking: an overlapped copy from a pinned batch (--pin-mem), a plain one otherwise
    images, labels = batch["images"].to(device, dtype, non_blocking=True), batch["labels"].to(device, non_blocking=True)
    if even and images.shape[0] % 2:
        images, labels = images[:-1], labels[:-1]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def placeholder_batch(model: torch.nn.Module, config: TrainConfig, dtype: torch.dtype):
    """Two black images of the model's input size (for a weight-0 step before any real batch)."""
    from timm.data import resolve_data_config

    size = resolve_data_config({"img_size": config.img_size} if config.img_size else {}, model=model)["input_size"]
    device = next(model.parameters()).device
    return torch.zeros(2, *size, dtype=dtype, device=device), torch.zeros(2, dtype=torch.long, device=device)
