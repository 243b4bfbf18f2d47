"""The conversion pass over timm families: runs, dynamic linear, nothing conventional left behind."""
import pytest
import timm
import torch
from torch import nn

from helpers import calibrate_bn, leftovers, model_contributions, rel_err
from timm_bcos import ConversionError, convert, verify
from timm_bcos import layers as L

# the families' conversion, leftovers, completeness and `verify` run in test_families.py (at 64 px
# where a network reduces by 32); here a ViT without class token or position embedding, whose
# explanation has no fixed term
FAMILIES = {
    "vit (no class token, no position embedding)": (
        "test_vit", dict(class_token=False, pos_embed="none", global_pool="avg", img_size=32), 32),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_converts_and_is_dynamic_linear(family):
    name, kwargs, size = FAMILIES[family]
    torch.manual_seed(0)
    model = convert(timm.create_model(name, num_classes=5, **kwargs)).double()
    assert not leftovers(model), leftovers(model)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    calibrate_bn(model, x)
    contrib, pre, _ = model_contributions(model, x, torch.tensor([0, 3]))
    assert (pre != 0).all()
    assert rel_err(contrib, pre) <= 1e-4
    verify(model, x)


def test_vit_position_embedding_and_class_token_are_input_independent_terms():
    """Status of ViTs: they convert and run; an absolute position embedding or a class
    token is added whatever the input, so contributions miss that share."""
    torch.manual_seed(0)
    model = convert(timm.create_model("test_vit", num_classes=5, img_size=32)).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    contrib, pre, _ = model_contributions(model, x, torch.tensor([0, 3]))
    assert rel_err(contrib, pre) > 1e-3


def test_unknown_module_names_its_type_and_path():
    class Weird(nn.Module):
        def forward(self, x):
            return x.exp()

    model = timm.create_model("test_resnet", num_classes=3)
    model.layer1[0].weird = Weird()
    with pytest.raises(ConversionError, match=r"Weird at 'layer1\.0\.weird'"):
        convert(model)


def test_extra_rules_extend_the_table():
    class Weird(nn.Module):
        def forward(self, x):
            return x.exp()

    model = timm.create_model("test_resnet", num_classes=3)
    model.layer1[0].weird = Weird()
    out = convert(model, rules={Weird: lambda m, path, ctx: nn.Identity()})
    assert isinstance(out.layer1[0].weird, nn.Identity)


def test_unsupported_module_says_why():
    from timm.layers import Conv2dSame

    model = timm.create_model("test_resnet", num_classes=3)
    model.layer1[0].conv1 = Conv2dSame(model.layer1[0].conv1.in_channels, model.layer1[0].conv1.out_channels, 3)
    with pytest.raises(ConversionError, match=r"layer1\.0\.conv1.*Conv2dSame.*SAME"):
        convert(model)


def test_carry_weights_bcosifies_a_conventional_model():
    torch.manual_seed(0)
    conv = timm.create_model("resnet18", num_classes=3)
    w_stem, w_fc = conv.conv1.weight.detach().clone(), conv.fc.weight.detach().clone()
    w_bn = conv.bn1.weight.detach().clone()
    model = convert(conv, carry_weights=True)
    assert torch.equal(model.conv1.weight[:, :3], w_stem)
    assert torch.equal(model.conv1.weight[:, 3:], torch.zeros_like(w_stem))
    assert torch.equal(model.fc.weight[:, :, 0, 0], w_fc)
    assert torch.equal(model.bn1.weight, w_bn) and model.bn1.bias is None
    fresh = convert(timm.create_model("resnet18", num_classes=3))
    assert not torch.equal(fresh.fc.weight[:, :, 0, 0], w_fc)


def test_carry_weights_with_max_out_duplicates_units():
    conv = timm.create_model("test_resnet", num_classes=3)
    w = conv.fc.weight.detach().clone()
    model = convert(conv, carry_weights=True, max_out=2)
    assert torch.equal(model.fc.weight[0::2, :, 0, 0], w) and torch.equal(model.fc.weight[1::2, :, 0, 0], w)


def test_recipe_overrides_and_errors():
    model = convert(timm.create_model("test_resnet", num_classes=3), "v1", b=1.5)
    convs = [m for m in model.modules() if isinstance(m, L.BcosConv2d)]
    assert all(c.b == 1.5 and c.max_out == 2 and c.scale is not None for c in convs)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.MaxPool2d)) for m in model.modules())
    with pytest.raises(TypeError, match="unknown recipe fields"):
        convert(timm.create_model("test_resnet"), bogus=1)
    with pytest.raises(ValueError, match="unknown recipe"):
        convert(timm.create_model("test_resnet"), "v9")
    with pytest.raises(ValueError, match="b must be >= 1"):
        convert(timm.create_model("test_resnet"), b=0.5)


def test_v2_head_puts_the_classifier_before_pooling():
    model = convert(timm.create_model("test_resnet", num_classes=4))
    assert isinstance(model.fc, L.BcosConv2d) and model.fc.kernel_size == (1, 1)
    generic = convert(timm.create_model("test_resnet", num_classes=4), head=None)
    assert isinstance(generic.fc, L.BcosLinear)


def test_head_argument_is_checked():
    with pytest.raises(TypeError, match="takes 'auto', None or a HeadSpec, got 'none'"):
        convert(timm.create_model("test_resnet", num_classes=4), head="none")
