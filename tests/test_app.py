"""The explorer's functions without a browser: image reading, preparation, callbacks, CLI, Space files."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from timm_bcos.app import DEFAULT_MODEL, Explorer, ImageInputError, load_image, load_model  # noqa: E402
from timm_bcos.app import views  # noqa: E402
from timm_bcos.app.images import MAX_PIXELS, MIN_SIDE  # noqa: E402
from timm_bcos.cli.demo import SAMPLES  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CAT = SAMPLES / "cifar10_test_0000_cat.png"


@pytest.fixture(scope="module")
def explorer():
    return Explorer(load_model(DEFAULT_MODEL, pretrained=True), DEFAULT_MODEL)


@pytest.fixture(scope="module")
def cb():
    pytest.importorskip("gradio", reason="the app extra is not installed")  # make test installs it
    from timm_bcos.app import callbacks

    return callbacks


def png_header_only(path: Path, w: int, h: int) -> Path:
    """A PNG that claims w x h pixels (its pixel data is never reached: opening reads the header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))
    return path


# ----------------------------------------------------------------------------- bad and unusual input
@pytest.mark.parametrize("content, expected", [(b"hello, not an image\n", "expected an image file"),
                                               (b"", "an empty file")])
def test_not_an_image_is_refused_with_a_message(tmp_path, content, expected):
    path = tmp_path / "notes.png"
    path.write_bytes(content)
    with pytest.raises(ImageInputError, match=expected) as e:
        load_image(path)
    assert "notes.png" in str(e.value)


def test_damaged_image_is_refused(tmp_path):
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageInputError, match="damaged or truncated"):
        load_image(tmp_path / "cut.png")


def test_tiny_image_is_refused(tmp_path):
    Image.new("RGB", (1, 1), (255, 0, 0)).save(tmp_path / "one.png")
    with pytest.raises(ImageInputError, match=f"1x1 pixels; expected at least {MIN_SIDE}x{MIN_SIDE}"):
        load_image(tmp_path / "one.png")


@pytest.mark.parametrize("side", [11_000, 15_000])  # over our cap; 15,000^2 is also over Pillow's bomb limit
def test_oversized_image_is_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_PIXELS
    with pytest.raises(ImageInputError, match="image too large"):
        load_image(png_header_only(tmp_path / "huge.png", side, side))


def test_10000_square_image_is_shrunk(tmp_path):
    img = Image.new("L", (10_000, 10_000), 40)
    img.paste(200, (0, 0, 5_000, 10_000))  # left half bright
    img.save(tmp_path / "big.png")
    out = load_image(tmp_path / "big.png")
    assert out.mode == "RGB" and max(out.size) == 2048
    a = np.asarray(out)
    assert a[10, 10].tolist() == [200] * 3 and a[10, -10].tolist() == [40] * 3


def test_grayscale_and_16_bit(tmp_path):
    Image.new("L", (20, 20), 77).save(tmp_path / "g.png")
    assert np.asarray(load_image(tmp_path / "g.png"))[3, 3].tolist() == [77, 77, 77]
    ramp = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 100)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    a = np.asarray(load_image(tmp_path / "g16.png")).astype(int)
    assert a[0, 0, 0] == 0 and a[-1, -1, 0] == 255 and (np.diff(a[..., 0].ravel()) >= 0).all()
    assert a[9, 19, 0] == 127  # 19900 of 39900: the range is rescaled, not clipped at 255


def test_transparency_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 255))
    rgba.paste((0, 0, 255, 0), (0, 0, 8, 16))  # left half fully transparent blue
    rgba.save(tmp_path / "t.png")
    a = np.asarray(load_image(tmp_path / "t.png"))
    assert a[0, 0].tolist() == [255, 255, 255] and a[0, -1].tolist() == [255, 0, 0]
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 255, 0, 9, 9, 9] + [0] * 762)
    pal.save(tmp_path / "p.png", transparency=1)
    assert np.asarray(load_image(tmp_path / "p.png"))[5, 5].tolist() == [255, 255, 255]


def test_cmyk_jpeg(tmp_path):
    Image.new("CMYK", (16, 16), (255, 0, 0, 0)).save(tmp_path / "c.jpg", quality=95)  # pure cyan ink
    r, g, b = np.asarray(load_image(tmp_path / "c.jpg"))[8, 8].astype(int)
    assert r < 30 and g > 220 and b > 220


def test_exif_orientation_is_respected(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # stored: left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    a = np.asarray(load_image(tmp_path / "rot.jpg")).astype(int)
    assert a.shape == (40, 20, 3)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 50  # top is the stored left: red
    assert a[-5, 10, 2] > 200 and a[-5, 10, 0] < 50


def test_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 16), c) for c in [(255, 0, 0), (0, 0, 255)]]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert np.asarray(load_image(tmp_path / "a.gif"))[8, 8].tolist() == [255, 0, 0]


