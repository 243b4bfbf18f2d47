"""Training images streamed from the shards of a split, with no download ahead and no Arrow cache:
the parquet shards of a local folder in the Hugging Face layout or of a Hub data set (`hf://`), or
webdataset tar shards (`wds:`, see `tarshards`). A tar shard plays the part of one row group.

The epoch's order is drawn from (seed, epoch) alone: the row groups are shuffled, consecutive ones
are pooled into blocks of at least `buffer` rows, and each block's rows are shuffled. That stream is
cut into one contiguous, equal share per process (the last N mod world rows sit the epoch out), the
share into batches, and the batches into one contiguous run per loader worker (so that a worker
reads only its own row groups); the DataLoader takes the workers in turn. The batches are the same
for any number of workers, their order is not: a resume needs the same --workers. A sample's index
is its row in the split, so its augmentation is seeded as in `ImageClassificationDataset`, and a
resumed run starts each worker at its next batch without reading the batches before it.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, replace

import torch
from torch.utils.data import IterableDataset, get_worker_info

from .datasets import (IMAGE_COLUMNS, LABEL_COLUMNS, DataError, ImageClassificationDataset, ImageDatasetInfo,
                   collate_skipping, eval_transform, find_column, labels_of)
from .tarshards import WDS_PREFIX, TarFields, read_table, resolve_split, shard_labels


@dataclass(frozen=True)
class RowGroup:
    """Rows [offset, offset + rows) of row group `index` of `file`; `first` is the index of its row 0
    in the (sliced) split, so that row `offset` of a sliced split's first group has index 0."""
    file: str
    index: int
    first: int
    offset: int
    rows: int
    length: int  # the group's rows before any slice (a tar shard's: from its info file or a scan)


@dataclass(frozen=True)
class StreamSplit:
    name: str
    row_groups: tuple[RowGroup, ...]
    info: ImageDatasetInfo
    tar: TarFields | None = None  # tar shards (one row group each) and their member extensions

    @property
    def num_rows(self) -> int:
        return sum(g.rows for g in self.row_groups)


def _open(path: str):
    import fsspec
    import pyarrow.parquet as pq

    return pq.ParquetFile(fsspec.open(path, "rb").open())


