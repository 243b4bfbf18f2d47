"""timm_bcos.eval.quantus_metrics: Quantus's metrics on any timm_bcos model with any of our methods."""
import numpy as np
import pytest
import torch

quantus = pytest.importorskip("quantus", reason="the metrics extra is not installed")  # make test installs it
from timm_bcos.eval import attribution as attribution_module  # noqa: E402
from timm_bcos.eval.quantus_metrics import METRICS, bootstrap_ci, explain_func, quantus_scores  # noqa: E402


@pytest.fixture(scope="module")
def shipped():
    """The shipped CIFAR-10 model and the 8 sample images with its predicted classes."""
    import timm

    from timm_bcos.cli.demo import load_samples

    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10_w050_bnu", pretrained=True).eval()
    images, _ = load_samples()
    with torch.no_grad():
        return model, images, model(images).argmax(1)


def test_explain_func_is_the_method_s_maps_as_quantus_takes_them(shipped):
    model, images, targets = shipped
    maps = explain_func(model, images.numpy(), targets.numpy(), method="own")
    assert maps.shape == (8, 1, 32, 32) and maps.dtype == np.float32
    expected = attribution_module.attribution_maps(model, images, targets, "own")
    assert np.array_equal(maps[:, 0], expected.numpy())


def test_four_metrics_with_intervals_on_a_bcos_model(shipped):
    model, images, targets = shipped
    for method in ("own", "ixg"):
        scores = quantus_scores(model, images, targets, method=method)
        assert set(scores) == set(METRICS) == {"pixel_flipping", "random_logit", "mprt", "sparseness"}
        for name, s in scores.items():
            low, high = s["ci95"]
            assert s["n"] == 8 and np.isfinite(s["mean"]) and low <= s["mean"] <= high, (method, name, s)
    with pytest.raises(ValueError, match="unknown metrics"):
        quantus_scores(model, images, targets, metrics=["roar"])


def test_maps_reach_quantus_as_given(shipped, monkeypatch):
    """A map with all its mass on one pixel has sparseness ~1, a nearly flat one ~0: the adapter hands Quantus
    the maps themselves (shape, channel, order)."""
    model, images, targets = shipped

    def one_pixel(model, x, t):
        a = torch.zeros(x.shape[0], *x.shape[-2:])
        a[:, 5, 7] = 1.0
        return a

    monkeypatch.setitem(attribution_module.ATTRIBUTION_METHODS, "one_pixel", one_pixel)
    def nearly_flat(model, x, t):  # Quantus refuses a map of equal values
        return 1 + 0.05 * torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))

    monkeypatch.setitem(attribution_module.ATTRIBUTION_METHODS, "nearly_flat", nearly_flat)
    peaked = quantus_scores(model, images, targets, method="one_pixel", metrics=["sparseness"])["sparseness"]
    flat = quantus_scores(model, images, targets, method="nearly_flat", metrics=["sparseness"])["sparseness"]
    assert peaked["mean"] > 0.95 and flat["mean"] < 0.05


def test_bootstrap_interval():
    assert bootstrap_ci([0.3] * 20) == pytest.approx((0.3, 0.3, 0.3), rel=1e-12)
    mean, low, high = bootstrap_ci([0.0, 1.0] * 50)
    assert mean == 0.5 and 0.38 < low < 0.5 < high < 0.62  # about 2 standard errors (0.05) either side
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])


def test_a_conventional_model_sees_normalised_images_in_quantus_too():
    """Quantus runs the model itself (scores, randomised copies): behind the model's mean/std, as the methods."""
    import timm

    import timm_bcos  # noqa: F401  (registers cifar_convnet)

    torch.manual_seed(0)
    model = timm.create_model("cifar_convnet", width=0.25).eval()
    seen = []
    model.register_forward_pre_hook(  # Quantus's own passes (the methods' take gradients)
        lambda m, args: None if args[0].requires_grad else seen.append(float(args[0].mean())))
    images = torch.rand(4, 3, 32, 32) * 0.2 + 0.8  # bright: a mean of 0.9 before normalisation
    scores = quantus_scores(model, images, torch.tensor([0, 1, 2, 3]), method="ixg", metrics=["pixel_flipping"])
    assert np.isfinite(scores["pixel_flipping"]["mean"])
    assert seen and max(seen) > 1.0  # (0.9 - mean) / std of CIFAR-10's statistics: never the raw 0.9
    wrapped = attribution_module.Normalised(model)
    x, t = images.numpy(), np.array([0, 1, 2, 3])
    assert np.array_equal(explain_func(wrapped, x, t, method="ixg"), explain_func(model, x, t, method="ixg"))
