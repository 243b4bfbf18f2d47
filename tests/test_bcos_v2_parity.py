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


@pytest.mark.parametrize("bcos_name", list(BCOS_V2_MODELS))
def test_converted_reference_weights_give_the_same_model(bcos_name):
    torch.manual_seed(0)
    size = 224 if "vgg" in bcos_name or "vit" in bcos_name else 64
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
    ours = timm.create_model(BCOS_V2_MODELS[bcos_name], **kwargs).double().eval()
    ours.load_state_dict(convert_bcos_v2_state_dict(ref.state_dict(), bcos_name))  # strict

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
