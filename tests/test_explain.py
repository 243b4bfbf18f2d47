"""model.explain(): completeness, batching, targets, layers, Delta, no trace, rendering."""

import numpy as np
import pytest
import timm
import torch

import timm_bcos  # noqa: F401
from helpers import calibrate_bn, image_size, model_contributions, rel_err, shallow, without_position_embedding

MODELS = timm.list_models("bcos_*")


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10", width=0.25).double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    return model.eval(), x


@pytest.mark.parametrize("name", MODELS)
def test_completeness_for_every_model(name):
    """Every registered model is dynamic linear (Eq. 13/15): the input gradient of the classifier
    output before the logit layer, times the encoded input, sums to that output (rel <= 1e-8, computed
    here with hooks and autograd, apart from `explain`), and `explain`'s contributions sum to the
    explained logit minus the logit bias (rel <= 1e-4).

    float64 and calibrated norms: with random weights the logits sit within 1e-5..1e-200 of the
    logit bias, so the checks use the pre-bias output itself (in float32 it would be noise).
    """
    torch.manual_seed(0)
    model = without_position_embedding(timm.create_model(name, **shallow(name), num_classes=6).double())
    x = torch.rand(2, 3, image_size(name), image_size(name), dtype=torch.float64)
    calibrate_bn(model, x)
    contrib, pre, logits = model_contributions(model, x, torch.tensor([1, 4]))
    assert (pre != 0).all(), "outputs underflowed: the check would be vacuous"
    assert rel_err(contrib, pre) <= 1e-8
    assert torch.allclose(logits.gather(1, torch.tensor([[1], [4]]))[:, 0],
                          pre * model.logit_layer.logit_temperature + model.logit_layer.logit_bias)
    # one class per image (several at once: test_multi_target_equals_one_at_a_time_and_repeats_are_identical)
    expl = model.explain(x, target=torch.tensor([1, 4]))
    assert expl.weights.shape == (2, 1, 6, image_size(name), image_size(name))
    assert expl.contributions.shape == (2, 1, image_size(name), image_size(name))
    assert (expl.explained != 0).all()
    assert rel_err(expl.contributions.flatten(2).sum(-1), expl.explained) <= 1e-4
    assert rel_err(expl.contributions.flatten(1).sum(1), contrib) <= 1e-8  # explain's map is the oracle's
    # `explained` is logit - bias, consistent with the logits themselves
    bias = model.logit_layer.logit_bias.item()
    picked = expl.logits.gather(1, expl.targets)
    assert torch.allclose(picked - bias, expl.explained * model.logit_layer.logit_temperature.item(), atol=1e-12)


def test_intermediate_neurons_are_complete(small):
    model, x = small
    expl = model.explain(x, layer="features.5", topk=3)
    assert expl.targets.shape == (3, 3) and expl.positions.shape == (3, 3, 2)
    assert rel_err(expl.contributions.flatten(2).sum(-1), expl.explained) <= 1e-8
    # the chosen neuron is the most activated position of each chosen channel
    feats = {}
    h = model.get_submodule("features.5").register_forward_hook(lambda m, i, o: feats.__setitem__("o", o))
    model(x)
    h.remove()
    for n in range(3):
        c = expl.targets[n, 0]
        r, col = expl.positions[n, 0]
        assert feats["o"][n, c, r, col] == feats["o"][n, c].max()
    fixed = model.explain(x, layer="features.5", target=2, position=(1, 1))
    assert torch.allclose(fixed.explained[:, 0], feats["o"][:, 2, 1, 1].detach(), rtol=1e-12, atol=0)


def test_multi_target_equals_one_at_a_time_and_repeats_are_identical(small):
    model, x = small
    many = model.explain(x, target=torch.tensor([[1, 7], [2, 3], [9, 0]]))
    for j in range(2):
        one = model.explain(x, target=many.targets[:, j])
        assert torch.equal(one.weights[:, 0], many.weights[:, j])
    again = model.explain(x, target=torch.tensor([[1, 7], [2, 3], [9, 0]]))
    assert torch.equal(again.weights, many.weights)


