"""timm_bcos.eval: the grid pointing game on cases with known answers, attribution methods, the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from timm_bcos.eval import attribution as attribution_module
from timm_bcos.eval import build_grids, confident_per_class, grid_pointing_game, pointing_scores

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"


def one_cell_maps(n: int, size: int = 8) -> torch.Tensor:
    """[n*n, n*size, n*size]: map k has all its (positive) mass in cell k."""
    maps = torch.zeros(n * n, n * size, n * size)
    for k in range(n * n):
        r, c = divmod(k, n)
        maps[k, r * size:(r + 1) * size, c * size:(c + 1) * size] = torch.rand(size, size) + 0.1
    return maps


@pytest.mark.parametrize("n", [2, 3])
def test_attribution_in_its_own_cell_scores_one_uniform_scores_one_over_n2(n):
    assert torch.allclose(pointing_scores(one_cell_maps(n), n), torch.ones(n * n))
    uniform = torch.ones(n * n, 6 * n, 6 * n)
    assert torch.allclose(pointing_scores(uniform, n), torch.full((n * n,), 1 / n / n))
    # smoothing cannot move mass between cells of a uniform map; zero padding would
    assert torch.allclose(pointing_scores(uniform, n, smooth=3), torch.full((n * n,), 1 / n / n))
    # all mass in the wrong cell scores 0; negative attributions are ignored
    wrong = one_cell_maps(n).roll(1, dims=0) - 5.0 * one_cell_maps(n)
    assert torch.allclose(pointing_scores(wrong, n), torch.zeros(n * n))


def test_half_inside_scores_half_and_shapes_are_checked():
    maps = torch.zeros(4, 8, 8)
    maps[:, :4, :4] = 1.0  # every map: cell 0 ...
    maps[:, 4:, 4:] = 1.0  # ... and cell 3, equally
    assert torch.allclose(pointing_scores(maps, 2), torch.tensor([0.5, 0.0, 0.0, 0.5]))
    with pytest.raises(ValueError, match="expected 9 maps"):
        pointing_scores(maps, 3)
    with pytest.raises(ValueError, match="does not split"):
        pointing_scores(torch.ones(4, 7, 8), 2)


def class_coded_images(num_classes=6, per_class=3, size=4):
    """Images whose pixels all equal (class + 1) / 10: an oracle can find each class on a grid."""
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    images = ((labels.float() + 1) / 10).view(-1, 1, 1, 1).expand(-1, 3, size, size).clone()
    return images, labels


def test_grids_tile_distinct_classes_at_the_right_cells():
    images, labels = class_coded_images()
    candidates = {c: torch.nonzero(labels == c).squeeze(1).tolist() for c in range(6)}
    grids = build_grids(images, candidates, 2, 5, seed=1)
    assert grids.images.shape == (5, 3, 8, 8)
    for g in range(5):
        assert len(set(grids.classes[g].tolist())) == 4
        for k in range(4):
            r, c = divmod(k, 2)
            cell = grids.images[g, :, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4]
            assert torch.equal(cell, images[grids.sources[g, k]])
            assert labels[grids.sources[g, k]] == grids.classes[g, k]
    again = build_grids(images, candidates, 2, 5, seed=1)
    assert torch.equal(again.images, grids.images)
    with pytest.raises(ValueError, match="needs 9 classes"):
        build_grids(images, candidates, 3, 1)


def test_pointing_game_pairs_each_cell_with_its_class(monkeypatch):
    images, labels = class_coded_images()
    candidates = {c: torch.nonzero(labels == c).squeeze(1).tolist() for c in range(6)}
    grids = build_grids(images, candidates, 2, 6, seed=0)

    def oracle(model, x, targets):  # positive exactly where the target's class is shown
        return (x[:, 0] - ((targets.float() + 1) / 10).view(-1, 1, 1)).abs().lt(1e-6).float()

    def uniform(model, x, targets):
        return torch.ones(x.shape[0], *x.shape[-2:])

    monkeypatch.setitem(attribution_module.ATTRIBUTION_METHODS, "oracle", oracle)
    monkeypatch.setitem(attribution_module.ATTRIBUTION_METHODS, "uniform", uniform)
    scores = grid_pointing_game(nn.Identity(), grids, ["oracle", "uniform"], batch_size=8)
    assert torch.allclose(scores["oracle"], torch.ones(24))
    assert torch.allclose(scores["uniform"], torch.full((24,), 0.25))


def test_confident_per_class_keeps_correct_and_confident_most_confident_first():
    class Fixed(nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0]  # the logits are written into the image

    logits = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-0.5, -1.0], [0.0, 2.0], [5.0, 1.0]])
    images = logits[:, :, None, None].expand(-1, -1, 2, 2)
    labels = torch.tensor([0, 0, 0, 1, 1])
    # image 2 is right but sigmoid(-0.5) < 0.5; image 4 is wrong
    assert confident_per_class(Fixed(), images, labels) == {0: [0, 1], 1: [3]}


def test_streamed_accuracy_and_confidence_match_the_in_memory_path():
    """evaluate.py streams batches with their data-set indices (undecodable ones left out)
    and must find what the in-memory functions find."""
    from timm_bcos.eval import accuracy_and_confidence, evaluate_accuracy

    class Fixed(nn.Module):
        def forward(self, x):
            return x[:, :, 0, 0]

    torch.manual_seed(0)
    logits = torch.randn(40, 5) * 3
    images = logits[:, :, None, None].expand(-1, -1, 2, 2)
    labels = torch.randint(0, 5, (40,))
    expected = confident_per_class(Fixed(), images, labels)
    kept = [i for i in range(40) if i % 7 != 3]  # as if images 3, 10, 17, ... were undecodable
    batches = [{"images": images[kept[i:i + 8]], "labels": labels[kept[i:i + 8]],
                "indices": torch.tensor(kept[i:i + 8]), "skipped": torch.tensor(1)} for i in range(0, len(kept), 8)]
    scores, candidates = accuracy_and_confidence(Fixed(), batches)
    assert candidates == {c: [i for i in idx if i in kept] for c, idx in expected.items()}
    reference = evaluate_accuracy(Fixed(), [(images[kept], labels[kept])])
    assert {k: scores[k] for k in reference} == reference and scores["skipped"] == len(batches)


def test_lazy_images_decode_by_index_and_devices_are_checked(tmp_path):
    from timm_bcos.cli.common import resolve_device
    from timm_bcos.data import LazyImages, load_eval_dataset, load_image_tensors

    if not CIFAR.is_dir():
        pytest.skip("../shared/datasets/cifar10 is not here")
    data, _ = load_eval_dataset(str(CIFAR), "test", max_samples=20)
    images, labels, _, _ = load_image_tensors(str(CIFAR), "test", max_samples=20)
    lazy = LazyImages(data, (3, 32, 32))
    assert lazy.shape == (20, 3, 32, 32) and torch.equal(lazy[[4, 0, 19]], images[[4, 0, 19]])
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(SystemExit, match="--device nonsense: not usable"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="--device cuda: not usable"):
            resolve_device("cuda")


def test_post_hoc_methods_on_a_linear_model():
    # seeded: with 20 IG steps over ReLU kinks, about 1 in 10 random draws misses the 5% bound
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    model.feature_info = [{"module": "1", "num_chs": 4, "reduction": 1}]
    x = torch.rand(3, 3, 6, 6)
    t = torch.tensor([0, 3, 4])
    maps = {m: attribution_module.attribution_maps(model, x, t, m)
            for m in ("grad", "ixg", "ig", "deeplift", "gradcam")}
    for m, a in maps.items():
        assert a.shape == (3, 6, 6), m
    # Integrated gradients from the black image: completeness, f(x) - f(0)
    wrapped = attribution_module.Normalised(model)
    with torch.no_grad():
        gap = wrapped(x).gather(1, t[:, None]) - wrapped(torch.zeros_like(x)).gather(1, t[:, None])
    assert torch.allclose(maps["ig"].sum((1, 2)), gap.squeeze(1), rtol=0.05, atol=1e-3)
    with pytest.raises(ValueError, match="unknown attribution method"):
        attribution_module.attribution_maps(model, x, t, "shap")
    with pytest.raises(TypeError, match="not a B-cos model"):
        attribution_module.attribution_maps(model, x, t, "own")


@pytest.mark.parametrize("method", ["gradcampp", "scorecam"])
def test_cam_methods_on_one_full_resolution_channel_are_its_scaled_positive_part(method):
    """By hand: one feature channel A at the image's resolution, a positive head on its mean. GradCAM++'s
    weight (sum of alpha relu(dy/dA), dy/dA = w / HW > 0; alpha > 0 while mean(A) > -1, as here) and
    ScoreCAM's (a softmax over one channel: 1) are positive, so both maps are relu(A) scaled to [0, 1] per image, with no resizing. Class 1's head is
    negative: its GradCAM++ map is zero (ScoreCAM's one-channel softmax is 1 whatever the class)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 1, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, -2.0, 0.5]).view(1, 3, 1, 1))
        model[0].bias.fill_(0.1)
        model[3].weight.copy_(torch.tensor([[2.0], [-1.0]]))
    model.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    model.feature_info = [{"module": "0", "num_chs": 1, "reduction": 1}]
    x = torch.rand(3, 3, 9, 7)
    with torch.no_grad():
        a = model[0]((x - 0.5) / 0.25)[:, 0].clamp_min(0)
    flat = a.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    expected = (a - lo) / (hi - lo)
    assert (hi > lo).all() and (lo == 0).all()  # a real map: some of A negative, some positive
    model[3].weight.grad = torch.ones_like(model[3].weight)  # a caller's gradients, left as they were
    got = attribution_module.attribution_maps(model, x, torch.tensor([0, 0, 0]), method)
    assert got.shape == (3, 9, 7) and torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(model[3].weight.grad, torch.ones_like(model[3].weight)) and model[0].weight.grad is None
    if method == "gradcampp":
        assert attribution_module.attribution_maps(model, x, torch.tensor([1, 1, 1]), method).abs().max() == 0


class _Region(nn.Module):
    """Two classes; class 1's logit is 12 x (the mean of the red channel over rows and columns 4..11) - 3:
    only that 8x8 region of a 16x16 image matters."""

    def forward(self, x):
        z = 12 * x[:, 0, 4:12, 4:12].mean((1, 2)) - 3  # 0 at a region mean of 1/4
        return torch.stack([torch.zeros_like(z), z], 1)


def test_rise_is_its_formula_on_given_masks():
    """RISE's estimate by hand: two masks, scores softmax([0, z])[1] = 1 / (1 + exp(-z)), p = 0.5."""
    x = torch.full((1, 3, 16, 16), 0.5)
    masks = torch.zeros(2, 1, 16, 16)
    masks[0, :, :8] = 1  # the top half: half of the region kept
    masks[1] = 1  # everything
    z = torch.tensor([12 * 0.5 * 0.5 - 3, 12 * 0.5 - 3])  # region means 0.25 and 0.5
    score = 1 / (1 + torch.exp(-z))
    expected = (score[0] * masks[0, 0] + score[1] * masks[1, 0]) / (2 * 0.5)
    got = attribution_module.rise_saliency(_Region(), x, torch.tensor([1]), masks, p=0.5)
    assert torch.allclose(got[0], expected, rtol=1e-6, atol=0)
    m = attribution_module.rise_masks(500, 4, 16, 16, p=0.5, generator=torch.Generator().manual_seed(0))
    assert m.shape == (500, 1, 16, 16) and m.min() >= 0 and m.max() <= 1
    assert abs(m.mean().item() - 0.5) < 0.05 and not torch.equal(m[0], m[1])


@pytest.mark.parametrize("method", ["rise", "lime"])
def test_perturbation_methods_find_the_region_that_decides(method):
    """What decides class 1 is the 8x8 centre: there the map is higher than anywhere outside it, on
    average by far; a pointing game would count the hit."""
    torch.manual_seed(0)
    model = _Region()
    model.pretrained_cfg = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}
    x = torch.rand(2, 3, 16, 16) * 0.5 + 0.5
    maps = attribution_module.attribution_maps(model, x, torch.tensor([1, 1]), method)
    assert maps.shape == (2, 16, 16)
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[4:12, 4:12] = True
    for a in maps:  # RISE's map is an expected score, positive everywhere: measured from its minimum
        a = a - a.min()
        assert inside.flatten()[a.argmax()] and a[inside].mean() > 1.5 * a[~inside].mean(), (method, a)


