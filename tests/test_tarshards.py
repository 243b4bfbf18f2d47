"""Webdataset tar shards (`wds:` data sets, issue 27): the ways of naming a split, and CIFAR-10
rows written as tar shards streaming exactly as the same rows in parquet shards of one row group
per shard (same order, same augmentation, the same trained weights, the same evaluation)."""
from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest
import torch

from helpers import write_parquet_shards, write_tar_shards
from test_streaming import STREAM_RUN
from test_train import CIFAR, ROOT, _env, load_weights, needs_cifar, run_train

pytestmark = needs_cifar
ROWS = 300  # 3 shards of 100 rows (one parquet row group each)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("wds")
    tars = write_tar_shards(root / "tars", CIFAR, train=ROWS, test=64, shards=3, info=True)
    parquet = write_parquet_shards(root / "parquet", CIFAR, train=ROWS, test=64, shards=3, row_group=100)
    return tars, parquet


def test_braces_expand_as_webdataset_does():
    from timm_bcos.data import DataError
    from timm_bcos.data.tarshards import expand_braces

    assert expand_braces("a-{008..011}.tar") == ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]
    assert expand_braces("{x,y}-{0..1}") == ["x-0", "x-1", "y-0", "y-1"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"] and expand_braces("{1..03}") == ["01", "02", "03"]
    with pytest.raises(DataError, match="expected a range"):
        expand_braces("{a..b}.tar")
    with pytest.raises(DataError, match="empty range"):
        expand_braces("{5..3}.tar")


def test_every_way_of_naming_a_split_finds_its_shards(data, tmp_path):
    from timm_bcos.data import DataError
    from timm_bcos.data.tarshards import resolve_split

    tars, _ = data
    train = tuple(str(tars / f"train-{i:04d}.tar") for i in range(3))
    by_info = resolve_split(f"wds:{tars}", "train")  # timm's _info.json
    assert by_info.files == train and by_info.lengths == (100, 100, 100)
    relative = resolve_split(f"wds:{tars}", "train-{0000..0002}.tar")  # timm's --train-split pattern
    assert relative.files == train and relative.lengths == (100, 100, 100)
    assert resolve_split(f"wds:{tars}", "train-{0000..0002}.tar|300").files == train  # timm's |count suffix
    pattern = resolve_split(f"wds:{tars}/{{split}}-{{0000..0002}}.tar", "train")
    assert pattern.files == train and pattern.lengths is None  # counted from the shards when opened
    bare = tmp_path / "bare"
    shutil.copytree(tars, bare, ignore=shutil.ignore_patterns("_info.json"))
    assert resolve_split(f"wds:{bare}", "test").files == (str(bare / "test-0000.tar"),)
    for other in ("test_small-0000.tar", "latest-0000.tar", "test-extra-0000.tar"):  # other splits' shards
        shutil.copy(bare / "test-0000.tar", bare / other)
    shutil.copy(bare / "test-0000.tar", bare / "test.extra-0000.tar")  # only the extension is cut
    assert resolve_split(f"wds:{bare}", "test").files == (str(bare / "test-0000.tar"),)
    hf = tmp_path / "hf"  # HF's shard naming, behind a prefix with a dot
    hf.mkdir()
    for i in range(2):
        shutil.copy(bare / "test-0000.tar", hf / f"my.cifar_test-0000{i}-of-00002.tar")
    assert resolve_split(f"wds:{hf}", "test").files == tuple(str(hf / f"my.cifar_test-0000{i}-of-00002.tar") for i in range(2))
    shutil.copy(bare / "test-0000.tar", hf / "test-0000.tar")  # a second set of shards for the split
    with pytest.raises(DataError, match=r"2 sets of shards .* \(my.cifar_test-00000-of-00002.tar, test-0000.tar\)"):
        resolve_split(f"wds:{hf}", "test")
    (hf / "test-0000.tar").unlink()
    shutil.copy(bare / "test-0000.tar", hf / "my_cifar_test-00000-of-00002.tar")  # another separator: another set
    with pytest.raises(DataError, match=r"2 sets of shards"):
        resolve_split(f"wds:{hf}", "test")
    (hf / "my_cifar_test-00000-of-00002.tar").unlink()
    (hf / "my.cifar_test-00001-of-00002.tar").rename(hf / "my.cifar_test-00000-of-00002.tar.gz")
    with pytest.raises(DataError, match=r"shard 'my.cifar_test-00000-of-00002' of split 'test' is there twice"):
        resolve_split(f"wds:{hf}", "test")
    (hf / "my.cifar_test-00000-of-00002.tar.gz").unlink()
    with pytest.raises(DataError, match=r"has shards 0, but their names say -of-00002"):
        resolve_split(f"wds:{hf}", "test")
    numbered = tmp_path / "numbered"  # ordered by shard number; one unnumbered file is a set of its own
    numbered.mkdir()
    for i in (2, 10):
        shutil.copy(bare / "test-0000.tar", numbered / f"test-{i}.tar")
    assert resolve_split(f"wds:{numbered}", "test").files == (str(numbered / "test-2.tar"), str(numbered / "test-10.tar"))
    shutil.copy(bare / "test-0000.tar", numbered / "test.tar")
    with pytest.raises(DataError, match=r"2 sets of shards"):
        resolve_split(f"wds:{numbered}", "test")
    with pytest.raises(DataError, match=r"no split 'validation'; its info file lists \['test', 'train'\]"):
        resolve_split(f"wds:{tars}", "validation")
    with pytest.raises(DataError, match="no .tar shard named for split 'validation'"):
        resolve_split(f"wds:{bare}", "validation")
    with pytest.raises(DataError, match="1 of 4 shards missing, first .*train-0003.tar"):
        resolve_split(f"wds:{tars}/{{split}}-{{0000..0003}}.tar", "train")
    with pytest.raises(DataError, match="no folder"):
        resolve_split(f"wds:{tmp_path / 'nowhere'}", "train")
    gz = tmp_path / "gz"
    gz.mkdir()
    shutil.copy(tars / "test-0000.tar", gz / "test-0000.tar.gz")  # found by name; tarfile reads either
    assert resolve_split(f"wds:{gz}", "test").files == (str(gz / "test-0000.tar.gz"),)
    (gz / "_info.json").write_text(json.dumps({"splits": {"test": {"num_samples": 0}}}))
    with pytest.raises(DataError, match="split 'test' lists no 'filenames'"):
        resolve_split(f"wds:{gz}", "test")


def test_tar_shards_behind_an_fsspec_url_use_the_info_file(data, monkeypatch):
    """A remote folder (hf://, s3://; here fsspec's in-memory one) takes the shard lengths from its
    info file, reads no shard to open the split, and gives the local rows."""
    import fsspec

    from timm_bcos.data import streaming
    from timm_bcos.data.streaming import ShardRows, open_wds_split

    tars, _ = data
    memory = fsspec.filesystem("memory")
    for path in tars.iterdir():
        memory.pipe(f"memory://wds/{path.name}", path.read_bytes())
    monkeypatch.setattr(streaming, "shard_labels", lambda *a: pytest.fail("a shard was read to open the split"))
    remote = open_wds_split("wds:memory://wds", "train[30:280]", num_classes=10)
    local = open_wds_split(f"wds:{tars}", "train[30:280]", num_classes=10)
    assert remote.row_groups[0].file.startswith("memory://") and remote.row_groups[0].file.endswith("/wds/train-0000.tar")
    assert [(g.offset, g.rows) for g in remote.row_groups] == [(g.offset, g.rows) for g in local.row_groups]
    assert ShardRows(remote)[[0, 120, 249]] == ShardRows(local)[[0, 120, 249]]
    monkeypatch.undo()  # a pattern without an info file is counted from its shards
    for chained in ("wds:simplecache::memory://wds", "wds:simplecache::memory://wds/{split}-{0000..0002}.tar"):
        cached = open_wds_split(chained, "train[30:280]", num_classes=10)  # fsspec's chained URL, kept whole
        assert all(g.file.startswith("simplecache::memory://") for g in cached.row_groups)
        assert ShardRows(cached)[[0, 120, 249]] == ShardRows(local)[[0, 120, 249]]


def test_a_shard_whose_count_differs_from_its_info_file_is_refused_when_read(data, tmp_path):
    """An out-of-date `shard_lengths` would shift every later row's index (and its augmentation
    seed) or drop samples; reading the shard names it instead, whether it holds fewer or more."""
    from timm_bcos.data import DataError
    from timm_bcos.data.streaming import ShardRows, open_wds_split

    tars, _ = data
    for stated in (99, 101):
        copy = tmp_path / f"stated{stated}"
        shutil.copytree(tars, copy)
        info = json.loads((copy / "_info.json").read_text())
        info["splits"]["train"]["shard_lengths"][1] = stated
        (copy / "_info.json").write_text(json.dumps(info))
        rows = ShardRows(open_wds_split(f"wds:{copy}", "train", num_classes=10))
        assert len(rows) == 200 + stated and rows[[0, 99]] == ShardRows(open_wds_split(f"wds:{tars}", "train"))[[0, 99]]
        with pytest.raises(DataError, match=rf"train-0001\.tar: 100 samples, but the split was opened with {stated}"):
            rows[[100]]


def test_tar_shards_stream_as_the_same_rows_in_parquet(data):
    from timm_bcos.data import PadCropFlip
    from timm_bcos.data.streaming import ShardStream, open_parquet_split, open_wds_split

    tars, parquet = data
    for split in ("train", "train[30:280]"):
        tar, pq = open_wds_split(f"wds:{tars}", split), open_parquet_split(str(parquet), split)
        assert tar.num_rows == pq.num_rows and tar.info.num_classes == pq.info.num_classes == 10
        streams = [ShardStream(s, PadCropFlip((32, 32)), batch_size=8, buffer=150, seed=3) for s in (tar, pq)]
        for s in streams:
            s.set_epoch(1)
        batches = [list(torch.utils.data.DataLoader(s, batch_size=None, num_workers=2)) for s in streams]
        assert len(batches[0]) == len(batches[1]) == tar.num_rows // 8
        for a, b in zip(*batches):
            assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])
    # with no info file the lengths and classes come from reading the shards: the same split
    scanned = open_wds_split(f"wds:{tars}/{{split}}-{{0000..0002}}.tar", "train[30:280]")
    assert scanned.row_groups == tar.row_groups and scanned.info == tar.info
    # classes counted over the slice's labels (rows 0-4: 5, 1, 2, 5, 1), as parquet without names counts
    assert open_wds_split(f"wds:{tars}/{{split}}-{{0000..0002}}.tar", "train[:5]").info.num_classes == 6