# ----------------------------------------------------------------------------- model side
def test_prepare_follows_the_models_data_config(explorer):
    import timm

    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))
    p = explorer.prepare(img)
    cfg = timm.data.resolve_data_config({}, model=explorer.model)
    assert tuple(p.x.shape) == (1, *cfg["input_size"])
    torch.testing.assert_close(p.x[0], timm.data.create_transform(**cfg)(img))
    assert p.seen.shape == (32, 32, 3) and p.seen.dtype == np.uint8
    np.testing.assert_allclose(p.seen / 255.0, p.x[0].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)


def test_what_the_model_saw_undoes_the_normalisation():
    import timm

    model = timm.create_model(DEFAULT_MODEL, pretrained=False, num_classes=5,
                              pretrained_cfg_overlay=dict(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    img = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)  # already the input size
    p = Explorer(model).prepare(Image.fromarray(img))
    plain = torch.from_numpy(img / 255.0).permute(2, 0, 1).float()
    assert (p.x[0] - plain).abs().mean() > 0.3  # the model gets the normalised tensor...
    assert np.abs(p.seen.astype(int) - img).max() <= 1  # ...the page shows the picture it came from
    assert Explorer(model).class_names == [f"class {i}" for i in range(5)]  # cfg's 10 names do not fit


def test_bcos_layers_and_class_names(explorer):
    assert explorer.class_names[3] == "cat" and len(explorer.class_names) == 10
    assert explorer.layers[0] == "features.0.0" and explorer.layers[-1] == "fc"


def test_load_model_errors():
    with pytest.raises(ValueError, match="unknown model 'bcos_nonsense'"):
        load_model("bcos_nonsense")
    with pytest.raises(ValueError, match="not a B-cos model"):
        load_model("resnet10t", pretrained=False)


# ----------------------------------------------------------------------------- views
def test_contribution_picture_colours():
    from timm_bcos.explain.result import Explanation

    c = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    c[0, 0, 0, 0], c[0, 0, 3, 3] = 1.0, -1.0
    expl = Explanation(logits=torch.zeros(1, 2), targets=torch.zeros(1, 1, dtype=torch.long),
                       weights=torch.zeros(1, 1, 6, 4, 4), contributions=c, encoded_input=torch.zeros(1, 6, 4, 4),
                       explained=torch.zeros(1, 1))
    pic = views.contribution_picture(expl, 0, percentile=100)
    assert pic.shape == (256, 256, 3)
    assert pic[0, 0].tolist() == [255, 0, 0] and pic[-1, -1].tolist() == [0, 0, 255]
    assert pic[100, 100].tolist() == [255, 255, 255]
    assert (views.explanation_picture(expl, 0) == 255).all()  # no weights: nothing drawn on white


# ----------------------------------------------------------------------------- callbacks
def _analyse(cb, explorer, path, topk=3):
    return cb.analyse(explorer, {"path": str(path)}, topk, 0, 99.5)


def test_analyse_explains_the_top_classes_in_one_call(cb, explorer):
    msg, seen, scores, radio, expl_pic, contrib_pic, numbers, state = _analyse(cb, explorer, CAT)
    x = explorer.prepare(load_image(CAT)).x
    with torch.no_grad():
        logits = explorer.model(x)[0]
    top = logits.topk(3).indices.tolist()
    assert list(scores) == [explorer.class_names[t] for t in top]
    assert scores["cat"] == pytest.approx(torch.sigmoid(logits[3].double()).item(), abs=1e-5)
    assert [v for _, v in radio["choices"]] == [0, 1, 2] and radio["value"] == 0
    assert "32x32" in msg and seen.shape == (256, 256, 3)
    assert expl_pic.std() > 10 and not (expl_pic == 255).all()
    assert numbers.startswith("**cat**: logit") and "logit bias **-2.1972**" in numbers
    expl = state["topk"]
    assert state["current"][1] == 0 and expl.targets.shape == (1, 3)
    # completeness, as the page states it: contributions sum to logit - bias
    torch.testing.assert_close(expl.contributions[0].double().sum((-1, -2)), expl.explained[0].double(),
                               atol=1e-4, rtol=1e-4)


def test_bad_input_gets_a_message_and_the_next_request_is_served(cb, explorer, tmp_path):
    bad = tmp_path / "paper.pdf"
    bad.write_bytes(b"%PDF-1.4 not an image")
    out = _analyse(cb, explorer, bad)
    assert out[0].startswith("**Cannot use this input.** expected an image file") and "paper.pdf" in out[0]
    assert out[1] is None and out[-1]["x"] is None
    assert cb.analyse(explorer, None, 3, 0, 99.5)[0].endswith("no image given; upload, paste or take a "
                                                               "picture, or pick a sample")
    assert _analyse(cb, explorer, CAT)[2]  # served again


def test_pick_class_rerenders_without_a_model_call(cb, explorer, monkeypatch):
    *_, first_pic, _, first_numbers, state = _analyse(cb, explorer, CAT)
    monkeypatch.setattr(explorer.model, "explain", lambda *a, **k: pytest.fail("model called"))
    pic, _, numbers, state2 = cb.pick_class(explorer, 1, state, 0, 99.5)
    name = explorer.class_names[int(state["topk"].targets[0, 1])]
    assert numbers.startswith(f"**{name}**") and state2["current"][1] == 1
    assert (pic != first_pic).any()
    smoothed = cb.rerender(explorer, state2, 5, 99.5)[0]
    assert (smoothed != pic).any()


def test_delta_and_neuron_modes(cb, explorer):
    state = _analyse(cb, explorer, CAT)[-1]
    msg, pic, _, numbers, st = cb.explain_delta(explorer, state, 3, 5, 0, 99.5)
    assert msg == "Delta explanation: cat rather than dog." and "the biases cancel" in numbers
    expl = st["current"][0]
    v = expl.logits[0, 3].double() - expl.logits[0, 5].double()
    assert float(expl.explained[0, 0]) == pytest.approx(float(v), abs=1e-4)
    msg, pic, _, numbers, st = cb.explain_neuron(explorer, state, "features.3.0", -1, 0, 99.5)
    assert msg.startswith("Neuron explanation: features.3.0 channel") and "at position (" in numbers
    assert cb.explain_neuron(explorer, state, "features.3.0", 10_000, 0, 99.5)[0].startswith(
        "**Cannot explain this unit.** target indices must be in [0,")
    assert "unknown layer 'nope'" in cb.explain_neuron(explorer, state, "nope", -1, 0, 99.5)[0]
    assert cb.explain_delta(explorer, dict(cb.EMPTY), 0, 1, 0, 99.5)[0] == "**Load an image first.**"


def test_delta_starts_with_the_image_s_top_two_classes(cb, explorer):
    assert cb.delta_pair(dict(cb.EMPTY)) == (cb.gr.skip(), cb.gr.skip())  # no image yet: left as they are
    for topk in (1, 3):  # the runner-up too when only the top class was explained
        state = _analyse(cb, explorer, CAT, topk=topk)[-1]
        first, second = state["topk"].logits[0].topk(2).indices.tolist()
        assert cb.delta_pair(state) == (first, second) and first != second
    assert explorer.class_names[first] == "cat"  # the sample's prediction comes first


def test_png_grid(cb, explorer):
    state = _analyse(cb, explorer, CAT)[-1]
    stale = cb._grid_folder() / "stale"
    stale.mkdir(exist_ok=True)
    os.utime(stale, (0, 0))  # a grid from long ago is cleared when the next one is made
    update = cb.png_grid(explorer, state, 0)
    assert not stale.exists()
    assert update["visible"] is True
    with Image.open(update["value"]) as img:
        assert img.format == "PNG" and img.size[0] > 500
    assert cb.png_grid(explorer, dict(cb.EMPTY), 0) == {"__type__": "update", "value": None, "visible": False}


# ----------------------------------------------------------------------------- command line, Space
def test_cli_defaults_and_bad_model(monkeypatch, cb):
    from timm_bcos.__main__ import main
    from timm_bcos.app import layout

    seen = {}
    monkeypatch.setattr(layout, "launch", lambda explorer, host, port, atlases: seen.update(
        e=explorer, host=host, port=port, atlases=atlases))
    assert main(["app"]) == 0
    assert seen["host"] == "127.0.0.1" and seen["port"] == 7860 and seen["e"].name == DEFAULT_MODEL
    assert seen["atlases"] == {}
    threads = torch.get_num_threads()
    try:
        assert main(["app", "--threads", "3", "--port", "7999"]) == 0
        assert torch.get_num_threads() == 3 and seen["port"] == 7999
    finally:
        torch.set_num_threads(threads)
    with pytest.raises(SystemExit, match="unknown model 'bcos_resnet5'. Did you mean: bcos_resnet50"):
        main(["app", "--model", "bcos_resnet5"])
    with pytest.raises(SystemExit, match="checkpoint not found"):
        main(["app", "--model", DEFAULT_MODEL, "--checkpoint", "missing.safetensors"])
    with pytest.raises(SystemExit, match="tests is not an atlas folder .no index.json.; build one with python -m"):
        main(["app", "--atlas", "tests"])


def test_console_script_is_declared():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["timm-bcos"] == "timm_bcos.__main__:main"


def test_space_dry_run_lists_the_upload(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "hub"))
    import publish  # hub/publish.py, in this process: its imports are loaded already

    assert publish.main(["--space", "--dry-run", "--org", "me", "--out-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    for name in ["app.py", "requirements.txt", "README.md", "timm_bcos/app/layout.py",
                 "timm_bcos/weights/bcos_cifar10_w050_bnu.cpu30e.safetensors", "timm_bcos/samples/"]:
        assert name in listed, name
    assert "me/timm-bcos-explorer" in listed and "__pycache__" not in listed
    readme = (tmp_path / "space" / "README.md").read_text()
    assert readme.startswith("---\n") and "sdk: gradio" in readme and "app_file: app.py" in readme
