"""B-cosification (Arya, Rao, Boehle, Schiele, NeurIPS 2024) as the `bcosify` recipe.

The paper's premise, exactly: a conventional model is a B-cos model with B=1 and its biases, so
`convert(m, "bcosify", carry_weights=True, b=1, <biases kept>)` computes m (on the images m's
transform would normalise), float64, relative 1e-10, for every family of test_families.py it can
hold for. With B=2 and no biases the converted family is complete and passes `verify`.
"""
import copy

import pytest
import timm
import torch
from torch import nn

from helpers import calibrate_bn, rel_err
from test_families import COMPLETE, WITH_FIXED_SHARE
from timm_bcos import ConversionError, NotDynamicLinearError, convert, verify
from timm_bcos.convert import recurse
from timm_bcos.layers import BatchNormActUncentered2d, BcosConv2d, BcosLinear, GatedActivation, NormalizedEncoding

# sizes where the last feature map is at least 2x2 (test_families' 32 px leaves 1x1 for these, which
# hides what the head's order does: a ConvNeXt head-order error hid there); kwargs as the size needs
AT_2X2 = {**dict.fromkeys(["seresnext", "resnest", "densenetblur", "convnextv2", "mobilenetv2", "mobilenetv4",
                          "mnasnet", "lcnet", "darknet", "vovnet", "byobnet", "repvgg", "mobileone", "nfnet",
                          "tresnet", "selecsls", "hgnet", "inception_next", "poolformer", "fastvit", "mambaout",
                          "edgenext"], ({}, 64)),
          "inception_v3": ({}, 107), "coatnet": (dict(img_size=64), 64), "levit": (dict(img_size=128), 128)}


def _at_2x2(name, kwargs, size, family):
    more, size = AT_2X2.get(family, ({}, size))
    return name, {**kwargs, **more}, size


FAMILIES = {f: _at_2x2(*spec[:3], f) for f, spec in {**COMPLETE, **WITH_FIXED_SHARE}.items()}
# where the premise cannot hold, and why (each a choice of the generic rules, not of the recipe)
PREMISE_EXCEPTIONS = {
    "mobilenetv2": "ReLU6 is not dynamic linear (min(relu(x), 6)): every recipe removes it",
    "rexnet": "ReLU6, as mobilenetv2",
    "convnextv2": "GlobalResponseNorm's bias is always dropped",
    "hgnet": "LearnableAffineBlock's bias is always dropped",
    "nfnet": "ScaledStdConv2d standardises its weights in forward; the rule carries the raw weights",
    "mobilevitv2": "its linear attention's ReLU on v is dropped",
    "efficientvit": "timm computes LiteMLA in float32, so the float64 reference is off by ~1e-7",
    "beit": "the q/v biases are dropped (attention_qkv_bias_rule)",
    "eva02": "the q/v biases are dropped (attention_qkv_bias_rule)",
    "tresnet": "a space-to-depth stem with a normalised input is refused (not supported yet)",
}
# the premise's recipe fields: B=1 with every bias, MaxPool kept, no logit bias
PREMISE = dict(b=1.0, linear_bias=True, norm_bias=True, max_pool_to_avg=False, logit_bias=0.0)


def _conventional(name, kwargs, size):
    """A conventional model in eval mode with random norm biases and running statistics of 16
    normalised images (well conditioned: the logits do not cancel), and 2 images in [0, 1]."""
    torch.manual_seed(0)
    # the cfg's input size is the test's: conversion probes composites off the certified list at it (float64)
    overlay = dict(input_size=(3, size, size))
    model = timm.create_model(name, num_classes=5, pretrained_cfg_overlay=overlay, **kwargs).double()
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in model.parameters():  # zero or layer-scale inits would hide a branch
            if p.abs().max() <= 1e-4:
                p.uniform_(0.5, 1.5)
        for m in norms:
            m.bias.normal_(0.0, 0.1)
            m.reset_running_stats()
            m.momentum = None
        model.train()(_normalised(model, torch.rand(16, 3, size, size, dtype=torch.float64)))
    return model.eval(), torch.rand(2, 3, size, size, dtype=torch.float64)


