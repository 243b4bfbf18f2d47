"""The concept atlas (timm_bcos.atlas, `python -m timm_bcos atlas`): the streamed top-k against brute
force, flat memory, crops that are the neuron's receptive field, the page in a real browser, clear errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import timm_bcos  # noqa: F401
from timm_bcos.__main__ import main
from timm_bcos.atlas import ChannelTopK, scan_layer

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
SHIPPED = "bcos_cifar10_w050_bnu.cpu30e_cifar10"
needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not here")


def brute_top(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, image indices) of each channel's k highest scores over all images [N, C] at once."""
    top = scores.T.topk(min(k, scores.shape[0]), dim=1)
    return top.values, top.indices


@pytest.mark.parametrize("batch", [1, 3, 17, 200])
def test_streamed_topk_equals_brute_force(batch):
    g = torch.Generator().manual_seed(batch)
    n, c, k = 150, 11, 7
    scores, positions = torch.randn(n, c, generator=g), torch.randint(0, 9, (n, c, 2), generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    tracker = ChannelTopK(c, k, ("label",))
    for s in range(0, n, batch):
        idx = torch.arange(s, min(s + batch, n))
        tracker.update(scores[idx], idx + 1000, positions[idx], label=labels[idx])
    values, images = brute_top(scores, k)
    assert torch.equal(tracker.values, values)
    assert torch.equal(tracker.index, images + 1000)
    assert torch.equal(tracker.columns["label"], labels[images])
    assert torch.equal(tracker.positions, positions[images, torch.arange(c)[:, None]])
    assert tracker.seen == n


def test_fewer_images_than_k_keeps_them_all():
    tracker = ChannelTopK(4, 7)
    tracker.update(torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1]]), torch.tensor([5, 6]))
    assert tracker.index.shape == (4, 2) and tracker.index[:, 0].tolist() == [6, 6, 5, 5]