def split_files(source: str, split: str):
    """(the parquet files of `split` ("train", no slicing) as `datasets` resolves them, the data
    set's declared features or None)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(source)
    except Exception as e:  # datasets raises many types for a missing or malformed source
        raise DataError(f"cannot open data set {source!r}: {type(e).__name__}: {e}") from e
    files = dict(builder.config.data_files or {})
    if not files:
        raise DataError(f"--streaming reads parquet shards; {source!r} ({builder.name!r} data) lists no data files")
    if split not in files:
        raise DataError(f"data set {source!r} has no split {split!r}; its splits are {sorted(files)}")
    paths = [str(p) for p in files[split]]
    if not paths or not all(p.endswith(".parquet") for p in paths):
        raise DataError(f"--streaming reads parquet shards; split {split!r} of {source!r} is "
                        f"{builder.name!r} data ({paths[:2]}...): drop --streaming for it")
    return paths, builder.info.features


def _slice_bounds(split: str, num_rows: int, max_samples: int | None) -> tuple[str, int, int]:
    """(split name, first row, end row) of a `datasets` split spec such as "train[:10%]" (a word,
    then at most one slice)."""
    import datasets

    try:
        parts = datasets.ReadInstruction.from_spec(split).to_absolute({split.split("[")[0]: num_rows})
    except (ValueError, AssertionError, KeyError) as e:
        raise DataError(f"cannot stream split {split!r}: {e}") from e
    if len(parts) != 1:
        raise DataError(f"--streaming reads one split with one slice, got {split!r}")
    start, stop = parts[0].from_ or 0, parts[0].to if parts[0].to is not None else num_rows
    if max_samples is not None:
        stop = min(stop, start + max_samples)
    return parts[0].splitname, start, stop


def _clip(groups: list[RowGroup], start: int, stop: int) -> tuple[RowGroup, ...]:
    """The rows [start, stop) of the whole split, indexed from 0 as `load_dataset(split="x[a:b]")` does."""
    kept = []
    for g in groups:
        lo, hi = max(start, g.first), min(stop, g.first + g.rows)
        if lo < hi:
            kept.append(RowGroup(g.file, g.index, g.first - start, lo - g.first, hi - lo, g.length))
    return tuple(kept)


def _count_classes(groups: tuple[RowGroup, ...], label: str) -> int:
    """Largest label + 1 (as the map-style path counts), reading the label column only."""
    largest, files = -1, {}
    for g in groups:
        if g.file not in files:
            files[g.file] = _open(g.file)
        labels = files[g.file].read_row_group(g.index, columns=[label]).column(0).slice(g.offset, g.rows)
        largest = max(largest, max((v for v in labels.to_pylist() if v is not None), default=-1))
    return largest + 1


def open_parquet_split(source: str, split: str, *, image_column: str | None = None, label_column: str | None = None,
                       max_samples: int | None = None, num_classes: int | None = None,
                       require_labels: bool = True) -> StreamSplit:
    """A split's row groups (from the shards' footers only) and its columns and classes."""
    import datasets

    if "+" in split:
        raise DataError(f"--streaming reads one split with one slice, got {split!r}")
    files, declared = split_files(source, split.split("[")[0])
    groups, first, schema = [], 0, None
    for path in files:
        meta = _open(path)
        schema = schema or meta.schema_arrow
        for i in range(meta.metadata.num_row_groups):
            rows = meta.metadata.row_group(i).num_rows
            groups.append(RowGroup(path, i, first, 0, rows, rows))
            first += rows
    name, start, stop = _slice_bounds(split, first, max_samples)
    # the card's declared features first (a Hub card may declare ClassLabel names its shards lack)
    features = declared or datasets.Features.from_arrow_schema(schema)
    image = find_column(list(features), image_column, IMAGE_COLUMNS, "image", f"data set {source!r}")
    label = find_column(list(features), label_column, LABEL_COLUMNS, "label", f"data set {source!r}",
                        required=require_labels)
    kept, names = _clip(groups, start, stop), None
    if label is None:  # unlabeled
        num_classes = 0
    elif isinstance(features[label], datasets.ClassLabel):
        num_classes, names = features[label].num_classes, list(features[label].names)
    elif num_classes is None:
        num_classes = _count_classes(kept, label)
    return StreamSplit(name, kept, ImageDatasetInfo(image, label, num_classes, names))


def open_wds_split(source: str, split: str, *, image_column: str | None = None, label_column: str | None = None,
                   max_samples: int | None = None, num_classes: int | None = None,
                   require_labels: bool = True) -> StreamSplit:
    """A `wds:` split's tar shards, one row group each. Their lengths come from the info file, or
    from reading the shards' headers and labels once (as do the classes, unless given)."""
    name, bracket, rest = split.partition("[")
    fields = replace(TarFields.of(image_column, label_column), require_label=require_labels)
    shards = resolve_split(source, name)
    num_classes = num_classes or shards.num_classes
    labels = None
    if shards.lengths is None or num_classes is None or not require_labels:  # (an unlabeled split: is it?)
        labels = [shard_labels(f, fields) for f in shards.files]
    lengths = shards.lengths if shards.lengths is not None else tuple(len(v) for v in labels)
    groups, first = [], 0
    for path, rows in zip(shards.files, lengths):
        groups.append(RowGroup(path, 0, first, 0, rows, rows))
        first += rows
    _, start, stop = _slice_bounds(f"split{bracket}{rest}", first, max_samples)
    if num_classes is None:  # over the slice's rows, as the parquet and map-style paths count
        num_classes = max([v for shard in labels for v in shard][start:stop], default=-1) + 1
    unlabeled = labels is not None and all(v < 0 for shard in labels for v in shard)
    info = ImageDatasetInfo("image", None if unlabeled else "label", 0 if unlabeled else num_classes, None)
    return StreamSplit(name, _clip(groups, start, stop), info, tar=fields)