def _normalised(model, x):
    cfg = model.pretrained_cfg
    mean, std = (torch.tensor(cfg[k], dtype=torch.float64)[:, None, None] for k in ("mean", "std"))
    return (x - mean) / std


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "tresnet"])
def test_bcosified_family_keeps_the_premise_and_is_complete(family):
    """Both checks on one conventional model (building and calibrating it is most of the time): B=1 with
    biases is that model (unless PREMISE_EXCEPTIONS says why not); B=2 without biases is complete and
    passes `verify`."""
    name, kwargs, size = FAMILIES[family]
    model, x = _conventional(name, kwargs, size)
    if family not in PREMISE_EXCEPTIONS:
        with torch.no_grad():  # convert works in place: the premise takes a copy
            expected = model(_normalised(model, x))
            premise = convert(copy.deepcopy(model), "bcosify", carry_weights=True, **PREMISE).eval()
            assert rel_err(premise(x), expected) <= 1e-10
    bcos = convert(model, "bcosify", carry_weights=True).eval()
    with torch.no_grad():  # B=2 with random weights of their own scale: a norm-free stack (VGG) underflows
        for m in bcos.modules():
            if isinstance(m, (BcosConv2d, BcosLinear)):
                m.weight.div_(m.weight.flatten(1).norm(dim=1).view(-1, *[1] * (m.weight.dim() - 1)))
    calibrate_bn(bcos, x)
    expl = bcos.explain(x, target=torch.tensor([0, 3]))
    total = expl.contributions.sum((2, 3)) + expl.fixed_share
    assert (expl.explained.abs() > 0).all() and rel_err(total, expl.explained) <= 1e-9
    report = verify(bcos, x[:1])
    assert len(report.checked) >= 5 and not report.failures


def test_the_recipe_follows_the_paper():
    """Sec. 3.2 of the B-cosification paper, field by field (the README's table names them)."""
    model = convert(timm.create_model("resnet18", num_classes=5), "bcosify", carry_weights=True)
    r = model.bcos.recipe
    assert (r.b, r.max_out, r.weight_norm, r.linear_bias, r.norm_bias) == (2.0, 1, False, False, False)
    assert (r.activations, r.stem_init, r.normalize_input, r.max_pool_to_avg) == ("bcosify", "half_negated", True, True)
    assert r.input_mean == (0.485, 0.456, 0.406) and r.input_std == (0.229, 0.224, 0.225)  # resnet18's cfg
    assert isinstance(model.act1, nn.ReLU) and isinstance(model.maxpool, nn.AvgPool2d)
    assert isinstance(model.conv1.input_norm, NormalizedEncoding) and model.conv1.weight_norm is False
    assert all(getattr(m, "bias", None) is None for m in model.modules() if not isinstance(m, nn.Identity)
               and hasattr(m, "bias") and not hasattr(m, "logit_bias"))
    assert model.bcos.fixed_terms == ()
    assert model.fc.kernel_size == (1, 1)  # the classifier as a 1x1 B-cos conv before pooling


def test_learned_b_is_trained_and_keeps_the_premise_and_completeness():
    """The paper's learned-B ablation (learn_b=True): every B-cos layer's B is a 0-d parameter
    starting at the recipe's b. Starting at 1 with the biases it is still the conventional model;
    B gets gradients and a step moves it; explanations stay complete; a new classifier learns its B."""
    import copy

    conventional, x = _conventional("resnet18", dict(zero_init_last=False), 64)
    with torch.no_grad():
        expected = conventional(_normalised(conventional, x))
    at_one = convert(copy.deepcopy(conventional), "bcosify", carry_weights=True, learn_b=True, **PREMISE).eval()
    layers = [m for m in at_one.modules() if isinstance(m, (BcosConv2d, BcosLinear))]
    bs = [p for n, p in at_one.named_parameters() if n.endswith(".b")]
    assert len(bs) == len(layers) == 21 and all(p.dim() == 0 and p.item() == 1.0 for p in bs)
    assert rel_err(at_one(x), expected) <= 1e-10
    model = convert(copy.deepcopy(conventional), "bcosify", carry_weights=True, learn_b=True).train()
    bs = {n: p for n, p in model.named_parameters() if n.endswith(".b")}
    (model(x) - model.logit_layer.logit_bias).pow(2).sum().backward()
    assert all(p.grad is not None and p.grad != 0 for p in bs.values()), {n: p.grad for n, p in bs.items()}
    before = {n: p.item() for n, p in bs.items()}
    torch.optim.SGD(bs.values(), lr=0.1).step()
    assert all(p.item() != before[n] for n, p in bs.items())
    model.eval()
    expl = model.explain(x, target=torch.tensor([0, 3]))
    assert (expl.explained.abs() > 0).all() and rel_err(expl.contributions.sum((2, 3)), expl.explained) <= 1e-9
    assert not verify(model, x[:1]).failures
    assert f"b={model.fc.b.item():g} (learned)" in repr(model.fc)
    model.reset_classifier(7)
    assert isinstance(model.fc.b, nn.Parameter) and model.fc.b.dtype == torch.float64 and model.fc.b.item() == 2.0


