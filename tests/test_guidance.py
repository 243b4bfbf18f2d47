"""timm_bcos.guidance and the localisation metrics: hand-made cases, masks through crop and
flip, gradients through the explanation, and a short guided run."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from test_train import CIFAR, ROOT, json_lines, needs_cifar, run_main, run_train, script_module
from timm_bcos import guidance as G
from timm_bcos.eval import attribution_iou, energy_pointing_game


def _inside_outside(n=2, size=6):
    masks = torch.zeros(n, size, size)
    masks[:, :3, :3] = 1
    inside = torch.rand(n, size, size) * masks  # all positive evidence inside
    outside = torch.rand(n, size, size) * (1 - masks) + 0.01 * (1 - masks)
    return masks, inside, outside


def test_losses_and_metrics_on_hand_made_maps():
    torch.manual_seed(0)
    masks, inside, outside = _inside_outside()
    negative_outside = inside - outside  # negative evidence does not count against the energy
    assert torch.allclose(G.energy_loss(inside, masks), torch.zeros(2))
    assert torch.allclose(G.energy_loss(negative_outside, masks), torch.zeros(2))
    assert torch.allclose(G.energy_loss(outside, masks), torch.ones(2))
    assert torch.allclose(energy_pointing_game(inside, masks), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(energy_pointing_game(outside, masks), torch.zeros(2, dtype=torch.float64))
    assert torch.allclose(G.rrr_loss(inside, masks), torch.zeros(2))
    assert (G.rrr_loss(outside, masks) > 0).all()
    assert torch.allclose(G.l1_loss(masks * 5, masks), torch.zeros(2))  # scale-free: the shape counts
    assert torch.allclose(G.l1_loss(outside, masks), G.l1_loss(outside * 3, masks))
    assert torch.allclose(G.ppce_loss(masks, masks), torch.zeros(2))
    assert (G.ppce_loss(outside, masks) > 10).all()  # -log(1e-6) inside the mask
    assert torch.equal(attribution_iou(masks, masks), torch.ones(2, dtype=torch.float64))
    assert torch.equal(attribution_iou(outside, masks), torch.zeros(2, dtype=torch.float64))
    half = masks.clone()
    half[:, :3, 3:] = 1  # covers the mask and as much again
    assert torch.allclose(attribution_iou(half, masks), torch.full((2,), 0.5, dtype=torch.float64))
    # the mean runs over annotated images only
    both = torch.stack([inside[0], outside[1]])
    assert G.guidance_loss("energy", both, masks, torch.tensor([True, False])).item() == pytest.approx(0.0, abs=1e-6)
    assert G.guidance_loss("energy", both, masks).item() == pytest.approx(0.5, abs=1e-6)
    # half precision: the ratios run in float32 (1e-12 underflows to 0 in float16)
    assert torch.isfinite(G.guidance_loss("energy", torch.zeros(2, 6, 6, dtype=torch.float16), masks)).all()
    assert torch.isfinite(G.guidance_loss("l1", -inside.half(), masks)).all()
    with pytest.raises(ValueError, match="unknown guidance loss 'gradcam'"):
        G.guidance_loss("gradcam", both, masks)
    with pytest.raises(ValueError, match="same shape"):
        G.energy_loss(both, masks[:, :4])


def test_boxes_follow_the_image_through_crop_and_flip():
    """The image is white exactly inside the box: after the (padded, randomly cropped and
    flipped) training transform its white pixels must be the mask's pixels."""
    import datasets
    from PIL import Image

    from timm_bcos.data import ImageDatasetInfo, PadCropFlip

    box = [5, 9, 17, 14]  # x0, y0, x1, y1
    pixels = np.zeros((32, 32, 3), np.uint8)
    pixels[9:14, 5:17] = 255
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    rows = datasets.Dataset.from_dict({"image": [{"bytes": buf.getvalue(), "path": None}] * 8, "label": [0] * 8,
                                       "boxes": [[box]] * 8})
    data = G.AnnotatedImageDataset(rows, ImageDatasetInfo("image", "label", 1, None), PadCropFlip((32, 32), pad=6),
                                   boxes_column="boxes")
    samples = data.__getitems__(list(range(8)))
    assert all(s[3] for s in samples)
    unboxed = G.AnnotatedImageDataset(rows.map(lambda r: {"boxes": []}), ImageDatasetInfo("image", "label", 1, None),
                                      PadCropFlip((32, 32), pad=6), boxes_column="boxes")
    assert not any(s[3] for s in unboxed.__getitems__([0, 1]))  # an empty box list is no annotation
    for x, _, mask, _ in samples:
        assert torch.equal((x[0] > 0.5).float(), mask)
    assert len({tuple(s[2].nonzero()[0].tolist()) for s in samples}) > 1  # the crops differ
    assert G.boxes_to_mask([box], 32, 32, dilation=2)[7:16, 3:19].all()
    # timm's random resized crop and flip (train.py turns colour jitter off under --guidance)
    import timm

    from timm_bcos.data import build_transform

    rrc = build_transform(timm.create_model("bcos_cifar10", width=0.125), is_training=True, crop="rrc",
                          color_jitter=0.0)
    data = G.AnnotatedImageDataset(rows, ImageDatasetInfo("image", "label", 1, None), rrc, boxes_column="boxes")
    for x, _, mask, _ in data.__getitems__(list(range(8))):
        assert torch.equal((x[0] > 0.5).float(), mask)
    with pytest.raises(ValueError, match=r"\[x0, y0, x1, y1\]"):
        G.boxes_to_mask([[1, 2, 3]], 8, 8)
    # the annotated share is a fixed draw per image
    picks = [G.is_annotated(i, 0.25, seed=0) for i in range(2000)]
    assert 0.2 < sum(picks) / 2000 < 0.3 and picks == [G.is_annotated(i, 0.25, seed=0) for i in range(2000)]