def open_stream_split(source: str, split: str, **kwargs) -> StreamSplit:
    """`open_wds_split` for a `wds:` source, else `open_parquet_split`."""
    opener = open_wds_split if source.startswith(WDS_PREFIX) else open_parquet_split
    return opener(source, split, **kwargs)


def shared_rows(a: StreamSplit, b: StreamSplit) -> int:
    """How many rows of the same shards two splits both read (a validation split that overlaps
    the training split)."""
    spans = {}
    for g in a.row_groups:
        spans.setdefault((g.file, g.index), []).append((g.offset, g.offset + g.rows))
    return sum(max(0, min(hi, g.offset + g.rows) - max(lo, g.offset))
               for g in b.row_groups for lo, hi in spans.get((g.file, g.index), ()))


def worker_run(batches: int, workers: int, role: int, taken: int) -> tuple[int, int]:
    """(first stream batch, count) still to come from worker `role`, whose run is the `role`-th of
    `workers` near-equal contiguous runs of the epoch's `batches`, once the loader has handed out
    `taken` batches (in turns: loader batch i is the (i // workers)-th of worker i mod workers)."""
    per, extra = divmod(batches, workers)
    count = per + (role < extra)
    start = role * per + min(role, extra)
    done = taken // workers + (role < taken % workers)
    return start + done, count - done


class ShardStream(IterableDataset):
    """Collated training batches (`collate_skipping`) of this process's share of a `StreamSplit`.
    Use with `DataLoader(stream, batch_size=None)`; `len` is the batches per epoch."""

    def __init__(self, split: StreamSplit, transform, *, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, buffer: int = 1000) -> None:
        self.split, self.batch_size, self.rank, self.world, self.buffer = split, batch_size, rank, world, buffer
        self.samples = ImageClassificationDataset(None, split.info, transform, seed=seed)  # decode + seeded transform
        self.share = split.num_rows // world
        self.taken = 0

    @property
    def epoch(self) -> int:
        return self.samples.epoch

    def set_epoch(self, epoch: int) -> None:
        self.samples.set_epoch(epoch)

    def set_position(self, batches: int) -> None:
        """Start the next iteration after the epoch's first `batches` batches (resume)."""
        self.taken = batches

    def __len__(self) -> int:
        return self.share // self.batch_size

    def _generator(self, salt: int) -> torch.Generator:
        """Seeded by (seed, epoch, salt) alone: 0 orders the row groups, b + 1 shuffles block b."""
        return torch.Generator().manual_seed(((self.samples.seed * 1_000_003 + self.epoch) * 10_000_019 + salt) % 2**63)

    def blocks(self) -> list[list[int]]:
        """The epoch's row groups (their places in the split) in shuffled order, pooled into blocks
        of >= `buffer` rows."""
        groups = self.split.row_groups
        order = torch.randperm(len(groups), generator=self._generator(0)).tolist()
        blocks, rows = [[]], 0
        for k in order:
            if rows >= self.buffer:
                blocks.append([])
                rows = 0
            blocks[-1].append(k)
            rows += groups[k].rows
        return blocks if groups else []

    def rows(self, start: int, stop: int):
        """(split row, image value, label) at stream positions [start, stop) of this epoch."""
        reader, info, pos = ShardRows(self.split), self.split.info, 0
        for b, block in enumerate(self.blocks()):
            members = [r for k in block for r in range(reader.starts[k], reader.starts[k + 1])]
            lo, hi = max(start - pos, 0), min(stop - pos, len(members))
            if lo < hi:
                picked = torch.randperm(len(members), generator=self._generator(b + 1))[lo:hi].tolist()
                rows = [members[j] for j in picked]
                got = reader[rows]  # each of the block's row groups read once
                yield from zip(rows, got[info.image_column], labels_of(got, info, len(rows)))
            pos += len(members)
            if pos >= stop:
                return

    def __iter__(self):
        worker = get_worker_info()
        workers, wid = (worker.num_workers, worker.id) if worker else (1, 0)
        # after a resume the loader starts its turns at worker 0: it plays the role of the batch due next
        first, count = worker_run(len(self), workers, (wid + self.taken) % workers, self.taken)
        start = self.rank * self.share + first * self.batch_size
        batch = []
        for index, value, label in self.rows(start, start + count * self.batch_size):
            batch.append(self.samples.sample(index, value, label))
            if len(batch) == self.batch_size:
                yield collate_skipping(batch)
                batch = []


