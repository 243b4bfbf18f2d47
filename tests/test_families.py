"""B-cosify (almost) any timm model: one small variant per family, converted with the v2 recipe,
run and explained in float64; contributions + the fixed terms' shares = explained output (the
logit without its bias), exactly. The README's families table mirrors these lists."""
import pytest
import timm
import torch

from helpers import calibrate_bn, leftovers, rel_err
from timm_bcos import ConversionError, convert, verify

# xception41's blocks with its middle flow's 8 identical blocks as one
XCEPTION_ONE_MIDDLE_BLOCK = [
    dict(in_chs=64, out_chs=128, stride=2), dict(in_chs=128, out_chs=256, stride=2),
    dict(in_chs=256, out_chs=728, stride=2), dict(in_chs=728, out_chs=728, stride=1),
    dict(in_chs=728, out_chs=(728, 1024, 1024), stride=2),
    dict(in_chs=1024, out_chs=(1536, 1536, 2048), stride=1, no_skip=True, start_with_relu=False)]
# family -> (timm model, kwargs that only shrink it, input size, fixed terms expected). 64 px where the
# network reduces by 32 gives a 2x2 last map (a 1x1 map would hide what pooling and head order do);
# Swin's second block shifts its windows
COMPLETE = {
    "resnet": ("test_resnet", {}, 64), "resnetv2": ("resnetv2_18", {}, 64),
    # PreActBottleneck (BiT) and RepGhost's blocks are not on the certified list: certified on a probe
    "resnetv2_bit": ("resnetv2_50", {}, 64), "repghost": ("repghostnet_050", {}, 64),
    "res2net": ("res2net50_14w_8s", {}, 64), "seresnext": ("seresnext26d_32x4d", {}, 32),
    "resnest": ("resnest14d", {}, 32), "densenet": ("densenet121", {}, 64),
    "densenetblur": ("densenetblur121d", {}, 32), "vgg": ("vgg11", dict(mlp_ratio=1 / 64), 64),
    "inception_v3": ("inception_v3", {}, 75), "convnext": ("test_convnext", {}, 64),
    "convnextv2": ("convnextv2_atto", {}, 32), "efficientnet": ("test_efficientnet", {}, 64),
    "mobilenetv2": ("mobilenetv2_050", {}, 32), "mobilenetv3": ("mobilenetv3_small_050", {}, 64),
    "mobilenetv4": ("mobilenetv4_conv_small", {}, 32), "mnasnet": ("mnasnet_small", {}, 32),
    "lcnet": ("lcnet_050", {}, 32), "regnet": ("regnety_002", {}, 64),
    "rexnet": ("rexnet_100", {}, 64), "ghostnet": ("ghostnet_050", {}, 64),
    "ghostnetv2": ("ghostnetv2_100", {}, 64), "dla": ("dla46_c", {}, 64), "dla_basic": ("dla34", {}, 64),
    "cspnet": ("cspresnet50", {}, 64), "darknet": ("cspdarknet53", {}, 32),
    "dpn": ("dpn68", {}, 64), "xception": ("xception41", dict(block_cfg=XCEPTION_ONE_MIDDLE_BLOCK), 64),
    "hrnet": ("hrnet_w18_small", {}, 64), "vovnet": ("ese_vovnet19b_slim", {}, 32),
    "byobnet": ("test_byobnet", {}, 32), "repvgg": ("repvgg_a0", {}, 32),
    "mobileone": ("mobileone_s0", {}, 32), "nfnet": ("test_nfnet", {}, 32),
    "tresnet": ("tresnet_m", {}, 32), "selecsls": ("selecsls42b", {}, 32),
    "hgnet": ("hgnetv2_b0", {}, 32), "convmixer": ("convmixer_768_32", {}, 32),
    "inception_next": ("inception_next_atto", {}, 32), "mobilevit": ("mobilevit_xxs", {}, 64),
    "poolformer": ("poolformer_s12", {}, 32), "fastvit": ("fastvit_t8", {}, 32),
    "efficientformer": ("efficientformer_l1", {}, 224), "levit": ("levit_128s", dict(img_size=32), 32),
    "swin": ("swin_tiny_patch4_window7_224", dict(img_size=56, depths=(2, 1, 1, 1)), 56),
    "coatnet": ("test_coatnet", dict(img_size=32), 32), "maxvit": ("test_maxvit", dict(img_size=64), 64),
    "mlp_mixer": ("mixer_s32_224", dict(img_size=64), 64),
    "pvt_v2": ("pvt_v2_b0", {}, 64),  # 64: at 32 every attention has a single key (vacuous)
    "twins": ("twins_pcpvt_small", dict(depths=(1, 1, 1, 1)), 64),
    "tiny_vit": ("tiny_vit_5m_224", {}, 64), "mambaout": ("test_mambaout", {}, 32),
    "mobilevitv2": ("mobilevitv2_050", {}, 64), "efficientvit": ("efficientvit_b0", {}, 64),
}
# families with input-independent terms, accounted as fixed shares: family -> (..., fixed term paths)
WITH_FIXED_SHARE = {
    "vit": ("test_vit", dict(img_size=32), 32, {"cls_token", "pos_embed"}),
    "deit": ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2), 32,
             {"cls_token", "dist_token", "pos_embed"}),
    "beit": ("beit_base_patch16_224", dict(img_size=32, depth=2), 32, {"cls_token"}),
    "eva02": ("eva02_tiny_patch14_224", dict(img_size=28, depth=2), 28, {"cls_token", "pos_embed"}),
    "edgenext": ("edgenext_xx_small", {}, 32, {"stages.1.blocks.1.pos_embd"}),
}
# family -> (timm model, the refusal's reason)
REFUSED = {
    "tf_efficientnet": ("tf_efficientnet_b0", "Conv2dSame.*SAME"),
}


