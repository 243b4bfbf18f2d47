"""Every B-cos v2 architecture: the `bcos` package's model (random weights) converted to timm_bcos
gives the same outputs and the same explanations (the weights issue's exact-conversion oracle)."""
import warnings

import pytest
import timm
import torch

import timm_bcos  # noqa: F401
from helpers import calibrate_bn, model_contributions, reference_model, rel_err, shallow
from timm_bcos.weights import BCOS_V2_MODELS, convert_bcos_v2_state_dict

pretrained = pytest.importorskip("bcos.models.pretrained")
from bcos.data.transforms import AddInverse  # noqa: E402


# Architectures whose blocks, heads and key layout a smaller one above already runs through the
# numerical comparison (the same code at another depth or width, or the same architecture trained
# longer): here their state dicts are converted and loaded strictly, key for key and shape for shape.
LARGER_MEMBERS = {"resnet50_long": "resnet50", "resnet101": "resnet50", "resnet152": "resnet50",
                  "resnet152_long": "resnet50", "densenet121_long": "densenet121", "densenet161": "densenet121",
                  "densenet169": "densenet121", "densenet201": "densenet121", "convnext_base": "convnext_tiny",
                  "convnext_base_bnu": "convnext_tiny_bnu", "simple_vit_l_patch16_224": "simple_vit_b_patch16_224",
                  "vitc_l_patch1_14": "vitc_b_patch1_14"}


@pytest.mark.parametrize("bcos_name", sorted(LARGER_MEMBERS))
def test_larger_members_load_the_converted_reference_weights_key_for_key(bcos_name):
    """A key of the release that maps nowhere or to a tensor of another shape fails the strict load; a
    weight mapped to a wrong tensor of the right shape fails LARGER_MEMBERS[bcos_name]'s comparison."""
    assert LARGER_MEMBERS[bcos_name] in BCOS_V2_MODELS and LARGER_MEMBERS[bcos_name] not in LARGER_MEMBERS
    with torch.device("meta"):  # keys and shapes only: no memory, no random init (ViT-L: 300M weights)
        ref = reference_model(bcos_name)
        ours = timm.create_model(BCOS_V2_MODELS[bcos_name])
    converted = convert_bcos_v2_state_dict(ref.state_dict(), bcos_name)
    assert len(converted) >= len(ref.state_dict())  # no tensor of the release dropped (the logit layer's added)
    ours.load_state_dict(converted, assign=True)  # strict: every key, every shape


@pytest.mark.parametrize("bcos_name", [n for n in BCOS_V2_MODELS if n not in LARGER_MEMBERS])
def test_converted_reference_weights_give_the_same_model(bcos_name):
    torch.manual_seed(0)
    # VGG's 7x7 head conv (padding 3) on a 4x4 map uses every tap of its kernel at a third of 224 px's cost
    size = 224 if "vit" in bcos_name else 128 if "vgg" in bcos_name else 64
    n = 1 if "vit" in bcos_name or "vgg" in bcos_name else 2  # float64 at 224 px is slow on 2 cores
    ref = reference_model(bcos_name)
    kwargs = {k: v for k, v in shallow(BCOS_V2_MODELS[bcos_name]).items() if k == "depth"}
    if kwargs:  # the B and L ViTs: their first blocks, as the reference builds them
        encoders = ref[0].transformer
        for name in [k for k, _ in encoders.named_children()][kwargs["depth"]:]:
            delattr(encoders, name)
    ref = ref.double()
    x = torch.rand(n, 3, size, size, dtype=torch.float64)
    calibrate_bn(ref, AddInverse()(x))  # realistic BN statistics, carried over by the state dict
    with torch.device("meta"):  # every tensor comes from the reference: no random init of our own (VGG: 130M)
        ours = timm.create_model(BCOS_V2_MODELS[bcos_name], **kwargs)
    converted = convert_bcos_v2_state_dict(ref.state_dict(), bcos_name)
    ours.load_state_dict({k: v.clone() for k, v in converted.items()}, assign=True)  # strict; not the ref's storage
    ours = ours.double().eval()

    # logits without the bias (with it, float64 cannot tell the models apart)
    targets = torch.tensor([3, 7])[:n]
    contrib, pre, logits = model_contributions(ours, x, targets)
    logit_layer = ref.logit_layer if hasattr(ref, "logit_layer") else ref[-1]  # ViTs: Sequential(vit, logits)
    seen = {}
    hook = logit_layer.register_forward_hook(lambda m, i, o: seen.__setitem__("in", i[0]))
    with torch.no_grad():
        ref_logits = ref(AddInverse()(x))
    hook.remove()
    assert torch.allclose(logits, ref_logits, rtol=1e-9, atol=0)
    # the logit layer's input, not logits minus bias: that difference cancels most of its digits.
    # With random weights the head sums terms far larger than its output, which amplifies float64
    # rounding up to ~1e-8 (seen on a 2-block ViT-L); a wrongly mapped weight gives ~1.
    ref_pre = seen["in"] / (logit_layer.logit_temperature or 1.0)
    assert rel_err(pre, ref_pre.gather(1, targets[:, None])[:, 0]) <= 1e-6

    # the explanation: our batched dynamic linear weights equal the reference's explain()
    expl = ours.explain(x, target=targets)
    assert rel_err(expl.contributions.flatten(1).sum(1), contrib) <= 1e-10
    for i in range(n):
        enc = AddInverse()(x[i:i + 1]).requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_expl = ref.explain(enc, idx=int(targets[i]))
        assert rel_err(expl.weights[i, 0], ref_expl["dynamic_linear_weights"][0]) <= 1e-8
