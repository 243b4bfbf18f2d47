"""Every B-cos v2 architecture: the `bcos` package's model (random weights) converted to timm_bcos
gives the same outputs and the same explanations (the weights issue's exact-conversion oracle)."""
import warnings

import pytest
import timm
import torch

import timm_bcos  # noqa: F401
from helpers import calibrate_bn, model_contributions, reference_model, rel_err
from timm_bcos.weights import BCOS_V2_MODELS, convert_bcos_v2_state_dict

pretrained = pytest.importorskip("bcos.models.pretrained")
from bcos.data.transforms import AddInverse  # noqa: E402


@pytest.mark.parametrize("bcos_name", list(BCOS_V2_MODELS))
def test_converted_reference_weights_give_the_same_model(bcos_name):
    torch.manual_seed(0)
    size = 224 if "vgg" in bcos_name or "vit" in bcos_name else 64
    n = 1 if "vit" in bcos_name else 2  # the large ViTs in float64 are slow on 2 cores
    ref = reference_model(bcos_name).double()
    x = torch.rand(n, 3, size, size, dtype=torch.float64)
    calibrate_bn(ref, AddInverse()(x))  # realistic BN statistics, carried over by the state dict
    ours = timm.create_model(BCOS_V2_MODELS[bcos_name]).double().eval()
    ours.load_state_dict(convert_bcos_v2_state_dict(ref.state_dict(), bcos_name))  # strict

    # logits without the bias (with it, float64 cannot tell the models apart)
    targets = torch.tensor([3, 7])[:n]
    contrib, pre, logits = model_contributions(ours, x, targets)
    with torch.no_grad():
        ref_logits = ref(AddInverse()(x))
    logit_layer = ref.logit_layer if hasattr(ref, "logit_layer") else ref[-1]  # ViTs: Sequential(vit, logits)
    bias = logit_layer.logit_bias
    assert torch.allclose(logits, ref_logits, rtol=1e-9, atol=0)
    assert rel_err(pre, (ref_logits - bias).gather(1, targets[:, None])[:, 0]) <= 1e-8

    # the explanation: our batched dynamic linear weights equal the reference's explain()
    expl = ours.explain(x, target=targets)
    assert rel_err(expl.contributions.flatten(1).sum(1), contrib) <= 1e-10
    for i in range(n):
        enc = AddInverse()(x[i:i + 1]).requires_grad_(True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ref_expl = ref.explain(enc, idx=int(targets[i]))
        assert rel_err(expl.weights[i, 0], ref_expl["dynamic_linear_weights"][0]) <= 1e-8
