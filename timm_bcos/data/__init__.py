"""Image-classification data: Hub data sets and local folders (`datasets`), parquet shards streamed as
a run reads them (`streaming`), webdataset tar shards (`tarshards`), and the transforms."""
from .datasets import (DataError, EpochSampler, ImageClassificationDataset, ImageDatasetInfo, IndexedSamples,
                       LazyImages, collate_indexed, collate_skipping, decode_image, load_eval_dataset,
                       load_image_tensors, load_split, open_image)
from .streaming import ShardRows, ShardStream, load_eval_stream, open_stream_split
from .transforms import PadCropFlip, build_transform, eval_transform

__all__ = ["DataError", "EpochSampler", "ImageClassificationDataset", "ImageDatasetInfo", "IndexedSamples",
           "LazyImages", "PadCropFlip", "ShardRows", "ShardStream", "build_transform", "collate_indexed",
           "collate_skipping", "decode_image", "eval_transform", "load_eval_dataset", "load_eval_stream",
           "load_image_tensors", "load_split", "open_image", "open_stream_split"]