def test_batched_equals_per_image(small):
    model, x = small
    batch = model.explain(x, topk=2)
    for i in range(x.shape[0]):
        single = model.explain(x[i:i + 1], target=batch.targets[i:i + 1])
        assert rel_err(single.weights[0], batch.weights[i]) <= 1e-12


def test_target_forms(small):
    model, x = small
    assert torch.equal(model.explain(x).targets[:, 0], model(x).argmax(1))
    assert (model.explain(x, target=4).targets == 4).all()
    top = model.explain(x, topk=5)
    assert torch.equal(top.targets, model(x).topk(5, 1).indices)
    with pytest.raises(ValueError, match="one per image"):
        model.explain(x, target=[1, 2])
    with pytest.raises(ValueError, match=r"in \[0, 9\]"):
        model.explain(x, target=10)
    with pytest.raises(ValueError, match="no layer 'features.55'.*did you mean"):
        model.explain(x, layer="features.55")
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        model.explain(x[0])
    with pytest.raises(ValueError, match="pass layer= too"):
        model.explain(x, position=(0, 0))
    model.add_module("idle", torch.nn.Identity())  # exists, never runs
    try:
        with pytest.raises(ValueError, match="'idle' was not called during the forward pass"):
            model.explain(x, layer="idle")
    finally:
        del model.idle
    assert not any(m._forward_hooks for m in model.modules())  # a refused call leaves no hook behind


def test_delta_explanation_is_the_difference(small):
    model, x = small
    d = model.explain(x, delta=(3, 8))
    a, b = model.explain(x, target=3), model.explain(x, target=8)
    assert rel_err(d.contributions, a.contributions - b.contributions) <= 1e-12
    assert rel_err(d.explained, a.explained - b.explained) <= 1e-12


def test_leaves_no_trace(small):
    model, x = small
    x = x.clone().requires_grad_(True)
    model.train()
    with pytest.warns(UserWarning, match="training mode"):
        model.explain(x)
    assert model.training
    model.eval()
    with torch.no_grad():
        e1 = model.explain(x)
    e2 = model.explain(x)
    assert x.grad is None
    assert all(p.grad is None for p in model.parameters())
    assert not any(getattr(m, "is_in_explanation_mode", False) for m in model.modules())
    assert torch.equal(e1.weights, e2.weights)
    assert not model.training


def test_rgba_rendering_follows_the_paper(small):
    model, x = small
    expl = model.explain(x, topk=2)
    rgba = expl.rgba()
    assert rgba.shape == (3, 2, 32, 32, 4) and rgba.dtype == np.float32
    assert (rgba >= 0).all() and (rgba <= 1).all()
    neg = (expl.contributions <= 0).numpy()
    assert (rgba[..., 3][neg] == 0).all()  # only positively contributing pixels are shown
    # opacity: ||w|| / p99.5, clipped at 1
    w = expl.weights[0, 0]
    norm = w.norm(dim=0)
    norm[expl.contributions[0, 0] <= 0] = 0
    p = torch.quantile(norm.flatten(), 0.995)
    assert np.allclose(rgba[0, 0, ..., 3], (norm / p).clamp(0, 1).numpy(), atol=1e-6)


def test_rgba_colour_decodes_the_weight_angle():
    """A weight aligned with colour [r, g, b, 1-r, 1-g, 1-b] renders as that colour."""
    from timm_bcos.explain.render import weights_to_rgba

    colour = torch.tensor([0.9, 0.2, 0.5], dtype=torch.float64)
    w = torch.cat([colour, 1 - colour])[None, :, None, None].expand(1, 6, 4, 4) * 3.0
    rgba = weights_to_rgba(w, w / 3.0)
    assert np.allclose(rgba[0, 1, 1, :3], colour.numpy(), atol=1e-6)
    assert np.allclose(rgba[0, ..., 3], 1.0)


def test_grid_png_is_written(tmp_path, small):
    from timm_bcos.explain.render import save_explanation_grid

    model, x = small
    out = save_explanation_grid(tmp_path / "grid.png", x, model.explain(x, topk=2), class_names=[str(i) for i in range(10)])
    assert out.exists() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))


