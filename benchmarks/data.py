"""Training-data throughput per loader worker (issue 27): our map-style and streamed loaders against timm's.

    .venv/bin/python benchmarks/data.py [--images 4096] [--workers 1 2] [--batches 48] [--repeats 3]
                                        [--size 500x375] [--shards 4] [--dir DIR] [--json OUT]

Writes --images CIFAR-10 training images, upsampled (bicubic) to ImageNet's most common size
(500x375) and saved as JPEG (quality 90), as --shards parquet shards in the Hugging Face layout
(`data/train-0000i-of-0000N.parquet`, features Image + ClassLabel), then reads them with the
ImageNet training transform (timm's `create_transform(is_training=True)` for bcos_resnet50's
pretrained cfg: random resized crop to 224, flip, colour jitter 0.4, to tensor) three ways, in one
process, interleaved, for each worker count:

- ours: `timm_bcos.data.load_split` + `ImageClassificationDataset` (batched arrow reads, per-sample
  seeded augmentation, undecodable images skipped) + `EpochSampler` + `collate_skipping`, as
  train_scripts/train.py builds it;
- ours --streaming: `timm_bcos.data.streaming.ShardStream` on the same shards (row groups read as it
  goes, the same per-sample seeding), as `train.py --streaming` builds it;
- ours wds: the same stream over the same JPEGs written as webdataset tar shards (`wds/train-000i.tar`,
  one per parquet shard), as `train.py --dataset wds:...` builds it;
- timm: `timm.data.create_dataset("hfds/<folder>")` + `timm.data.create_loader(is_training=True,
  use_prefetcher=False)` (its CPU path), with the same transform arguments.

Images/s counts batches after the first (worker start-up excluded), median of --repeats; per worker
is that divided by the worker count. Then a profile of one image's path in this process (arrow
read, JPEG decode, RGB convert, transform), and the decode with PIL's JPEG draft mode (decoding at
a reduced scale) for reference. Upsampled CIFAR images are smoother than photographs and decode
faster than real ImageNet JPEGs: absolute rates are optimistic, the ours/timm ratio is the figure.
Results: benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10"


def write_shards(out: Path, n_images: int, size: tuple[int, int], n_shards: int) -> Path:
    """CIFAR-10 training images upsampled to `size` as JPEG, in `n_shards` parquet shards."""
    import datasets
    from PIL import Image

    source = datasets.load_dataset(str(CIFAR), split=f"train[:{n_images}]")
    names = source.features["label"].names
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    (out / "data").mkdir(parents=True, exist_ok=True)
    per_shard = -(-n_images // n_shards)
    for shard in range(n_shards):
        rows = source[shard * per_shard:(shard + 1) * per_shard]
        jpegs = []
        for img in rows["image"]:
            buf = io.BytesIO()
            img.convert("RGB").resize(size, Image.BICUBIC).save(buf, format="JPEG", quality=90)
            jpegs.append({"bytes": buf.getvalue(), "path": None})
        part = datasets.Dataset.from_dict({"image": jpegs, "label": rows["label"]}, features=features)
        part.to_parquet(str(out / "data" / f"train-{shard:05d}-of-{n_shards:05d}.parquet"))
    return out


def write_tars(folder: Path) -> Path:
    """Each parquet shard's rows as a webdataset tar shard (KEY.jpg + KEY.cls) in folder/wds."""
    import tarfile

    import pyarrow.parquet as pq

    (folder / "wds").mkdir(exist_ok=True)
    for i, path in enumerate(sorted((folder / "data").glob("train-*.parquet"))):
        rows = pq.read_table(path).to_pylist()
        with tarfile.open(folder / "wds" / f"train-{i:04d}.tar", "w") as tar:
            for j, row in enumerate(rows):
                for ext, data in (("jpg", row["image"]["bytes"]), ("cls", str(row["label"]).encode())):
                    member = tarfile.TarInfo(f"{i:04d}{j:06d}.{ext}")
                    member.size = len(data)
                    tar.addfile(member, io.BytesIO(data))
    return folder / "wds"


def training_cfg():
    """bcos_resnet50's data config (the ImageNet recipe's model) and its training transform args."""
    import timm
    from timm.data import resolve_data_config

    import timm_bcos  # noqa: F401  (registers the model)

    model = timm.create_model("bcos_resnet50", pretrained=False)
    return model, resolve_data_config({}, model=model)


def our_loader(folder: Path, model, batch: int, workers: int):
    from timm_bcos.data import (EpochSampler, ImageClassificationDataset, build_transform,
                                collate_skipping, load_split)

    hf, info = load_split(str(folder), "train")
    ds = ImageClassificationDataset(hf, info, build_transform(model, is_training=True, crop="rrc"))
    return torch.utils.data.DataLoader(ds, batch_size=batch, sampler=EpochSampler(len(ds)), drop_last=True,
                                       num_workers=workers, collate_fn=collate_skipping,
                                       persistent_workers=False)