class ShardRows:
    """A split's rows read from their row groups (or tar shards) on demand, indexed by a list of
    rows like a `datasets.Dataset` (`rows[[3, 4]]` is {column: [values]}): random access with no
    download ahead. A call reads each row group it needs once; the last one is kept, so reading in
    order reads each row group once (per loader worker)."""

    def __init__(self, split: StreamSplit) -> None:
        self.split = split
        self.starts = [0]
        for g in split.row_groups:
            self.starts.append(self.starts[-1] + g.rows)
        self._files, self._cached = {}, (None, None)

    def __getstate__(self) -> dict:  # open files and tables stay with their process
        return {"split": self.split, "starts": self.starts}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _files={}, _cached=(None, None))

    def __len__(self) -> int:
        return self.starts[-1]

    def _table(self, k: int):
        if self._cached[0] != k:
            g, info = self.split.row_groups[k], self.split.info
            if self.split.tar is not None:
                table = read_table(g.file, self.split.tar)
                if table.num_rows != g.length:  # any other count would shift or drop samples silently
                    raise DataError(f"{g.file}: {table.num_rows} samples, but the split was opened with "
                                    f"{g.length} (did the shard change since its info file or scan was written?)")
            else:
                if g.file not in self._files:
                    self._files[g.file] = _open(g.file)
                table = self._files[g.file].read_row_group(
                    g.index, columns=[c for c in (info.image_column, info.label_column) if c])
            self._cached = (k, table.slice(g.offset, g.rows))
        return self._cached[1]

    def __getitem__(self, indices: list[int]) -> dict[str, list]:
        columns = tuple(c for c in (self.split.info.image_column, self.split.info.label_column) if c)
        by_group: dict[int, list[tuple[int, int]]] = {}  # row group -> (place in the answer, row in it)
        for place, i in enumerate(indices):
            if not 0 <= i < len(self):
                raise IndexError(f"row {i} of a split of {len(self)} rows")
            k = bisect.bisect_right(self.starts, i) - 1
            by_group.setdefault(k, []).append((place, i - self.starts[k]))
        out = {c: [None] * len(indices) for c in columns}
        for k, wanted in by_group.items():
            rows = self._table(k).take([r for _, r in wanted])
            for c in columns:
                for (place, _), value in zip(wanted, rows.column(c).to_pylist()):
                    out[c][place] = value
        return out


def load_eval_stream(source: str, split: str, *, input_size=(3, 32, 32), crop_pct: float = 1.0,
                     interpolation: str = "bilinear", max_samples: int | None = None, image_column: str | None = None,
                     label_column: str | None = None,
                     require_labels: bool = True) -> tuple[ImageClassificationDataset, ImageDatasetInfo]:
    """`data.load_eval_dataset` read from the split's parquet or tar shards on demand (no download ahead)."""
    opened = open_stream_split(source, split, image_column=image_column, label_column=label_column,
                               max_samples=max_samples, require_labels=require_labels)
    transform = eval_transform(input_size, crop_pct, interpolation)
    return ImageClassificationDataset(ShardRows(opened), opened.info, transform), opened.info