def test_captum_style_attribution_sums_to_the_logit(small):
    from timm_bcos.explain import BcosAttribution

    model, x = small
    attr = BcosAttribution(model).attribute(x, target=torch.tensor([1, 2, 3]))
    assert attr.shape == x.shape
    expl = model.explain(x, target=torch.tensor([1, 2, 3]))
    assert rel_err(attr.flatten(1).sum(1), expl.explained[:, 0]) <= 1e-10


def test_weights_are_the_detached_map_not_the_plain_gradient(small):
    """B-cos layers are 1-homogeneous, so sum(grad * x) equals the output with or without
    explanation mode; the weights themselves differ (here by the factor B=2 per layer path)."""
    model, x = small
    expl = model.explain(x, target=2)
    captured = {}
    h = model.input_encoding().register_forward_hook(lambda m, i, o: captured.__setitem__("e", o.detach().requires_grad_(True)) or captured["e"])
    logits = model(x)
    h.remove()
    (plain,) = torch.autograd.grad(logits[:, 2].sum(), captured["e"])
    assert rel_err(plain, expl.weights[:, 0]) > 1e-2
    assert rel_err((plain * captured["e"]).flatten(1).sum(1), expl.explained[:, 0]) <= 1e-4  # up to eps terms


def test_cli_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch, capsys):
    """Pretrained weights out of reach (offline, an empty cache) and an error no command words itself: one
    line that says what failed; `--debug`, before or after the command, lets the exception through."""
    import huggingface_hub.constants

    from timm_bcos.__main__ import main
    from timm_bcos.cli import explain as explain_cli

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    image = tmp_path / "img.png"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    args = ["explain", "--model", "bcos_resnet18", "--pretrained", str(image), "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    message = str(exit_info.value.code)
    assert message.startswith("error: cannot get the pretrained weights of bcos_resnet18: ") and "\n" not in message
    assert "--checkpoint FILE" in message and "HF_HUB_OFFLINE=1" in message
    import timm

    def mismatch(*a, **k):  # a failure that is not about the network gets no network hint
        raise RuntimeError("size mismatch for fc.weight")

    with monkeypatch.context() as m:
        m.setattr(timm, "create_model", mismatch)
        with pytest.raises(SystemExit, match=r"^error: RuntimeError: size mismatch for fc.weight \(--debug"):
            main(args)
        with pytest.raises(RuntimeError, match="size mismatch"):
            main([*args, "--debug"])

    def broken(args):
        raise RuntimeError("something inside went wrong\n  with a second line")

    monkeypatch.setattr(explain_cli, "explain_main", broken)
    parse_only = ["explain", "--model", "bcos_cifar10", str(image), "--out", str(tmp_path / "g.png")]
    with pytest.raises(SystemExit, match=r"^error: RuntimeError: something inside went wrong \(--debug shows the "
                                         r"traceback\)$"):
        main(parse_only)
    for debug in (["--debug", *parse_only], [*parse_only, "--debug"]):
        with pytest.raises(RuntimeError, match="second line"):
            main(debug)


def test_cli_explains_images_and_reports_bad_input(tmp_path, capsys):
    from PIL import Image

    from timm_bcos.__main__ import main

    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.default_rng(i).random((40, 40, 3)) * 255).astype("uint8")).save(p)
        paths.append(str(p))
    out = tmp_path / "grid.png"
    assert main(["explain", "--model", "bcos_cifar10", *paths, "--topk", "2", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "wrote" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown model 'bcos_resnet5'.*bcos_resnet50"):
        main(["explain", "--model", "bcos_resnet5", paths[0], "--out", str(out)])
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(SystemExit, match="cannot read image .*bad.png"):
        main(["explain", "--model", "bcos_cifar10", str(bad), "--out", str(out)])
    with pytest.raises(SystemExit, match="image not found"):
        main(["explain", "--model", "bcos_cifar10", str(tmp_path / "missing.png"), "--out", str(out)])
