"""timm's model contract and dynamic linearity for every registered bcos_* model."""
import math

import pytest
import timm
from timm.models.inception_v3 import InceptionB, InceptionD
import torch

import timm_bcos  # noqa: F401  (registers the entrypoints)
from helpers import calibrate_bn, image_size, model_contributions, rel_err, shallow

MODELS = timm.list_models("bcos_*")
EXPECTED = {
    "bcos_resnet18", "bcos_resnet34", "bcos_resnet50", "bcos_resnet101", "bcos_resnet152",
    "bcos_resnext50_32x4d", "bcos_densenet121", "bcos_densenet161", "bcos_densenet169",
    "bcos_densenet201", "bcos_vgg11_bnu", "bcos_convnext_tiny", "bcos_convnext_base",
    "bcos_convnext_tiny_bnu", "bcos_convnext_base_bnu", "bcos_resnet34_v1", "bcos_densenet121_v1",
    "bcos_vgg11_v1", "bcos_inception_v3_v1", "bcos_cifar10",
    *(f"bcos_simple_vit_{s}_patch16_224" for s in ("ti", "s", "b", "l")),
    *(f"bcos_vitc_{s}_patch1_14" for s in ("ti", "s", "b", "l")),
    "bcos_resnet18_bcosified", "bcos_resnet50_bcosified", "bcos_densenet121_bcosified",
    *(f"bcos_simple_vit_{s}_patch16_224_bcosified" for s in ("ti", "s", "b", "l")),
    *(f"bcos_vitc_{s}_patch1_14_bcosified" for s in ("ti", "s", "b", "l")),
}


def test_registry_lists_every_model():
    assert EXPECTED <= set(MODELS), sorted(EXPECTED - set(MODELS))
    for name in MODELS:
        assert timm.is_model(name)


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_default_cfg_and_reset_classifier(name):
    model = timm.create_model(name, **shallow(name), num_classes=7)
    cfg = model.pretrained_cfg
    sd = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in sd, cfg["first_conv"]
    assert f"{cfg['classifier']}.weight" in sd, cfg["classifier"]
    assert tuple(cfg["mean"]) == (0, 0, 0) and tuple(cfg["std"]) == (1, 1, 1)
    assert "logit_layer.logit_bias" in sd
    assert math.isclose(model.logit_layer.logit_bias.item(), -math.log(6), rel_tol=1e-6)

    x = torch.rand(2, 3, image_size(name), image_size(name))
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing[:5]}"

    feats = model.forward_features(x)
    if feats.dim() == 3:  # ViTs: tokens [N, T, C]
        assert feats.shape[0] == 2 and feats.shape[-1] == model.num_features
    else:
        assert feats.shape[:2] == (2, model.num_features)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape == (2, getattr(model, "head_hidden_size", model.num_features))
    assert torch.allclose(model.forward_head(feats), out, rtol=1e-5, atol=1e-6)

    # the same model in eval mode, its classifier reset (one model built per registered name)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        model.reset_classifier(5)
        assert model(x).shape == (2, 5)
        assert math.isclose(model.logit_layer.logit_bias.item(), -math.log(4), rel_tol=1e-6)
        assert type(model.get_classifier()).__name__ in ("BcosConv2d", "BcosLinear")
        model.reset_classifier(0)
        assert model(x).shape == (2, getattr(model, "head_hidden_size", model.num_features))
        if "vgg" not in name:  # timm's VGG head keeps its conv MLP whatever the pooling
            model.reset_classifier(0, "")
            assert model(x).shape == feats.shape


@pytest.mark.parametrize("name", MODELS)
def test_features_only(name):
    model = timm.create_model(name, features_only=True)
    # unpadded convs: nominal reductions only at 299; the ViTs at the full size they are built for here
    size = 299 if "inception" in name else 224 if "vit" in name else image_size(name)
    x = torch.rand(1, 3, size, size)
    outs = model(x)
    assert [o.shape[1] for o in outs] == model.feature_info.channels()
    for o, r in zip(outs, model.feature_info.reduction()):
        assert abs(size / o.shape[-1] - r) / r < 0.2, (o.shape, r)
    assert all(torch.isfinite(o).all() for o in outs)


# (timm's VGG does not implement gradient checkpointing; neither does bcos_vgg11_*)
@pytest.mark.parametrize("name", ["bcos_resnet18", "bcos_densenet121", "bcos_convnext_tiny", "bcos_cifar10"])
def test_grad_checkpointing_gives_the_same_result(name):
    torch.manual_seed(0)
    model = timm.create_model(name).double().train()
    x = torch.rand(2, 3, image_size(name), image_size(name), dtype=torch.float64)
    ref = model(x)
    model.set_grad_checkpointing(True)
    out = model(x)
    out.sum().backward()
    assert rel_err(out - out.mean(1, keepdim=True), ref - ref.mean(1, keepdim=True)) <= 1e-10


