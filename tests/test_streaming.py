"""timm_bcos.data.streaming and train.py --streaming (issue 27): CIFAR-10 rows written as several parquet
shards with small row groups; each row once per epoch over processes and workers, the map-style
data set's augmentation for the same row, slicing, exact resume (1 and 2 processes, float64)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from helpers import write_parquet_shards
from test_train import CIFAR, TINY, _launch_two, load_weights, needs_cifar, run_train

pytestmark = needs_cifar
ROWS = 300  # 3 shards of 100 rows, row groups of 25


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_parquet_shards(tmp_path_factory.mktemp("shards"), CIFAR, train=ROWS, test=64, shards=3,
                                row_group=25)


def _stream(folder, split="train", *, batch=8, world=1, rank=0, seed=0, buffer=60, transform=None):
    from timm_bcos.data import PadCropFlip
    from timm_bcos.data.streaming import ShardStream, open_parquet_split

    parquet = open_parquet_split(str(folder), split)
    return ShardStream(parquet, transform or PadCropFlip((32, 32)), batch_size=batch, rank=rank, world=world,
                       seed=seed, buffer=buffer)


def _indices(stream) -> list[int]:
    """The split rows this process's epoch uses, in order (one worker)."""
    return [i for i, _, _ in stream.rows(stream.rank * stream.share, stream.rank * stream.share
                                         + len(stream) * stream.batch_size)]