def test_the_named_cifar_model_is_what_bcosify_from_makes_of_cifar_convnet():
    """`bcos_cifar10_w050_bcosified` (the tag a B-cosified CIFAR run ships under) has the layout and
    the function of `convert(cifar_convnet(width=0.5), "bcosify", carry_weights=True)`, which
    `train.py --bcosify-from` fine-tunes: its weights load strictly and give the same logits."""
    conventional, x = _conventional("cifar_convnet", dict(width=0.5), 32)
    bcosified = convert(conventional, "bcosify", carry_weights=True).eval()
    named = timm.create_model("bcos_cifar10_w050_bcosified", num_classes=5).double().eval()
    named.load_state_dict(bcosified.state_dict(), strict=True)
    assert named.bcos.recipe == bcosified.bcos.recipe  # the same normalisation (CIFAR-10's mean and std)
    with torch.no_grad():
        bias = bcosified.logit_layer.logit_bias  # compared without it: B-cos logits sit near it
        assert bias != 0 and rel_err(named(x) - bias, bcosified(x) - bias) <= 1e-12


def test_first_conv_starts_as_half_negated_weights():
    conventional = timm.create_model("resnet18", num_classes=5)
    w = conventional.conv1.weight.detach().clone()
    model = convert(conventional, "bcosify", carry_weights=True)
    assert torch.equal(model.conv1.weight.detach(), torch.cat([w, -w], 1) / 2)


def test_normalised_encoding_is_linear_and_equals_the_normalised_pair():
    norm = NormalizedEncoding((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)).double()
    x = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    e = torch.cat([x, 1 - x], 1)
    mean = torch.tensor([0.4, 0.5, 0.6, 0.6, 0.5, 0.4], dtype=torch.float64)[:, None, None]
    std = torch.tensor([0.2, 0.25, 0.3, 0.2, 0.25, 0.3], dtype=torch.float64)[:, None, None]
    assert torch.allclose(norm(e), (e - mean) / std, rtol=0, atol=1e-14)
    assert torch.allclose(norm(3 * e), 3 * norm(e), rtol=0, atol=1e-13)  # linear: no constant term


def test_a_normalising_recipe_needs_a_mean_and_std():
    model = nn.Sequential(nn.Conv2d(3, 4, 3))
    with pytest.raises(ConversionError, match="input_mean"):
        convert(model, "bcosify", head=None)


def test_batch_norm_act_keeps_its_activation_and_gates_smooth_ones():
    densenet = convert(timm.create_model("densenet121", num_classes=5), "bcosify")
    norm = densenet.features.denseblock1.denselayer1.norm1
    assert isinstance(norm, BatchNormActUncentered2d) and isinstance(norm.act, nn.ReLU) and norm.bias is None
    effnet = convert(timm.create_model("test_efficientnet", num_classes=5), "bcosify")
    assert isinstance(effnet.bn1.act, GatedActivation) and effnet.bn1.act.kind == "silu"
    v2 = convert(timm.create_model("densenet121", num_classes=5), "v2")  # the old recipe removes them
    assert type(v2.features.denseblock1.denselayer1.norm1).__name__ == "BatchNormUncentered2d"


def _metaformer(name):
    model = timm.create_model(name, num_classes=5)
    for stage in model.stages:  # one block per stage: every block type, a quarter of the time
        stage.blocks = stage.blocks[:1]
    return model