def test_own_contributions_sum_to_the_logit_minus_bias():
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10", width=0.125).eval().double()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    t = torch.tensor([1, 7])
    maps = attribution_module.attribution_maps(model, x, t, "own")
    expl = model.explain(x, target=t)
    assert torch.allclose(maps.sum((1, 2)), expl.explained[:, 0], rtol=1e-6)


@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not here")
def test_evaluate_cli_end_to_end(tmp_path):
    out = tmp_path / "report"
    cmd = [sys.executable, str(ROOT / "train_scripts" / "evaluate.py"), "--models", "bcos_cifar10_w050_bnu",
           "--names", "shipped", "--pretrained", "--dataset", str(CIFAR), "--split", "test", "--max-samples", "200",
           "--grid", "2", "--num-grids", "3", "--methods", "own", "ixg", "gradcam", "--out", str(out),
           "--metrics", "sparseness", "random_logit", "--metrics-images", "16"]
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf"),
           "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    # a fresh, offline process with forked loader workers (the map-style path's; no other test forks them)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (out / "results.md").read_text()
    assert "| shipped | `bcos_cifar10_w050_bnu` |" in report and "B-cos (own)" in report
    results = json.loads((out / "results.json").read_text())
    assert results["accuracy"]["shipped"]["n"] == 200
    assert results["pointing_game"]["2x2"]["shipped"]["own"]["n"] == 12
    assert (out / "pointing_game_2x2.png").stat().st_size > 1000
    metrics = results["metrics"]["shipped"]  # Quantus, per method, with intervals
    assert set(metrics) == {"own", "ixg", "gradcam"} and set(metrics["own"]) == {"sparseness", "random_logit"}
    assert all(s["n"] == 16 and s["ci95"][0] <= s["mean"] <= s["ci95"][1] for m in metrics.values() for s in m.values())
    assert "## Explanation metrics (Quantus), shipped: 16 images" in report


def test_unknown_metrics_are_refused_by_name():
    from timm_bcos.eval.run import EvalConfig, EvalError, check_config

    config = EvalConfig(models=["bcos_cifar10_w050_bnu"], dataset="x", metrics=["sparseness", "roar"])
    with pytest.raises(EvalError, match=r"unknown --metrics \['roar'\]; expected some of \['mprt', 'pixel_flipping'"):
        check_config(config)


def test_summaries_carry_a_bootstrap_interval_of_the_mean():
    """Every pointing-game figure comes with its sample size and a 95% bootstrap interval of the mean."""
    from timm_bcos.eval import markdown_table, summarise

    scores = torch.tensor([0.0, 1.0] * 50, dtype=torch.float64)
    s = summarise(scores)
    assert s["n"] == 100 and s["mean"] == pytest.approx(0.5)
    assert 0.38 < s["ci95"][0] < 0.5 < s["ci95"][1] < 0.62  # the mean's standard error is 0.05
    assert summarise(torch.full((20,), 0.3, dtype=torch.float64))["ci95"] == pytest.approx([0.3, 0.3])
    table = markdown_table({"m": {"own": scores}})
    assert "| 95% CI |" in table and f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]" in table