def test_shard_rows_read_tar_samples_like_the_arrow_data_set(data):
    from timm_bcos.data import load_split
    from timm_bcos.data.streaming import ShardRows, open_wds_split

    tars, parquet = data
    rows = ShardRows(open_wds_split(f"wds:{tars}", "train[40:290]"))
    hf, _ = load_split(str(parquet), "train[40:290]")
    picks = [0, 1, 249, 60, 61, 10, 200, 1]  # within and across shards, out of order
    got, want = rows[picks], hf[picks]
    assert [v["bytes"] for v in got["image"]] == [v["bytes"] for v in want["image"]]
    assert got["label"] == want["label"]


def _tar(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def test_samples_are_grouped_by_key_and_bad_ones_named(tmp_path):
    from timm_bcos.data import DataError
    from timm_bcos.data.tarshards import TarFields, iter_samples, shard_labels

    good = _tar(tmp_path / "good.tar", {"a/1.jpg": b"J1", "a/1.cls": b"3\n", "__meta__.json": b"{}",
                                        "a/2.png": b"P2", "a/2.jpg": b"J2", "a/2.cls": b"0", "a/3.txt": b"x"})
    fields = TarFields()
    samples = list(iter_samples(good, fields))  # the stray members hold no image: not samples
    assert [(k, v["bytes"], y) for k, v, y in samples] == [("a/1", b"J1", 3), ("a/2", b"J2", 0)]
    assert shard_labels(good, fields) == [3, 0]
    assert [v["bytes"] for _, v, _ in iter_samples(good, TarFields.of("png", None))] == [b"P2"]
    no_label = _tar(tmp_path / "no_label.tar", {"k.jpg": b"J"})
    with pytest.raises(DataError, match=r"no_label.tar: sample 'k' has no label member \(.cls"):
        shard_labels(no_label, fields)
    bad_label = _tar(tmp_path / "bad_label.tar", {"k.jpg": b"J", "k.cls": b"cat"})
    with pytest.raises(DataError, match="sample 'k' has label b'cat', expected an integer"):
        shard_labels(bad_label, fields)


def test_a_shard_scan_is_kept_and_redone_when_the_shard_changes(tmp_path, monkeypatch):
    """The other processes of a run, and later runs, read the main process's scan, not the shard."""
    import os

    from timm_bcos.data import tarshards

    monkeypatch.setenv("TIMM_BCOS_CACHE", str(tmp_path / "cache"))
    shard = _tar(tmp_path / "s.tar", {"a.jpg": b"J", "a.cls": b"1", "b.jpg": b"J", "b.cls": b"2"})
    assert tarshards.shard_labels(shard, tarshards.TarFields()) == [1, 2]
    reads = []
    real = tarshards.iter_samples
    monkeypatch.setattr(tarshards, "iter_samples", lambda *a, **k: reads.append(a[0]) or real(*a, **k))
    assert tarshards.shard_labels(shard, tarshards.TarFields()) == [1, 2] and reads == []
    assert tarshards.shard_labels(shard, tarshards.TarFields.of("jpg", None)) == [1, 2] and reads == [shard]
    _tar(tmp_path / "s.tar", {"a.jpg": b"J", "a.cls": b"1", "b.jpg": b"J", "b.cls": b"2", "c.jpg": b"J", "c.cls": b"0"})
    os.utime(shard, (1e9, 1e9))  # rewritten: another modification time
    assert tarshards.shard_labels(shard, tarshards.TarFields()) == [1, 2, 0]


def test_train_on_tar_shards_gives_the_parquet_run_s_weights(data, tmp_path):
    """The same rows in the same order with the same augmentation: bitwise the same training
    (float64, one process, 2 workers). A wds: data set streams without --streaming; --pin-mem is
    ignored without a CUDA device."""
    tars, parquet = data
    runs = {}
    for name, source, flags in (("wds", f"wds:{tars}", ["--pin-mem"]), ("parquet", str(parquet), ["--streaming"])):
        args = [a for a in STREAM_RUN if a != "--streaming"] + flags
        proc = run_train(tmp_path, *args, "--shuffle-buffer", "150", "--workers", "2", "--dataset", source,
                         "--output", str(tmp_path / name), timeout=400)
        assert f"{ROWS} train (streamed) / 64 val images" in proc.stdout, proc.stdout[-2000:]
        runs[name] = load_weights(tmp_path / name / "export" / "model.safetensors")
    assert runs["wds"].keys() == runs["parquet"].keys()
    assert all(torch.equal(runs["wds"][k], runs["parquet"][k]) for k in runs["wds"])
    same = run_train(tmp_path, *STREAM_RUN, "--dataset", f"wds:{tars}/train-{{0000..0002}}.tar",
                     "--output", str(tmp_path / "same"), check=False, timeout=400)
    assert same.returncode != 0 and "--val-split 'test' reads shards of --train-split 'train'" in same.stdout + same.stderr


def test_evaluate_on_tar_shards_gives_the_map_style_results(data, tmp_path):
    tars, parquet = data
    results = {}
    for name, source in (("map", str(parquet)), ("wds", f"wds:{tars}")):
        out = tmp_path / name
        cmd = [sys.executable, str(ROOT / "train_scripts" / "evaluate.py"), "--models", "bcos_cifar10_w050_bnu",
               "--pretrained", "--dataset", source, "--split", "train[:160]", "--grid", "2", "--num-grids", "2",
               "--methods", "own", "--examples", "2", "--workers", "2", "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results[name] = json.loads((out / "results.json").read_text())
    assert results["map"]["accuracy"]["bcos_cifar10_w050_bnu"]["n"] == 160
    for key in ("accuracy", "pointing_game"):
        assert results["map"][key] == results["wds"][key], key
