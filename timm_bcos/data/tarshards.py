"""Webdataset tar shards (`--dataset wds:...`): which shards hold a split, how many samples each
holds, and one shard's samples as an arrow table, which `streaming` reads as it reads a parquet
row group.

A sample is a run of consecutive tar members sharing a key (the member's path up to the first dot
of its file name: webdataset's rule) that holds an image. Its label is an integer stored as text,
in a `cls` member by default (timm's and webdataset's convention). Where a split is found:

- `wds:DIR` with a split name: DIR's `_info.json` / `info.json` (timm's layout: `splits.<name>` with
  `filenames` and `shard_lengths`), else the `.tar` files in DIR whose name holds the split name
  followed only by a shard number (`imagenet-train-0000.tar`, `train-00000-of-00004.tar`, not
  `train_small-0000.tar`);
- `wds:DIR` with a split that is a brace pattern relative to DIR (`{0000..0099}.tar`, as timm's
  `--train-split`);
- `wds:PATH/{000..099}.tar`: that pattern for any split name, with `{split}` replaced by it.

PATH and DIR are local paths or fsspec URLs, with cache layers chained in front as fsspec allows
(`simplecache::hf://...`, `filecache::`, `blockcache::`): shards are listed on the last
filesystem of the chain and read through the whole chain.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

from ..utils.atomic import atomic_path
from .datasets import DataError

WDS_PREFIX = "wds:"
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LABEL_EXTS = ("cls", "label", "cls.txt", "target")
INFO_FILES = ("_info.json", "info.json")
SHARD_EXTS = ("tar", "tar.gz", "tgz")


@dataclass(frozen=True)
class TarFields:
    """The member extensions that hold a sample's image and label, first match wins."""
    image: tuple[str, ...] = IMAGE_EXTS
    label: tuple[str, ...] = LABEL_EXTS
    require_label: bool = True  # False: a sample without a label member is unlabeled (-1)

    @classmethod
    def of(cls, image_column: str | None, label_column: str | None) -> TarFields:
        """--image-column / --label-column name extensions here: 'png' or 'jpg;png'."""
        return cls(_extensions(image_column) if image_column else IMAGE_EXTS,
                   _extensions(label_column) if label_column else LABEL_EXTS)


def _extensions(text: str) -> tuple[str, ...]:
    return tuple(e.strip().lower().lstrip(".") for e in text.split(";") if e.strip())


@dataclass(frozen=True)
class TarSplit:
    files: tuple[str, ...]
    lengths: tuple[int, ...] | None  # samples per shard, when an info file says
    num_classes: int | None


def expand_braces(pattern: str) -> list[str]:
    """`a-{000..011}.tar` and `{x,y}` expanded as webdataset and bash do (a bound with a leading
    zero pads the range to the wider bound)."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body = m.group(1)
    bounds = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if bounds:
        lo, hi = bounds.groups()
        if int(hi) < int(lo):
            raise DataError(f"empty range {{{body}}} in {pattern!r}")
        padded = any(len(v) > 1 and v.startswith("0") for v in (lo, hi))  # bash's rule: {1..05} is 01..05
        width = max(len(lo), len(hi)) if padded else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    elif "," in body:
        items = body.split(",")
    else:
        raise DataError(f"cannot expand {{{body}}} in {pattern!r}: expected a range {{000..099}} or a list {{a,b}}")
    return [out for item in items for out in expand_braces(pattern[:m.start()] + item + pattern[m.end():])]


def _is_pattern(text: str) -> bool:
    return "{" in text or text.endswith(tuple(f".{ext}" for ext in SHARD_EXTS))


def _read_info(fs, root: str) -> dict | None:
    for name in INFO_FILES:
        path = f"{root.rstrip('/')}/{name}"
        if fs.exists(path):
            with fs.open(path, "r") as f:
                return json.load(f)
    return None


def _lengths_from_info(info: dict | None, files: list[str], root: str) -> tuple[int, ...] | None:
    """Each file's `shard_lengths` entry from any split of the info file, or None if one is missing."""
    known = {}
    for entry in (info or {}).get("splits", {}).values():
        known.update(zip((f"{root.rstrip('/')}/{f}" for f in entry.get("filenames", ())), entry.get("shard_lengths", ())))
    return tuple(known[f] for f in files) if all(f in known for f in files) else None



