"""timm_bcos.guidance and the localisation metrics: hand-made cases, masks through crop and
flip, gradients through the explanation, and a short guided run."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from test_train import CIFAR, json_lines, needs_cifar, run_train
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


@needs_cifar
def test_short_guided_run_lowers_the_guidance_loss(tmp_path):
    import subprocess
    import sys

    from test_train import ROOT

    data = tmp_path / "decoy"
    subprocess.run([sys.executable, str(ROOT / "train_scripts" / "make_decoy_cifar10.py"), "--source", str(CIFAR),
                    "--out", str(data), "--train", "512", "--test", "64"], check=True, capture_output=True)
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
    ev = subprocess.run([sys.executable, str(ROOT / "train_scripts" / "evaluate.py"), "--models", "bcos_cifar10",
                         "--dataset", str(data), "--split", "test_decoy", "--grid", "--mask-column", "mask",
                         "--examples", "0", "--workers", "0", "--out", str(out)],
                        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    loc = json.loads((out / "results.json").read_text())["localisation"]["bcos_cifar10"]
    assert loc["epg"]["n"] == 64 and 0 <= loc["epg"]["mean"] <= 1


@needs_cifar
def test_guided_training_on_two_processes_and_resumed(tmp_path):
    """The guided step under Accelerate with 2 processes (the guidance forward runs on the plain
    module, outside DDP's forward), checkpointed mid-epoch and resumed to the same end as an
    uninterrupted 2-process run."""
    import subprocess
    import sys

    from test_train import ROOT, _launch_two, load_weights

    data = tmp_path / "decoy"
    subprocess.run([sys.executable, str(ROOT / "train_scripts" / "make_decoy_cifar10.py"), "--source", str(CIFAR),
                    "--out", str(data), "--train", "128", "--test", "16"], check=True, capture_output=True)
    common = ["--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125, "norm": true}', "--dataset", str(data),
              "--crop", "pad", "--val-split", "", "-b", "32", "--epochs", "1", "--sched", "none", "--guidance",
              "energy", "--annotated-fraction", "0.5", "--mask-column", "mask", "--cpu", "--export", "last",
              "--checkpoint-every", "2", "--keep-checkpoints", "10", "--log-every", "1", "--dtype", "float64"]
    full = run_train(tmp_path, *common, "--output", str(tmp_path / "full"), launcher=_launch_two(), timeout=300)
    assert "2 process(es)" in full.stdout
    assert len([d for d in json_lines(full.stdout) if "train/guidance" in d]) == 4
    cut = tmp_path / "cut"
    run_train(tmp_path, *common, "--output", str(cut), "--max-steps", "2", launcher=_launch_two(), timeout=300)
    resumed = run_train(tmp_path, *common, "--output", str(cut), "--resume", "latest", launcher=_launch_two(),
                        timeout=300)
    assert "resumed from" in resumed.stdout
    a = load_weights(tmp_path / "full" / "export" / "model.safetensors")
    b = load_weights(cut / "export" / "model.safetensors")
    # float64: the resumed run may differ from the uninterrupted one only by rounding
    gap = max(float((a[k] - b[k]).abs().max() / a[k].abs().max().clamp_min(1e-300)) for k in a
              if a[k].is_floating_point())
    assert gap < 1e-9, gap