@pytest.mark.parametrize("name", ["bcos_resnet18", "bcos_cifar10"])
def test_bcos_kwargs_reach_the_layers(name):
    model = timm.create_model(name, b=2.5, max_out=3, logit_temperature=0.5, logit_bias=-1.0)
    convs = [m for m in model.modules() if type(m).__name__ == "BcosConv2d"]
    assert convs and all(c.b == 2.5 and c.max_out == 3 for c in convs)
    assert model.logit_layer.logit_temperature.item() == 0.5 and model.logit_layer.logit_bias.item() == -1.0


@pytest.mark.parametrize("bad,msg", [
    (torch.rand(1, 1, 64, 64), r"\[N, 3, H, W\].*\(1, 1, 64, 64\)"),
    (torch.rand(3, 64, 64), r"\[N, 3, H, W\].*\(3, 64, 64\)"),
])
def test_bad_input_says_what_the_model_expects(bad, msg):
    model = timm.create_model("bcos_resnet18")
    with pytest.raises(ValueError, match=msg):
        model(bad)


def test_in_chans_other_than_rgb_is_refused():
    with pytest.raises(ValueError, match="in_chans=3"):
        timm.create_model("bcos_resnet18", in_chans=1)


@pytest.mark.parametrize("name,small", [("bcos_densenet121", 16), ("bcos_inception_v3_v1", 64), ("bcos_convnext_tiny", 24)])
def test_images_below_the_minimum_size_are_refused(name, small):
    model = timm.create_model(name)
    with pytest.raises(ValueError, match=rf"needs images of at least \d+x\d+ pixels, got {small}x{small}"):
        model(torch.rand(1, 3, small, small))


@pytest.mark.parametrize("max_pool_to_avg", [True, False])
def test_inception_reduction_blocks_pool_as_the_recipe_says(max_pool_to_avg):
    """Inception's reduction blocks pool in their forward (F.max_pool2d): the family's rule makes
    that branch average where the recipe turns max pooling into average pooling (v1, Sec. 3.3)."""
    model = timm.create_model("bcos_inception_v3_v1", max_pool_to_avg=max_pool_to_avg).eval()
    pool = torch.nn.functional.avg_pool2d if max_pool_to_avg else torch.nn.functional.max_pool2d
    for block in (model.Mixed_6a, model.Mixed_7a):  # InceptionB, InceptionD: the pooled input comes last
        channels = next(m for m in block.modules() if hasattr(m, "in_channels")).in_channels
        x = torch.rand(1, channels, 17, 17)
        assert torch.equal(block(x)[:, -channels:], pool(x, kernel_size=3, stride=2))


def test_family_block_rules_reach_wrapped_and_features_only_models():
    """The Inception blocks' rule is keyed by the block type, not by the model around it."""
    from timm_bcos import convert

    wrapped = torch.nn.Sequential(timm.create_model("inception_v3", num_classes=4))
    features = timm.create_model("inception_v3", features_only=True)
    for model in (convert(wrapped, "v1"), convert(features, "v1")):
        blocks = [m for m in model.modules() if isinstance(m, (InceptionB, InceptionD))]
        assert len(blocks) == 2 and all(type(b).__name__.startswith("AvgPool") for b in blocks), \
            [type(b).__name__ for b in blocks]


def test_cifar_network_with_uncentered_batch_norm():
    from timm_bcos.layers import BatchNormUncentered2d

    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10", width=0.25, norm=True).double()
    norms = [m for m in model.modules() if isinstance(m, BatchNormUncentered2d)]
    assert len(norms) == 8 and all(n.bias is None for n in norms)
    assert model.bcos.model_args["norm"] is True
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    calibrate_bn(model, x)
    contrib, pre, _ = model_contributions(model, x, torch.tensor([0, 1, 2]))
    assert rel_err(contrib, pre) <= 1e-8


@pytest.mark.parametrize("name", ["bcos_simple_vit_ti_patch16_224", "bcos_vitc_ti_patch1_14_bcosified"])
def test_a_vit_built_for_another_input_size_takes_it(name, tmp_path):
    """train.py --img-size builds a fixed-size ViT with img_size=...: its cfg (input and minimum size)
    follows, so that the model takes the images it was built for."""
    model = timm.create_model(name, img_size=96, num_classes=3).eval()
    assert model.pretrained_cfg["input_size"] == (3, 96, 96) == model.pretrained_cfg["min_input_size"]
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 3)
    assert timm.create_model(name).pretrained_cfg["input_size"] == (3, 224, 224)
    # what train.py exports loads back through timm for the size it was built for, with the same outputs
    from timm_bcos.hub import save_pretrained

    save_pretrained(model, tmp_path / "m")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).eval()
    assert loaded.pretrained_cfg["input_size"] == (3, 96, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