def _png(img, tmp_path=None, name="m.png", **save) -> dict:
    """A `datasets` image cell ({"bytes", "path"}) of a PIL image; also saved under tmp_path."""
    buf = io.BytesIO()
    img.save(buf, format=save.pop("format", "PNG"), **save)
    if tmp_path is not None:
        (tmp_path / name).write_bytes(buf.getvalue())
    return {"bytes": buf.getvalue(), "path": None}


def _voc_palette() -> list[int]:
    """VOC's colour map: index 0 black, 255 the cream "void" colour."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def test_mask_encodings_decode_to_the_same_foreground(tmp_path):
    """0/255 and 0/1 grey, bilevel, palette (VOC), 16-bit, grey RGB(A), lossy JPEG, arrays: all
    read as the same foreground; anything ambiguous is refused with what was expected."""
    from PIL import Image

    fg = np.zeros((24, 20), bool)
    fg[4:14, 6:16] = True
    u8 = fg.astype(np.uint8)
    voc = Image.fromarray(u8 * 15, mode="L").convert("P")  # class 15 (person) ...
    voc.putpalette(_voc_palette())
    border = fg & ~(np.roll(fg, 1, 0) & np.roll(fg, -1, 0) & np.roll(fg, 1, 1) & np.roll(fg, -1, 1))
    assert 0 < border.sum() < fg.sum()
    voc_void = np.where(border, 255, u8 * 15).astype(np.uint8)  # ... with VOC's void outline
    voc_void_img = Image.fromarray(voc_void, mode="P")
    voc_void_img.putpalette(_voc_palette())
    cells = {
        "L 0/255": _png(Image.fromarray(u8 * 255), tmp_path, "l255.png"),
        "L 0/1 (numpy)": _png(Image.fromarray(u8), tmp_path, "l01.png"),
        "bilevel": _png(Image.fromarray(fg)),
        "palette": _png(voc),
        "palette with void": _png(voc_void_img),
        "I;16 0/1": _png(Image.fromarray(u8.astype(np.uint16))),
        "RGB 0/255": _png(Image.fromarray(np.repeat(u8[..., None] * 255, 3, 2))),
        "RGBA opaque": _png(Image.fromarray(u8 * 255).convert("RGBA")),
        "LA": _png(Image.fromarray(u8 * 255).convert("LA")),
        "JPEG": _png(Image.fromarray(u8 * 255), format="JPEG", quality=75),
        "JPEG RGB": _png(Image.fromarray(u8 * 255).convert("RGB"), format="JPEG", quality=75),
        "PIL 'L'": Image.fromarray(u8),
        "path": str(tmp_path / "l01.png"),
        "bool array": fg,
        "int array": u8.astype(np.int64).tolist(),
    }
    for what, cell in cells.items():
        got = G.decode_mask(cell)
        assert got.dtype == bool and np.array_equal(got, fg), what
    assert not G.decode_mask(_png(Image.fromarray(u8 * 0))).any()  # an empty mask is empty, not an error
    bad = {
        # an index mask without a palette
        "('L' image) with values {0, 3, 7, 10}": Image.fromarray(u8 * 3 + np.eye(24, 20, dtype=np.uint8) * 7),
        "colour mask": Image.fromarray(np.stack([u8 * 200, u8 * 10, u8 * 90], 2)),  # colour-coded
        "('LA' image) with transparent pixels": Image.fromarray(np.stack([u8 * 255, u8 * 255], 2), mode="LA"),  # the mask in alpha
        "index 0 is the colour (255, 255, 255)": Image.fromarray(u8, mode="P"),
        "('F' image) with values {0.0, 0.25, 1.0}": Image.fromarray(np.where(border, 0.25, u8).astype(np.float32)),
        "a mask ('CMYK' image)": Image.fromarray(u8 * 255).convert("CMYK"),
        # VOC's index mask without its palette: ">= 128" would keep the void outline only
        "('L' image) with values {0, 15, 255}, 100% of the pixels between 0 and 255 in areas of one value":
            Image.fromarray(voc_void, mode="L"),
        "(uint8 array) with values {0, 15, 255}": voc_void,
    }
    bad["index 0 is the colour (255, 255, 255)"].putpalette([255, 255, 255, 0, 0, 0])
    for message, img in bad.items():
        with pytest.raises(ValueError, match="expected") as e:
            G.decode_mask(img)
        assert message in str(e.value), (message, str(e.value))
    assert "save an index mask as a palette image, a binary one as 0/1 or 0/255" in str(e.value)


def test_lossy_and_resized_binary_masks_decode_within_their_edges():
    """0/255 masks saved as JPEG (quality 75) or shrunk with anti-aliasing decode like the
    lossless mask up to pixels on its edge, not as index masks."""
    from PIL import Image

    yy, xx = np.mgrid[:96, :128]
    blob = ((yy - 40) ** 2 / 30 ** 2 + (xx - 50) ** 2 / 22 ** 2 < 1) | ((yy - 60) ** 2 + (xx - 90) ** 2 < 18 ** 2)
    blob[70:90, 10:30] = True  # straight edges too

    def edge(fg):  # pixels with a 4-neighbour of the other side
        padded = np.pad(fg, 1, mode="edge")
        return (padded[:-2, 1:-1] != fg) | (padded[2:, 1:-1] != fg) | (padded[1:-1, :-2] != fg) | \
            (padded[1:-1, 2:] != fg)

    lossless = Image.fromarray(blob.astype(np.uint8) * 255)
    for quality in (75, 50, 95):
        got = G.decode_mask(_png(lossless, format="JPEG", quality=quality))
        assert 2 < len(np.unique(np.asarray(Image.open(io.BytesIO(_png(lossless, format="JPEG",
                                                                        quality=quality)["bytes"]))))), quality
        assert not (got != blob)[~edge(blob)].any() and (got != blob).sum() <= 0.02 * blob.sum(), quality
    for resample in (Image.BILINEAR, Image.BICUBIC, Image.LANCZOS, Image.BOX):
        small = lossless.resize((64, 48), resample)
        want = np.asarray(lossless.resize((64, 48), Image.NEAREST)) > 0
        got = G.decode_mask(small)
        assert not (got != want)[~edge(want)].any(), resample


def _mask_rows(masks: list, size=32):
    """A `datasets` table of white-on-black images exactly where `masks` (bool [H, W]) are."""
    import datasets
    from PIL import Image

    images = [_png(Image.fromarray(np.repeat(m[..., None], 3, 2).astype(np.uint8) * 255)) for m in masks]
    encoded = [_png(Image.fromarray(m.astype(np.uint8))) for m in masks]  # 0/1 PNGs
    return datasets.Dataset.from_dict({"image": images, "label": [0] * len(masks), "mask": encoded})


def test_zero_one_masks_follow_the_image_and_cropped_away_ones_are_no_annotation():
    """A 0/1 PNG mask column (read as empty before) follows the image's crop; an annotation
    entirely outside the crop, or an empty one, makes its image unannotated, not a target of
    "no evidence anywhere"."""
    import torchvision.transforms as T

    from timm_bcos.data import ImageDatasetInfo, PadCropFlip

    inside, outside, empty = (np.zeros((32, 32), bool) for _ in range(3))
    inside[20:28, 18:30] = True  # in the bottom-right quarter
    outside[2:8, 3:9] = True  # in the top-left quarter
    rows = _mask_rows([inside, outside, empty])
    info = ImageDatasetInfo("image", "label", 1, None)
    bottom_right = T.Compose([T.Lambda(lambda img: img.crop((16, 16, 32, 32))), T.ToTensor()])
    data = G.AnnotatedImageDataset(rows, info, bottom_right, mask_column="mask")
    samples = data.__getitems__([0, 1, 2])
    assert [s[3] for s in samples] == [True, False, False]
    assert torch.equal(samples[0][2], torch.from_numpy(inside[16:, 16:]).float())
    assert not samples[1][2].any() and not samples[2][2].any()
    batch = G.collate_annotated(samples)
    assert batch["annotated"].tolist() == [True, False, False]
    # boxes too: a box cropped away is no annotation
    boxes = rows.remove_columns("mask").add_column("boxes", [[[18, 20, 30, 28]], [[3, 2, 9, 8]], []])
    data = G.AnnotatedImageDataset(boxes, info, bottom_right, boxes_column="boxes")
    assert [s[3] for s in data.__getitems__([0, 1, 2])] == [True, False, False]
    # under random crops the mask keeps following the image (white exactly where annotated)
    data = G.AnnotatedImageDataset(_mask_rows([inside] * 8), info, PadCropFlip((32, 32), pad=6), mask_column="mask")
    for x, _, mask, annotated in data.__getitems__(list(range(8))):
        assert annotated and torch.equal((x[0] > 0.5).float(), mask)


@pytest.fixture(scope="module")
def toy():
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10", width=0.125, norm=True, max_out=1).double().train()
    x = torch.rand(4, 3, 32, 32, dtype=torch.float64)
    masks = torch.zeros(4, 32, 32, dtype=torch.float64)
    masks[:, 8:24, 8:24] = 1
    return model, x, torch.tensor([1, 2, 3, 4]), masks


def test_contribution_maps_are_the_explanation_and_carry_gradients(toy):
    model, x, t, masks = toy
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    maps = G.contribution_maps(model, x, t)
    # a second look at the step's images, not a second batch: running statistics untouched
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    with pytest.warns(UserWarning, match="training mode"):  # batch statistics, as the guided step uses
        expl = model.explain(x, target=t)
    assert torch.allclose(maps.detach(), expl.contributions[:, 0], rtol=1e-9, atol=1e-12)
    loss = G.guidance_loss("energy", maps, masks)
    grads = torch.autograd.grad(loss, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    # at an intermediate layer: the map has the layer's resolution, upsampled to the mask
    mid = G.guidance_layer(model, "mid")
    assert G.contribution_maps(model, x, t, layer=mid, size=(32, 32)).shape == (4, 32, 32)
    with pytest.raises(ValueError, match="targets must be"):
        G.contribution_maps(model, x, t[:2])


@pytest.mark.parametrize("name", ["energy", "l1", "rrr", "ppce"])
def test_a_guidance_step_lowers_its_loss(toy, name):
    """Gradients reach the weights through the explanation (double backward) and point the
    right way: one small step on the loss alone lowers it."""
    model, x, t, masks = toy
    model = __import__("copy").deepcopy(model)
    params = [p for p in model.parameters() if p.requires_grad]
    before = G.guidance_loss(name, G.contribution_maps(model, x, t), masks)
    grads = torch.autograd.grad(before, params, allow_unused=True)
    norm = torch.sqrt(sum((g * g).sum() for g in grads if g is not None))
    with torch.no_grad():
        for p, g in zip(params, grads):
            if g is not None:
                p -= 1e-3 * g / norm  # a step of length 1e-3 against the gradient
    after = G.guidance_loss(name, G.contribution_maps(model, x, t), masks)
    assert after.item() < before.item(), (name, before.item(), after.item())


def _decoy_data(out, train: int, test: int) -> None:
    """train_scripts/make_decoy_cifar10.py's data set (in this process)."""
    done = run_main(script_module(ROOT / "train_scripts" / "make_decoy_cifar10.py"),
                    ["--source", str(CIFAR), "--out", str(out), "--train", str(train), "--test", str(test)])
    assert done.returncode == 0, done.stderr[-2000:]