@pytest.mark.parametrize("name", ["caformer_s18", "convformer_s18"])
def test_star_relu_converts_and_is_certified(name):
    """StarReLU (s relu(x)^2 + b) holds an nn.ReLU child: walking into it removed the ReLU and left
    a quadratic (relative completeness error ~1). Its rule detaches one relu factor."""
    torch.manual_seed(0)
    model = convert(_metaformer(name), "v2").double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    calibrate_bn(model, x)
    assert len(verify(model, x).checked) > 50
    expl = model.explain(x, target=torch.tensor([1]))
    assert rel_err(expl.contributions.sum((2, 3)), expl.explained) <= 1e-9


def test_verify_names_a_module_that_is_not_dynamic_linear():
    """StarReLU walked into (as before its rule): verify fails and names each such module."""
    from timm.models.metaformer import StarReLU

    torch.manual_seed(0)
    model = convert(_metaformer("caformer_s18"), "v2", rules={StarReLU: recurse}).double()
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64)
    calibrate_bn(model, x)
    with pytest.raises(NotDynamicLinearError, match=r"stages\.0\.blocks\.0\.mlp\.act \(timm\.models\.metaformer"
                                                    r"\.StarReLU\)"):
        verify(model, x)


def test_verify_gives_the_model_back_as_it_was():
    """verify runs the model itself in float64: afterwards every parameter and buffer has its dtype back
    (`double()` replaces buffers, so restoring the old tensor objects missed the batch-norm statistics and a
    float32 forward after verify failed), and the modes are restored."""
    torch.manual_seed(0)
    model = convert(timm.create_model("resnet18", num_classes=4), "bcosify", carry_weights=True)
    model.train()
    before = {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]}
    x = torch.rand(2, 3, 64, 64)
    verify(model, x)
    assert {name: t.dtype for name, t in [*model.named_parameters(), *model.named_buffers()]} == before
    assert model.training and model.layer1[0].bn1.training
    model.eval()
    assert model(x).dtype == torch.float32 and model.explain(x).contributions.dtype == torch.float32


def test_verify_takes_a_plain_chain_from_its_links_only_when_each_passed_inside_it():
    """An nn.Sequential is certified by the chain rule once each link passed within its own call (not
    re-run); it is checked itself when a link failed, or was first called elsewhere (shared)."""
    from timm_bcos.convert.verify import SEQUENTIAL_IMPLIED

    torch.manual_seed(0)
    x = torch.rand(2, 4, 5, 5, dtype=torch.float64)
    links = lambda: [BcosConv2d(4, 4, 3, padding=1), nn.ReLU(), BcosConv2d(4, 4, 1)]  # noqa: E731
    report = verify(nn.Sequential(nn.Sequential(*links(), nn.Sequential(*links()))), x)  # the root holds the logit bias
    assert report.skipped["0"] == report.skipped["0.3"] == SEQUENTIAL_IMPLIED and "0" not in report.checked
    assert {"0.0", "0.2", "0.3.0", "0.3.2"} <= set(report.checked) and not report.failures

    squares = _Squares()
    squares.conv = BcosConv2d(4, 4, 1)
    failing = verify(nn.Sequential(nn.Sequential(BcosConv2d(4, 4, 1), squares)), x, raise_on_failure=False)
    assert [path for path, _, _ in failing.failures] == ["0.1", "0"]  # the chain itself re-checked, and failing

    class SharedFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.chain = nn.Sequential(BcosConv2d(4, 4, 1), nn.ReLU())
            object.__setattr__(self, "first", self.chain[0])  # unregistered: its only path is in the chain

        def forward(self, x):
            return self.chain(self.first(x))  # the link's first call, and so its check, is outside the chain

    shared = verify(nn.Sequential(SharedFirst()), x)
    assert "0.chain" in shared.checked and "0.chain" not in shared.skipped

    class Gate(nn.Module):  # y = x where the mean is positive, else x * x: degree 1 at this input only
        def forward(self, x):
            return x if x.mean() > 0 else x * x

    class Negate(nn.Module):
        def forward(self, x):
            return -x

    gate = Gate()  # the same link twice: its second run (on -x, so x * x) was never checked by itself
    twice = verify(nn.Sequential(nn.Sequential(gate, Negate(), gate)), x + 0.1, raise_on_failure=False)
    assert [path for path, _, _ in twice.failures] == ["0"]
    hooked = nn.Sequential(*links())  # a user's hook changes what the chain returns
    hooked.register_forward_hook(lambda module, args, out: out * out)
    assert [path for path, _, _ in verify(nn.Sequential(hooked), x, raise_on_failure=False).failures] == ["0"]