def _shards_named_for(fs, root: str, split: str, source: str) -> list[str]:
    """The shards in `root` named for `split`: the split name, then nothing but a shard number
    ('train' is not 'train_small-0000'), all one set: one prefix ('imagenet-train-0000.tar' and
    'mini-train-0000.tar' are two data sets), all numbered or one unnumbered file, each name once,
    and every index of an '-of-N' set present. Ordered by shard number."""
    word = re.compile(rf"(^|[-_.]){re.escape(split)}(?:[-_.](\d+)(?:[-_.]of[-_.](\d+))?)?$")
    sets: dict[tuple[str, bool], dict[str, tuple]] = {}
    for ext in SHARD_EXTS:
        for path in fs.glob(f"{root.rstrip('/')}/*.{ext}"):
            name = posixpath.basename(path)[:-len(ext) - 1]  # only the extension goes: 'my.train-0001'
            m = word.search(name)
            if not m:
                continue
            found = sets.setdefault((name[:m.end(1)], m.group(2) is not None), {})
            if name in found:
                raise DataError(f"data set {source!r}: shard {name!r} of split {split!r} is there twice "
                                f"({posixpath.basename(found[name][2])} and {posixpath.basename(path)})")
            found[name] = (int(m.group(2) or 0), m.group(3), path)
    if not sets:
        raise DataError(f"data set {source!r}: no info file ({' or '.join(INFO_FILES)}) and no .tar "
                        f"shard named for split {split!r} (e.g. {split}-0000.tar)")
    if len(sets) > 1:
        examples = ", ".join(min(posixpath.basename(v[2]) for v in found.values()) for found in sets.values())
        raise DataError(f"data set {source!r}: {len(sets)} sets of shards named for split {split!r} "
                        f"({examples}); name one with a pattern, e.g. wds:FOLDER/PREFIX{split}-{{0000..0099}}.tar")
    shards = sorted(next(iter(sets.values())).values())
    _check_of_n(shards, split, source)
    return [path for _, _, path in shards]


def _check_of_n(shards: list[tuple], split: str, source: str) -> None:
    """'train-00003-of-00004': the names say which shards there are."""
    totals = {int(of) for _, of, _ in shards if of is not None}
    if not totals:
        return
    indices = [i for i, _, _ in shards]
    if len(totals) > 1 or indices != list(range(totals.pop())):
        raise DataError(f"data set {source!r}: split {split!r} has shards {_first_indices(indices)}, but their "
                        f"names say -of-{'/'.join(sorted({of for _, of, _ in shards if of}))} (numbered from 0)")


def _first_indices(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices[:8]) + (", ..." if len(indices) > 8 else "")


def resolve_split(source: str, split: str) -> TarSplit:
    """The shards of `split` (a name or a pattern, no slice) of a `wds:` data set."""
    import fsspec

    # fsspec's chained URLs ('simplecache::hf://...'): shards are found on the last filesystem of the
    # chain and opened through all of it
    chain, _, location = source[len(WDS_PREFIX):].rpartition("::")
    split = split.split("|")[0]  # timm's 'shards-{0000..0099}.tar|100000' gives a sample count we count anyway
    if not location:
        raise DataError(f"{source!r}: expected wds:FOLDER or wds:PATH/{{000..099}}.tar")
    if _is_pattern(location):
        fs, _ = fsspec.core.url_to_fs(location)
        files, info, root = expand_braces(location.replace("{split}", split)), None, None
    else:
        fs, root = fsspec.core.url_to_fs(location)
        if not fs.isdir(root):
            raise DataError(f"{source!r}: no folder {location!r}")
        info = _read_info(fs, root)
        if _is_pattern(split):
            files = expand_braces(f"{root.rstrip('/')}/{split}")
        elif info is not None:
            splits = info.get("splits", {})
            if split not in splits:
                raise DataError(f"data set {source!r} has no split {split!r}; its info file lists {sorted(splits)}")
            if not splits[split].get("filenames"):
                raise DataError(f"data set {source!r}: the info file's split {split!r} lists no 'filenames'")
            files = [f"{root.rstrip('/')}/{f}" for f in splits[split]["filenames"]]
        else:
            files = _shards_named_for(fs, root, split, source)
    missing = [f for f in files if not fs.exists(f)]
    if missing:
        raise DataError(f"split {split!r} of {source!r}: {len(missing)} of {len(files)} shards missing, "
                        f"first {missing[0]!r}")
    lengths = _lengths_from_info(info, files, root) if root else None  # the info file names paths as fs does
    files = [fs.unstrip_protocol(f) if "://" in location else f for f in files]
    files = [f"{chain}::{f}" for f in files] if chain else files
    return TarSplit(tuple(files), lengths, (info or {}).get("num_classes"))