@needs_cifar
def test_short_guided_run_lowers_the_guidance_loss(tmp_path):
    data = tmp_path / "decoy"
    _decoy_data(data, train=512, test=64)
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125, "norm": true}',
                     "--dataset", str(data), "--crop", "pad", "--val-split", "test_decoy", "-b", "32", "--epochs", "2",
                     "--lr", "0.003", "--sched", "none", "--guidance", "energy", "--guidance-weight", "5",
                     "--mask-column", "mask", "--output", str(tmp_path / "o"), "--export", "none", "--log-every", "4")
    guide = [d["train/guidance"] for d in json_lines(proc.stdout) if "train/guidance" in d]
    assert len(guide) == 8 and sum(guide[-2:]) < 0.7 * sum(guide[:2]), guide
    bad = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(data), "--guidance", "energy",
                    "--mixup", "0.2", "--mask-column", "mask", check=False)
    assert bad.returncode == 2 and "--guidance does not work with --mixup/--cutmix" in bad.stderr
    bad = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(data), "--guidance", "energy",
                    "--mask-column", "nope", "--val-split", "", "--output", str(tmp_path / "b"), check=False)
    assert bad.returncode == 2 and "no column 'nope'" in bad.stderr
    # evaluate.py scores the own explanations against the masks
    out = tmp_path / "eval"
    ev = run_main(script_module(ROOT / "train_scripts" / "evaluate.py"),
                  ["--models", "bcos_cifar10", "--dataset", str(data), "--split", "test_decoy", "--grid",
                   "--mask-column", "mask", "--examples", "0", "--workers", "0", "--out", str(out)])
    assert ev.returncode == 0, ev.stderr[-2000:]
    loc = json.loads((out / "results.json").read_text())["localisation"]["bcos_cifar10"]
    assert loc["epg"]["n"] == 64 and 0 <= loc["epg"]["mean"] <= 1