def _explain(name, kwargs, size):
    torch.manual_seed(0)
    model = convert(timm.create_model(name, num_classes=5, **kwargs), "v2").double()
    with torch.no_grad():  # zero or layer-scale (1e-5) inits would hide a branch: make every branch count
        for p in model.parameters():
            if p.abs().max() <= 1e-4:
                p.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, size, size, dtype=torch.float64)
    assert not leftovers(model), leftovers(model)
    calibrate_bn(model, x)
    expl = model.explain(x, target=torch.tensor([0, 3]))
    assert (expl.explained.abs() > 0).all()
    assert expl.weights.shape[2:] == (6, size, size)  # per pixel of the encoded image
    assert len(verify(model, x[:1]).checked) >= 5  # every module y = J(x) x (raises naming the first that is not)
    return model, expl


def _assert_complete(expl):
    total = expl.contributions.sum((2, 3)) + expl.fixed_share
    assert rel_err(total, expl.explained) <= 1e-9, (total, expl.explained)


@pytest.mark.parametrize("family", list(COMPLETE))
def test_family_is_complete(family):
    model, expl = _explain(*COMPLETE[family])
    assert model.bcos.fixed_terms == () and expl.fixed_shares == {}
    _assert_complete(expl)


@pytest.mark.parametrize("family", list(WITH_FIXED_SHARE))
def test_family_is_complete_with_its_fixed_share(family):
    name, kwargs, size, terms = WITH_FIXED_SHARE[family]
    model, expl = _explain(name, kwargs, size)
    assert set(model.bcos.fixed_terms) == terms and set(expl.fixed_shares) == terms
    assert (expl.fixed_share.abs() > 1e-12 * expl.explained.abs()).all()
    _assert_complete(expl)


@pytest.mark.parametrize("family", list(REFUSED))
def test_family_is_refused_with_its_reason(family):
    name, reason = REFUSED[family]
    with pytest.raises(ConversionError, match=reason):
        convert(timm.create_model(name, num_classes=5), "v2")


def test_bcos_v2_vit_reports_the_position_embedding_share_as_a_number_and_a_map():
    import timm_bcos  # noqa: F401  (registers bcos_*)

    torch.manual_seed(0)
    model = timm.create_model("bcos_simple_vit_ti_patch16_224", num_classes=5, depth=2).double().eval()
    x = torch.rand(1, 3, 224, 224, dtype=torch.float64)
    expl = model.explain(x, topk=2)
    assert model.bcos.fixed_terms == ("pos_embed",)
    share_map = expl.fixed_maps["pos_embed"]
    assert share_map.shape == (1, 2, 14, 14)
    assert torch.allclose(share_map.sum((2, 3)), expl.fixed_share, rtol=1e-12, atol=0)
    assert (expl.fixed_share.abs() > 1e-3 * expl.explained.abs()).all()
    _assert_complete(expl)


def test_biases_a_recipe_keeps_are_accounted_per_image():
    torch.manual_seed(0)
    model = convert(timm.create_model("test_resnet", num_classes=5), "v2", norm_bias=True).double()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    calibrate_bn(model, x)
    expl = model.explain(x, topk=2)
    assert model.bcos.fixed_terms and all(t.endswith(".bias") for t in model.bcos.fixed_terms)
    assert expl.fixed_shares[model.bcos.fixed_terms[0]].shape == (3, 2)
    assert (expl.fixed_share.abs() > 1e-6 * expl.explained.abs()).all()
    _assert_complete(expl)
    single = model.explain(x[1:2], target=expl.targets[1:2])  # each image's share is its own
    assert torch.allclose(single.fixed_share, expl.fixed_share[1:2], rtol=1e-10, atol=0)


def test_every_branch_reading_the_image_gets_the_encoded_input():
    """RepVGG's stem runs a 3x3 and a 1x1 conv on the image: both read the encoding, and the
    explanation sums their weights (before: one branch read raw RGB, relative error ~0.6)."""
    from timm_bcos.layers import InputEncoding

    model = convert(timm.create_model("repvgg_a0", num_classes=5), "v2")
    assert sum(isinstance(m, InputEncoding) for m in model.modules()) == 2
    assert model.stem.conv_1x1.conv.in_channels == 6


def test_a_space_to_depth_stem_encodes_the_image_before_the_permutation():
    """TResNet folds 4x4 pixels into channels before its first conv: the encoding goes in front
    of the fold (explanations per pixel) and carried weights are zero on the inverse channels."""
    torch.manual_seed(0)
    conv = timm.create_model("tresnet_m", num_classes=5)
    w = conv.body.conv1.conv.weight.detach().clone()
    model = convert(conv, carry_weights=True)
    new = model.body.conv1.conv.weight.detach().reshape(w.shape[0], 16, 6, *w.shape[2:])
    assert torch.equal(new[:, :, :3].reshape(w.shape), w) and not new[:, :, 3:].any()
    assert model.body.conv1.conv.input_encoding is None and model.input_encoding() is model.body.s2d[0]