def test_an_epoch_uses_each_row_once_over_the_processes(shards):
    for world in (1, 2, 3):
        streams = [_stream(shards, world=world, rank=r) for r in range(world)]
        rows = [_indices(s) for s in streams]
        seen = [i for r in rows for i in r]
        assert len(seen) == len(set(seen)), f"a row twice with {world} processes"
        assert set(seen) <= set(range(ROWS))
        # each process drops less than one batch: ROWS // world rows, whole batches of 8
        assert all(len(r) == (ROWS // world) // 8 * 8 for r in rows), [len(r) for r in rows]
    one = _stream(shards)
    first = _indices(one)
    assert first == _indices(_stream(shards)), "the order must depend on (seed, epoch) only"
    one.set_epoch(1)
    assert _indices(one) != first, "a new epoch must be a new order"
    assert _indices(_stream(shards, seed=1)) != first
    # row groups are shuffled and pooled: the first 25 rows do not come from one row group in order
    assert first[:25] != sorted(first[:25])


def test_workers_take_turns_over_the_same_batches_and_a_resume_continues_them(shards):
    from timm_bcos.data.streaming import worker_run

    stream = _stream(shards, buffer=40)
    stream.set_epoch(2)
    plain = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=0))
    assert len(plain) == len(stream) == ROWS // 8
    two = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
    # the same batches; loader batch i is the (i // 2)-th of worker i % 2's run of the stream
    runs = [range(*(lambda s, n: (s, s + n))(*worker_run(len(plain), 2, w, 0))) for w in (0, 1)]
    order = [runs[i % 2][i // 2] for i in range(len(plain))]
    assert sorted(order) == list(range(len(plain)))
    assert all(torch.equal(plain[j]["images"], b["images"]) and torch.equal(plain[j]["labels"], b["labels"])
               for j, b in zip(order, two))
    for taken in (5, 6):  # the resumed loader's first turn falls on either worker's batch
        stream.set_position(taken)
        rest = list(torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2))
        assert len(rest) == len(plain) - taken
        assert all(torch.equal(a["images"], b["images"]) for a, b in zip(two[taken:], rest)), taken


@pytest.mark.parametrize("split", ["train", "train[30:280]"])
def test_a_row_gets_the_map_style_augmentation(shards, split):
    from timm_bcos.data import ImageClassificationDataset, PadCropFlip, load_split

    stream = _stream(shards, split, buffer=1, seed=7)
    stream.set_epoch(3)
    batch = next(iter(stream))
    rows = _indices(stream)[:8]
    hf, info = load_split(str(shards), split)
    mapped = ImageClassificationDataset(hf, info, PadCropFlip((32, 32)), seed=7)
    mapped.set_epoch(3)
    expected = torch.stack([mapped[i][0] for i in rows])
    assert torch.equal(batch["images"], expected)
    assert batch["labels"].tolist() == [mapped[i][1] for i in rows]


def test_slices_and_bad_splits(shards, tmp_path):
    from timm_bcos.data import DataError
    from timm_bcos.data.streaming import open_parquet_split

    assert open_parquet_split(str(shards), "train[10:260]").num_rows == 250
    assert open_parquet_split(str(shards), "train[:50%]").num_rows == 150
    assert open_parquet_split(str(shards), "train[-20:]", max_samples=7).num_rows == 7
    # a slice's rows are indexed from 0, as load_dataset(split="train[30:80]") indexes them
    rows = {g.first + g.offset for g in open_parquet_split(str(shards), "train[30:80]").row_groups}
    assert min(rows) == 0
    assert {i for i, _, _ in _stream(shards, "train[30:80]").rows(0, 48)} <= set(range(50))
    with pytest.raises(DataError, match="one split with one slice"):
        open_parquet_split(str(shards), "train+test")
    with pytest.raises(DataError, match="no split 'validation'; its splits are"):
        open_parquet_split(str(shards), "validation")
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(DataError, match="reads parquet shards"):
        open_parquet_split(str(tmp_path / "images"), "train")


STREAM_RUN = [*TINY, "--model-kwargs", '{"width": 0.125, "max_out": 1, "drop_rate": 0.3}', "--train-split", "train",
              "--val-split", "test", "--batch-size", "16", "--epochs", "2", "--export", "last", "--dtype", "float64",
              "--opt", "sgd", "--momentum", "0.9", "--checkpoint-every", "1", "--keep-checkpoints", "100",
              "--streaming", "--shuffle-buffer", "50"]


def _resume_from(tmp_path, data: Path, full: Path, step: int, *extra: str, launcher=None) -> Path:
    """A copy of `full` as if killed right after checkpoint `step`, resumed to the end."""
    cut = tmp_path / "cut"
    shutil.copytree(full, cut, ignore=shutil.ignore_patterns("export", "best.safetensors"))
    for later in (cut / "checkpoints").glob("step_*"):
        if int(later.name.split("_")[-1]) > step:
            shutil.rmtree(later)
    proc = run_train(tmp_path, *STREAM_RUN, *extra, "--dataset", str(data), "--output", str(cut),
                     "--resume", "latest", launcher=launcher, timeout=400)
    assert "resumed from" in proc.stdout, proc.stdout[-2000:]
    return cut


def test_train_streaming_resumes_exactly(shards, tmp_path):
    """Two processes with two loader workers each, resumed mid-epoch: the same weights as the uninterrupted
    run. (One process is the same code with world 1: a worker restarted at the wrong batch gives a gap of
    order 1 here as it would there.)"""
    processes = 2
    launcher = _launch_two()
    extra = ["--cpu", "--workers", "2"]
    full = tmp_path / "full"
    proc = run_train(tmp_path, *STREAM_RUN, *extra, "--dataset", str(shards), "--output", str(full),
                     launcher=launcher, timeout=400)
    assert f"{ROWS} train (streamed)" in proc.stdout and f"{processes} process(es)" in proc.stdout
    per_epoch = ROWS // 16  # 18 updates (2 x 8 images each)
    meta = json.loads((full / "checkpoints" / "step_000000023" / "train_meta.json").read_text())
    assert meta["epoch"] == 1 and meta["batches_in_epoch"] == 23 - per_epoch
    # killed mid-epoch 2 after 5 batches (the resumed loader's first turn falls on worker 1's batch)
    cut = _resume_from(tmp_path, shards, full, 23, *extra, launcher=launcher)
    a, b = load_weights(full / "export" / "model.safetensors"), load_weights(cut / "export" / "model.safetensors")
    assert a.keys() == b.keys()
    # float64, the same batches in the same order: equal up to the summation order of the two
    # processes' gradients; 1e-9 of the distance moved since step 1
    first = load_weights(full / "checkpoints" / "step_000000001" / "model.safetensors")
    moved = torch.cat([(a[k] - first[k]).flatten() for k in a if a[k].is_floating_point()]).norm()
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a if a[k].is_floating_point()]).norm()
    assert moved > 1e-3 and apart <= 1e-9 * moved, (float(apart), float(moved))
    # another worker count or process count gives another order: refused, not silently different; so is
    # a map-style resume
    other = run_train(tmp_path, *STREAM_RUN, "--dataset", str(shards), "--output", str(cut), "--resume", "latest",
                      check=False)
    assert other.returncode != 0 and "streaming" in other.stdout + other.stderr
    plain = [a for a in STREAM_RUN if a not in ("--streaming", "--shuffle-buffer", "50")]
    mapped = run_train(tmp_path, *plain, "--dataset", str(shards), "--output", str(cut), "--resume", "latest",
                       check=False)
    assert mapped.returncode != 0 and "streaming" in mapped.stdout + mapped.stderr