class _Squares(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        return self.conv(x) ** 2


class _TwoPaths(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.a, self.b = nn.Conv2d(channels, channels, 1), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)[:, ::2] + x


def test_a_composite_without_a_rule_that_fails_the_probe_is_refused_by_name():
    model = timm.create_model("test_resnet", num_classes=5)
    model.layer1[0].act1 = nn.Sequential(_Squares())  # hide it inside a plain container
    model.layer1[0].act1[0].conv = nn.Conv2d(model.layer1[0].conv1.out_channels, model.layer1[0].conv1.out_channels, 1)
    with pytest.raises(ConversionError, match=r"test_bcosify\._Squares at 'layer1\.0\.act1\.0': \|y - J\(x\) x\|"):
        convert(model, "v2")


def test_a_composite_without_a_rule_that_passes_the_probe_is_accepted():
    """Not on the certified list, but its forward only combines its children linearly: certified on
    a float64 probe of the model's input size, recorded in model.bcos.probed, explanations complete."""
    model = timm.create_model("test_resnet", num_classes=5)
    model.layer1[0].act1 = _TwoPaths(model.layer1[0].conv1.out_channels)
    model = convert(model, "v2").double()
    assert model.bcos.probed == ("layer1.0.act1",)
    x = torch.rand(2, 3, 64, 64, dtype=torch.float64)
    calibrate_bn(model, x)
    expl = model.explain(x, target=torch.tensor([0, 3]))
    assert rel_err(expl.contributions.sum((2, 3)), expl.explained) <= 1e-9
    assert "layer1.0.act1" in verify(model, x[:1]).checked


def test_a_container_subclass_with_its_own_forward_is_a_composite():
    class Doubling(nn.Sequential):
        def forward(self, x):
            return super().forward(x) * super().forward(x)

    model = timm.create_model("test_resnet", num_classes=5)
    model.layer1[0].act1 = Doubling(nn.ReLU())
    with pytest.raises(ConversionError, match="Doubling"):
        convert(model, "v2")


def test_every_certified_composite_is_verified_by_a_family_test():
    """convert/composites.py certifies blocks by name; each must occur in a family that
    test_families.py / this file run `verify` on (on the meta device here: types only)."""
    from timm_bcos.convert.composites import CERTIFIED, certified_composites

    from test_convert import FAMILIES as CONVERTED

    seen = set()
    for name, kwargs, _ in [*FAMILIES.values(), *CONVERTED.values()]:
        with torch.device("meta"):
            seen |= {type(m) for m in timm.create_model(name, num_classes=5, **kwargs).modules()}
    with torch.device("meta"):  # the metaformer test above
        seen |= {type(m) for m in _metaformer("caformer_s18").modules()}
    names = {f"{m}.{n}" for m, ns in CERTIFIED.items() for n in ns}
    unverified = sorted(f"{c.__module__}.{c.__qualname__}" for c in certified_composites() - seen
                        if f"{c.__module__}.{c.__qualname__}" in names)
    assert not unverified, f"certified but never verified: {unverified}"


@pytest.mark.parametrize("kwargs", [{}, dict(head_norm_first=True), dict(head_hidden_size=16)],
                         ids=["pool-norm-fc", "head_norm_first", "hidden_head"])
def test_convnext_heads_keep_the_premise_and_round_trip(kwargs, tmp_path):
    """ConvNeXt's head is pool -> norm -> fc: carried weights keep that order (B=1 exact at a 2x2 map);
    head_norm_first (norm before the pool) takes the v2 layout; the saved config rebuilds the same head."""
    from timm_bcos.hub import save_pretrained

    model, x = _conventional("test_convnext", kwargs, 64)
    with torch.no_grad():
        expected = model(_normalised(model, x))
        premise = convert(model, "bcosify", carry_weights=True, **PREMISE).eval()
        assert rel_err(premise(x), expected) <= 1e-10
    assert (premise.bcos.head is not None) == ("head_norm_first" in kwargs)
    save_pretrained(premise, tmp_path / "m")
    loaded = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=True).double().eval()
    assert loaded.bcos.head == premise.bcos.head
    with torch.no_grad():  # the weights are stored in float32; the other head order is ~0.5 off
        assert rel_err(loaded(x), premise(x)) <= 1e-5