def _key_and_ext(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def iter_samples(path: str, fields: TarFields, *, images: bool = True):
    """(key, image {"bytes", "path"} or None when `images` is False, label) of each sample of a
    shard, in member order."""
    import fsspec

    def finish(key, found):
        image_ext = next((e for e in fields.image if e in found), None)
        if image_ext is None:  # no image: not a sample (e.g. a stray metadata member)
            return None
        label = next((found[e] for e in fields.label if e in found), None)
        if label is None and not fields.require_label:
            return key, found[image_ext], -1
        if label is None:
            raise DataError(f"{path}: sample {key!r} has no label member ({', '.join('.' + e for e in fields.label)})")
        try:
            value = int(label.decode().strip())
        except ValueError:
            raise DataError(f"{path}: sample {key!r} has label {label[:20]!r}, expected an integer") from None
        return key, found[image_ext], value

    # reading images: one pass front to back (a remote shard is read once, in order); counting:
    # seekable, so the image members' bytes are skipped, not read
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*" if images else "r:*") as tar:
        key, found = None, {}
        for member in tar:
            if not member.isfile():
                continue
            k, ext = _key_and_ext(member.name)
            if k != key:
                sample = finish(key, found) if key is not None else None
                if sample:
                    yield sample
                key, found = k, {}
            if ext in fields.image:  # read only when wanted; counted either way
                found[ext] = {"bytes": tar.extractfile(member).read(), "path": member.name} if images else None
            elif ext in fields.label:
                found[ext] = tar.extractfile(member).read()
        sample = finish(key, found) if key is not None else None
        if sample:
            yield sample


def scan_cache_dir() -> Path:
    """Where shard scans are kept: $TIMM_BCOS_CACHE, else ~/.cache/timm_bcos."""
    return Path(os.environ.get("TIMM_BCOS_CACHE") or Path.home() / ".cache" / "timm_bcos") / "wds_scans"


def _scan_key(path: str, fields: TarFields) -> str:
    """A shard's identity for its cached scan: path, size and modification time (or ETag), fields."""
    import fsspec

    fs, inner = fsspec.core.url_to_fs(path)
    info = fs.info(inner)
    stamp = next((str(info[k]) for k in ("mtime", "LastModified", "ETag", "etag", "last_commit") if info.get(k)), "")
    ident = json.dumps([path, info.get("size"), stamp, fields.image, fields.label, fields.require_label])
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def shard_labels(path: str, fields: TarFields) -> list[int]:
    """The labels of a shard's samples, in order (their count is the shard's length). The scan is
    kept on local disk (`scan_cache_dir`) by the shard's identity: the other processes of a run,
    which open the split after the main one, and later runs read it instead of the shard."""
    cached = scan_cache_dir() / f"{_scan_key(path, fields)}.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    labels = [label for _, _, label in iter_samples(path, fields, images=False)]
    try:
        with atomic_path(cached) as tmp:
            tmp.write_text(json.dumps(labels))
    except OSError:  # a read-only home: the scan still counts, it is just not kept
        pass
    return labels


def read_table(path: str, fields: TarFields):
    """A shard's samples as an arrow table with columns image ({"bytes", "path"}) and label."""
    import pyarrow as pa

    images, labels = [], []
    for _, image, label in iter_samples(path, fields):
        images.append(image)
        labels.append(label)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.table({"image": pa.array(images, type=image_type), "label": pa.array(labels, type=pa.int64())})