@needs_cifar
def test_scan_of_a_real_layer_equals_brute_force():
    """The shipped model's features.4.0 (64 channels at 16x16) over 96 CIFAR-10 test images in batches of 32:
    the same top-5 images, values and argmax positions as over all activations kept at once."""
    from timm_bcos.data.datasets import IndexedSamples, collate_indexed, load_eval_dataset

    model = timm.create_model(SHIPPED, pretrained=True).eval()
    data, _ = load_eval_dataset(str(CIFAR), "test", max_samples=96)
    loader = torch.utils.data.DataLoader(IndexedSamples(data), batch_size=32, collate_fn=collate_indexed)
    zero, one = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
    tracker = scan_layer(model, "features.4.0", loader, 5, mean=zero, std=one)
    kept = []
    hook = model.features[4][0].register_forward_hook(lambda m, i, o: kept.append(o))
    with torch.no_grad():
        for batch in loader:
            model(batch["images"])
    hook.remove()
    maps = torch.cat(kept)  # [96, 64, 16, 16]
    per_image, where = maps.flatten(2).max(-1)
    values, images = brute_top(per_image, 5)
    assert torch.equal(tracker.values, values) and torch.equal(tracker.index, images)
    flat = where[images, torch.arange(64)[:, None]]
    assert torch.equal(tracker.positions, torch.stack([flat // 16, flat % 16], -1))
    assert torch.equal(tracker.columns["label"], torch.tensor([data[i][1] for i in range(96)])[images])


MEMORY_PROBE = """
import resource, sys, torch
from timm_bcos.atlas import scan_layer
n, k = int(sys.argv[1]), int(sys.argv[2])
model = torch.nn.Sequential(torch.nn.Conv2d(3, 1024, 4, stride=4)).eval()
def batches():
    g = torch.Generator().manual_seed(0)
    for s in range(0, n, 500):
        yield {"images": torch.rand(500, 3, 16, 16, generator=g), "labels": torch.full((500,), -1),
               "indices": torch.arange(s, s + 500)}
scan_layer(model, "0", batches(), k, mean=torch.zeros(1, 3, 1, 1), std=torch.ones(1, 3, 1, 1))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_kib(images: int, k: int = 7) -> int:
    # large blocks straight from mmap and back on free: the peak follows what is live, not glibc's caching
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(images), str(k)], capture_output=True, text=True,
                         check=True, timeout=300, env=env)
    return int(out.stdout.split()[-1])


def test_peak_memory_does_not_grow_with_the_data_set():
    """1,000 against 10,000 images through a 1024-channel layer: keeping every image's per-channel maximum
    and position would add ~180 MB (9,000 x 1024 x 20 bytes); the running top-k adds nothing."""
    small, large = _peak_kib(1_000), _peak_kib(10_000)
    assert large - small < 40 * 1024, f"peak RSS grew by {(large - small) / 1024:.0f} MiB for 10x the images"


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    if not CIFAR.is_dir():
        pytest.skip("../shared/datasets/cifar10 is not here")
    out = tmp_path_factory.mktemp("atlas") / "features_4"
    assert main(["atlas", "--model", SHIPPED, "--pretrained", "--layer", "features.4.0", "--dataset", str(CIFAR),
                 "--split", "test[:200]", "--neurons", "0-5", "40", "--top", "4", "--mix", "10", "-j", "0",
                 "--out", str(out)]) == 0
    return out, json.loads((out / "index.json").read_text())


def test_the_atlas_index(atlas):
    out, index = atlas
    assert index["images_scanned"] == 200 and index["channels"] == 64 and index["layer"] == "features.4.0"
    assert sorted(n["channel"] for n in index["neurons"]) == [0, 1, 2, 3, 4, 5, 40]
    spec = [n["specificity"] for n in index["neurons"]]
    assert spec == sorted(spec, reverse=True)  # most class-specific first
    for n in index["neurons"]:
        assert n["mix_of"] == 10 and sum(n["mix"].values()) == 10 and sum(n["label_mix"].values()) == 10
        assert len(n["examples"]) == 4 and (out / n["strip"]).is_file()
        acts = [e["activation"] for e in n["examples"]]
        assert acts == sorted(acts, reverse=True) and acts[0] == n["max_activation"]
        for e in n["examples"]:
            # the explanation decomposes exactly the activation that ranked the image
            assert e["explained"] == pytest.approx(e["activation"], rel=1e-4, abs=1e-5)
            for key in ("crop", "explanation", "image"):
                assert (out / e[key]).is_file()


@pytest.mark.parametrize("source", ["streaming", "wds"])
def test_a_streamed_split_gives_the_same_atlas(atlas, tmp_path, source):
    """The same 200 test images read from parquet shards on demand, or from webdataset tar shards."""
    from helpers import write_tar_shards

    out, index = atlas
    streamed = tmp_path / "streamed"
    data = (["--dataset", str(CIFAR), "--split", "test[:200]", "--streaming"] if source == "streaming" else
            ["--dataset", f"wds:{write_tar_shards(tmp_path / 'wds', CIFAR, train=8, test=200, shards=1)}",
             "--split", "test"])
    assert main(["atlas", "--model", SHIPPED, "--pretrained", "--layer", "features.4.0", *data,
                 "--neurons", "0-5", "40", "--top", "4", "--mix", "10", "-j", "0", "--out", str(streamed)]) == 0
    other = json.loads((streamed / "index.json").read_text())

    def kept(ix):
        return [(n["channel"], n["mix"], [(e["index"], e["position"], e["box"]) for e in n["examples"]])
                for n in ix["neurons"]]
    assert kept(other) == kept(index)


def test_the_recorded_command_rebuilds_the_same_config(atlas):
    import argparse
    import shlex

    from timm_bcos.atlas import AtlasConfig
    from timm_bcos.atlas.cli import add_atlas_parser
    from timm_bcos.utils.options import option_names

    _, index = atlas
    parser = argparse.ArgumentParser()
    add_atlas_parser(parser.add_subparsers())
    args = vars(parser.parse_args(shlex.split(index["command"])[3:]))  # after "python -m timm_bcos"
    config = AtlasConfig(**{k: v for k, v in args.items() if k in option_names(AtlasConfig)})
    assert (config.layer, config.split, config.neurons, config.top, config.mix, config.workers) == \
        ("features.4.0", "test[:200]", ["0-5", "40"], 4, 10, 0)


def test_crops_are_the_receptive_field(atlas):
    """features.4.0 follows five 3x3 convolutions, one of stride 2: a 15x15 receptive field around
    (2r, 2c) of its 16x16 map, clipped at the border. The crops are exactly that box."""
    out, index = atlas
    for n in index["neurons"]:
        for e in n["examples"]:
            r, c = e["position"]
            top, left, bottom, right = e["box"]
            assert (top, left) == (max(0, 2 * r - 7), max(0, 2 * c - 7)), e
            assert (bottom, right) == (min(32, 2 * r + 8), min(32, 2 * c + 8)), e
            with Image.open(out / e["crop"]) as img:
                assert img.size[0] / img.size[1] == pytest.approx((right - left) / (bottom - top), rel=0.05)


def test_the_page_in_a_real_browser(atlas):
    """Debian's chromium opens index.html from disk: no page or console errors, no request outside the
    folder, and every image shows."""
    from test_app_browser import _launch_chromium
    from playwright.sync_api import sync_playwright

    out, index = atlas
    errors, requests = [], []
    with sync_playwright() as p:
        browser = _launch_chromium(p)
        page = browser.new_page()
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: requests.append(r.url))
        page.goto((out / "index.html").as_uri())
        page.wait_for_load_state("load")
        images = page.eval_on_selector_all("img", "els => els.map(e => [e.complete, e.naturalWidth, e.src])")
        sections = page.locator("section.neuron").count()
        browser.close()
    assert errors == []
    assert [u for u in requests if not u.startswith(out.as_uri())] == []
    assert len(images) == 2 * 4 * 7 and sections == 7
    assert all(done and width > 0 for done, width, _ in images), [src for d, w, src in images if not (d and w)]


def _atlas_error(capsys, *args) -> str:
    with pytest.raises(SystemExit) as e:
        main(["atlas", "--model", SHIPPED, "--pretrained", "-j", "0", *args])
    return str(e.value)


@needs_cifar
def test_clear_errors(tmp_path, capsys):
    data = ["--dataset", str(CIFAR), "--split", "test[:8]", "--out", str(tmp_path / "a")]
    message = _atlas_error(capsys, "--layer", "features.7.1x", *data)
    assert "has no layer 'features.7.1x'" in message and "features.7.1" in message
    with pytest.MonkeyPatch.context() as m:  # refused on the first batch, before any image is kept
        m.setattr(ChannelTopK, "update", lambda *a, **k: pytest.fail("the scan ran before --neurons was checked"))
        message = _atlas_error(capsys, "--layer", "features.7.0", "--neurons", "3", "128", *data)
    assert "channel 128 is out of range: layer 'features.7.0' has 128 channels (0-127)" in message
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "rows.csv").write_text("text,label\nhello,0\nworld,1\n")
    message = _atlas_error(capsys, "--layer", "features.7.0", "--dataset", str(tmp_path / "table"), "--split", "train",
                           "--out", str(tmp_path / "b"))
    assert "no image column found" in message
    message = _atlas_error(capsys, "--layer", "features.7.0", "--dataset", str(ROOT / "README.md"), "--out",
                           str(tmp_path / "b"))
    assert "README.md is a file; expected a data set folder" in message
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    message = _atlas_error(capsys, "--layer", "features.7.0", *data[:4], "--out", str(keep))
    assert "is not an atlas folder" in message and (keep / "notes.txt").read_text() == "mine"
    assert not list(tmp_path.glob(".a.*")) and not (tmp_path / "a").exists()  # nothing half-written
    broken = tmp_path / "broken"
    broken.mkdir()
    for i in range(3):
        (broken / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    message = _atlas_error(capsys, "--layer", "features.7.0", "--dataset", str(broken), "--split", "train",
                           "--out", str(tmp_path / "c"))
    assert "the data set gave no decodable image" in message
    assert "--max-neurons must be at least 1, got 0" in _atlas_error(capsys, "--layer", "x", *data, "--max-neurons", "0")


@needs_cifar
def test_a_failure_while_writing_leaves_the_previous_atlas(tmp_path, monkeypatch):
    from timm_bcos.atlas import run

    out = tmp_path / "atlas"
    args = ["atlas", "--model", SHIPPED, "--pretrained", "--layer", "features.7.0", "--dataset", str(CIFAR),
            "--split", "test[:16]", "--top", "2", "-j", "0", "--out", str(out), "--neurons"]
    assert main([*args, "1"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run, "write_strips", disk_full)
    with pytest.raises(SystemExit, match=r"^error: OSError: \[Errno 28\] No space left on device"):  # one line
        main([*args, "0-9"])
    with pytest.raises(OSError, match="No space left"):  # the exception itself under --debug
        main([*args, "0-9", "--debug"])
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atlas"]  # no temporary folder left behind


def test_no_class_mix_without_labels_or_classifier():
    from timm_bcos.atlas.run import summarise_neuron

    tracker = ChannelTopK(2, 5, ("label", "prediction"))
    minus = torch.full((4,), -1)
    tracker.update(torch.randn(4, 2), torch.arange(4), label=minus, prediction=minus)
    n = summarise_neuron(tracker, 1, 3, ["a", "b"])
    assert n["specificity"] is None and n["mix"] == {} and n["mix_source"] is None and n["mix_of"] == 3


def test_the_explorer_sees_the_atlas_view_for_a_cropping_model():
    """ImageNet-style models crop 87.5%: the image the Atlas tab opens goes through the explorer's
    resize and centre crop and must come out as the view the atlas explained."""
    from timm_bcos.app.engine import Explorer
    from timm_bcos.atlas.page import explorer_image

    model = timm.create_model(SHIPPED, pretrained=True)
    for crop_pct in (0.875, 0.9, 0.95):
        model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": crop_pct}
        view = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        padded = explorer_image(view, model.pretrained_cfg)
        assert padded.shape[0] > 32
        assert np.array_equal(Explorer(model).prepare(Image.fromarray(padded)).seen, view), crop_pct


def test_an_unlabeled_folder_of_images(tmp_path):
    """A flat folder of images (no labels): the class mix is by the model's prediction only."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "atlas"
    assert main(["atlas", "--model", SHIPPED, "--pretrained", "--layer", "features.7.0", "--dataset", str(folder),
                 "--split", "train", "--neurons", "0-9", "--max-neurons", "1", "--top", "3", "--mix", "2",
                 "-j", "0", "--out", str(out)]) == 0
    (neuron,) = json.loads((out / "index.json").read_text())["neurons"]  # the most class-specific of 0-9
    assert neuron["mix_source"] == "prediction" and neuron["label_mix"] is None and neuron["mix_of"] == 2
    assert len(neuron["examples"]) == 3 and all(e["label"] == -1 for e in neuron["examples"])