def test_parquet_rows_read_like_the_arrow_data_set(shards):
    from timm_bcos.data import load_split
    from timm_bcos.data.streaming import ShardRows, open_parquet_split

    rows = ShardRows(open_parquet_split(str(shards), "train[40:290]"))
    hf, info = load_split(str(shards), "train[40:290]")
    picks = [0, 1, 249, 60, 61, 10, 200, 1]  # within and across row groups and shards, out of order
    assert rows[picks] == hf[picks]
    with pytest.raises(IndexError, match="row 250 of a split of 250 rows"):
        rows[[250]]


def test_evaluate_streaming_gives_the_map_style_results(shards, tmp_path):
    import subprocess
    import sys

    from test_train import ROOT, _env

    results = {}
    for mode in ("map", "streaming"):
        out = tmp_path / mode
        cmd = [sys.executable, str(ROOT / "train_scripts" / "evaluate.py"), "--models", "bcos_cifar10_w050_bnu",
               "--pretrained", "--dataset", str(shards), "--split", "train[:160]", "--grid", "2", "--num-grids", "2",
               "--methods", "own", "--examples", "2", "--workers", "2", "--out", str(out)]
        proc = subprocess.run(cmd + (["--streaming"] if mode == "streaming" else []), capture_output=True, text=True,
                              env=_env(tmp_path), cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[mode] = json.loads((out / "results.json").read_text())
    assert results["map"]["accuracy"]["bcos_cifar10_w050_bnu"]["n"] == 160
    for key in ("accuracy", "pointing_game"):
        assert results["map"][key] == results["streaming"][key], key


def test_shards_behind_an_fsspec_url_stream_like_local_files(shards, monkeypatch):
    """A Hub id resolves to hf:// URLs read through fsspec: the same path, checked here offline on
    fsspec's in-memory file system."""
    import fsspec

    from timm_bcos.data import streaming

    memory = fsspec.filesystem("memory")
    local = sorted(str(p) for p in (shards / "data").glob("train-*.parquet"))
    urls = []
    for path in local:
        url = f"memory://hub/{Path(path).name}"
        memory.pipe(url, Path(path).read_bytes())
        urls.append(url)
    monkeypatch.setattr(streaming, "split_files", lambda source, split: (urls, None))
    remote = streaming.open_parquet_split("someone/cifar10-shards", "train")
    assert {g.file for g in remote.row_groups} == set(urls)
    stream = streaming.ShardStream(remote, lambda img: torch.zeros(1), batch_size=8, buffer=60)
    assert [i for i, _, _ in stream.rows(0, 64)] == _indices(_stream(shards))[:64]


def test_labels_without_class_names_are_counted_like_the_map_style_path(shards, tmp_path):
    """Plain parquet (no Hugging Face schema metadata: the image a {bytes, path} struct, the label
    an int): the classes are counted from the label column, as load_split counts them."""
    import pyarrow.parquet as pq

    from timm_bcos.data import load_split
    from timm_bcos.data.streaming import ShardRows, open_parquet_split

    (tmp_path / "data").mkdir()
    for path in sorted((shards / "data").glob("*.parquet")):
        table = pq.read_table(path).replace_schema_metadata(None)
        pq.write_table(table, tmp_path / "data" / path.name, row_group_size=25)
    streamed = open_parquet_split(str(tmp_path), "train[:120]")
    hf, info = load_split(str(tmp_path), "train[:120]")
    assert streamed.info.label_names is None and info.label_names is None
    assert streamed.info.num_classes == info.num_classes == max(hf["label"]) + 1
    assert ShardRows(streamed)[[5, 100]] == hf[[5, 100]]