def streaming_loader(source: str, model, batch: int, workers: int):
    from timm_bcos.data import build_transform
    from timm_bcos.data.streaming import ShardStream, open_stream_split

    stream = ShardStream(open_stream_split(source, "train"), build_transform(model, is_training=True, crop="rrc"),
                         batch_size=batch)
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)


def timm_loader(folder: Path, cfg: dict, batch: int, workers: int):
    from timm.data import create_dataset, create_loader

    ds = create_dataset(f"hfds/{folder}", root=None, split="train", is_training=True)
    return create_loader(ds, input_size=cfg["input_size"], batch_size=batch, is_training=True,
                         use_prefetcher=False, num_workers=workers, mean=cfg["mean"], std=cfg["std"],
                         interpolation=cfg["interpolation"], crop_pct=cfg["crop_pct"],
                         persistent_workers=False)


def images_per_s(loader, batches: int) -> float:
    """Images/s over `batches` batches after the first (which pays for starting the workers)."""
    it = iter(loader)
    next(it)
    seen, t0 = 0, time.perf_counter()
    for _, batch in zip(range(batches), it):
        seen += len(batch["images"] if isinstance(batch, dict) else batch[0])
    rate = seen / (time.perf_counter() - t0)
    del it
    return rate


def profile_one_image(folder: Path, model, n: int = 64) -> dict[str, float]:
    """Milliseconds per image of each step of our path, in this process; draft-mode decode beside it."""
    from PIL import Image

    from timm_bcos.data import build_transform, load_split

    hf, info = load_split(str(folder), "train")
    transform = build_transform(model, is_training=True, crop="rrc")
    steps = {"arrow read": [], "JPEG decode": [], "RGB convert": [], "transform": [], "draft decode": []}
    for i in range(n):
        t0 = time.perf_counter()
        value = hf[i][info.image_column]
        t1 = time.perf_counter()
        img = Image.open(io.BytesIO(value["bytes"]))
        img.load()
        t2 = time.perf_counter()
        rgb = img.convert("RGB")
        t3 = time.perf_counter()
        transform(rgb)
        t4 = time.perf_counter()
        draft = Image.open(io.BytesIO(value["bytes"]))
        draft.draft("RGB", (224, 224))  # PIL picks the largest 1/2^k scale still >= 224 on each side
        draft.load()
        t5 = time.perf_counter()
        for name, dt in zip(steps, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            steps[name].append(dt * 1e3)
    return {k: round(statistics.median(v), 3) for k, v in steps.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batches", type=int, default=48, help="timed batches (of --batch-size) per measurement; "
                   "48 x 32 rows span more than one 1000-row shuffle block, so the streamed figure pays its reads")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--size", default="500x375", help="WxH of the written JPEGs")
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--dir", type=Path, help="write (or reuse) the shards here instead of a temporary folder")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    need = (args.batches + 1) * args.batch_size
    if need > args.images:
        p.error(f"--images {args.images} is fewer than the {need} that {args.batches} + 1 batches of "
                f"{args.batch_size} read")
    size = tuple(int(v) for v in args.size.split("x"))
    torch.set_num_threads(1)  # loader workers run one thread each, as in training
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or Path(tmp) / "shards"
        if not (folder / "data").is_dir():
            write_shards(folder, args.images, size, args.shards)
        tars = folder / "wds" if (folder / "wds").is_dir() else write_tars(folder)
        model, cfg = training_cfg()
        results = {"images": args.images, "size": args.size, "batch_size": args.batch_size, "rates": {}}
        for workers in args.workers:
            loaders = {"ours": lambda: our_loader(folder, model, args.batch_size, workers),
                       "ours --streaming": lambda: streaming_loader(str(folder), model, args.batch_size, workers),
                       "ours wds:": lambda: streaming_loader(f"wds:{tars}", model, args.batch_size, workers),
                       "timm": lambda: timm_loader(folder, cfg, args.batch_size, workers)}
            rates = {k: [] for k in loaders}
            for _ in range(args.repeats):
                for name, make in loaders.items():
                    rates[name].append(images_per_s(make(), args.batches))
            row = {k: statistics.median(v) for k, v in rates.items()}
            results["rates"][workers] = row
            print(f"{workers} worker(s): " + ", ".join(
                f"{k} {v:.1f} img/s ({v / workers:.1f} per worker, {v / row['timm']:.3f}x timm)" for k, v in row.items()),
                flush=True)
        results["profile_ms"] = profile_one_image(folder, model)
        print("one image, ms (median of 64):", results["profile_ms"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