@needs_cifar
def test_guided_training_on_two_processes_and_resumed(tmp_path):
    """The guided step under Accelerate with 2 processes (the guidance forward runs on the plain
    module, outside DDP's forward), checkpointed mid-epoch and resumed to the same end as an
    uninterrupted 2-process run."""
    import shutil

    from test_train import _launch_two, load_weights

    data = tmp_path / "decoy"
    _decoy_data(data, train=128, test=16)
    common = ["--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125, "norm": true}', "--dataset", str(data),
              "--crop", "pad", "--val-split", "", "-b", "32", "--epochs", "1", "--sched", "none", "--guidance",
              "energy", "--annotated-fraction", "0.5", "--mask-column", "mask", "--cpu", "--export", "last",
              "--checkpoint-every", "2", "--keep-checkpoints", "10", "--log-every", "1", "--dtype", "float64"]
    full = run_train(tmp_path, *common, "--output", str(tmp_path / "full"), launcher=_launch_two(), timeout=300)
    assert "2 process(es)" in full.stdout
    assert len([d for d in json_lines(full.stdout) if "train/guidance" in d]) == 4
    cut = tmp_path / "cut"  # as if stopped after step 2 (mid-epoch: 4 steps of 32 images)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000000002", cut / "checkpoints" / "step_000000002")
    resumed = run_train(tmp_path, *common, "--output", str(cut), "--resume", "latest", launcher=_launch_two(),
                        timeout=300)
    assert "resumed from" in resumed.stdout
    a = load_weights(tmp_path / "full" / "export" / "model.safetensors")
    b = load_weights(cut / "export" / "model.safetensors")
    # float64: the resumed run may differ from the uninterrupted one only by rounding
    gap = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-300)) for k in a
              if a[k].is_floating_point())
    assert gap < 1e-9, gap

