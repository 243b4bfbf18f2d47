"""Parity of timm_bcos.layers with the B-cos v2 reference (`bcos` 0.1.3) on random weights."""
import itertools
import warnings

import pytest
import torch
from torch import nn

from helpers import input_grad, rel_err
from timm_bcos import layers as L
from timm_bcos.layers import explanation_mode

bcos_modules = pytest.importorskip("bcos.modules")
from bcos.modules import norms as ref_norms  # noqa: E402

TOL = 1e-5


def _compare(ours, ref, x, explain_too=True):
    """Same forward output, same input gradient (normal and explanation mode)."""
    modes = [False, True] if explain_too else [False]
    for explain in modes:
        if explain:
            with explanation_mode(ours), explanation_mode(ref):
                y_o, g_o = input_grad(ours, x)
                y_r, g_r = input_grad(ref, x)
        else:
            y_o, g_o = input_grad(ours, x)
            y_r, g_r = input_grad(ref, x)
        assert rel_err(y_o, y_r) <= TOL, f"forward (explain={explain}): {rel_err(y_o, y_r):.2e}"
        assert rel_err(g_o, g_r) <= TOL, f"input grad (explain={explain}): {rel_err(g_o, g_r):.2e}"


CONV_CASES = [
    # b, max_out, groups, kernel, stride, padding, dilation
    *[(b, m, g, 3, 1, 1, 1) for b, m, g in itertools.product([1, 1.25, 2, 2.5], [1, 2], [1, 4])],
    *[(b, m, 1, k, s, p, 1) for b, m, (k, s, p) in itertools.product(
        [1.25, 2, 2.5], [1, 2], [(1, 1, 0), (1, 2, 0), (3, 2, 1), (5, 1, 2), (3, 1, 0), (7, 2, 3)])],
    (2, 1, 4, 1, 2, 0, 1),
    (2.5, 2, 4, 3, 2, 1, 1),
    (2, 1, 1, 3, 1, 2, 2),
    (1.25, 1, 4, 3, 1, 2, 2),
    # (dilation > 1 with groups > 1 and max_out > 1 crashes in bcos 0.1.3's slow
    # patch-norm path; covered against the unfold oracle in test_layers.py)
]


@pytest.mark.parametrize("b,max_out,groups,kernel,stride,padding,dilation", CONV_CASES)
def test_bcos_conv2d_matches_reference(b, max_out, groups, kernel, stride, padding, dilation):
    torch.manual_seed(0)
    cin, cout = 8, 12
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the reference warns about dilation
        ref = bcos_modules.BcosConv2d(cin, cout, kernel, stride, padding, dilation, groups, b=b, max_out=max_out)
    ours = L.BcosConv2d(cin, cout, kernel, stride, padding, dilation, groups, b=b, max_out=max_out)
    ours.weight.data.copy_(ref.linear.weight.data)
    x = torch.randn(2, cin, 11, 13)
    _compare(ours, ref, x)


@pytest.mark.parametrize("b,max_out", list(itertools.product([1, 1.25, 2, 2.5], [1, 2])))
@pytest.mark.parametrize("shape", [(4, 16), (2, 5, 16)])
def test_bcos_linear_matches_reference(b, max_out, shape):
    torch.manual_seed(1)
    ref = bcos_modules.BcosLinear(16, 10, b=b, max_out=max_out)
    ours = L.BcosLinear(16, 10, b=b, max_out=max_out)
    ours.weight.data.copy_(ref.linear.weight.data)
    _compare(ours, ref, torch.randn(*shape))


def _randomise_affine(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand_like(p) + 0.5)


NORM_PAIRS = [
    ("bn_uncentered", lambda: L.BatchNormUncentered2d(8), lambda: ref_norms.BatchNormUncentered2d(8)),
    ("gn_uncentered", lambda: L.GroupNormUncentered2d(4, 8), lambda: ref_norms.GroupNormUncentered2d(4, 8)),
    ("gn_centered", lambda: L.DetachableGroupNorm2d(4, 8), lambda: ref_norms.DetachableGroupNorm2d(4, 8)),
    ("ln_gn_centered", lambda: L.DetachableGroupNorm2d(1, 8), lambda: ref_norms.DetachableGNLayerNorm2d(8)),
    ("pn_centered", lambda: L.DetachablePositionNorm2d(8), lambda: ref_norms.DetachablePositionNorm2d(8)),
    ("pn_uncentered", lambda: L.PositionNormUncentered2d(8), lambda: ref_norms.PositionNormUncentered2d(8)),
]


@pytest.mark.parametrize("name,make_ours,make_ref", NORM_PAIRS, ids=[p[0] for p in NORM_PAIRS])
@pytest.mark.parametrize("train", [True, False])
def test_norms_match_reference(name, make_ours, make_ref, train):
    torch.manual_seed(2)
    ours, ref = make_ours(), make_ref()
    _randomise_affine(ref)
    if isinstance(ref, nn.BatchNorm2d):
        ref.running_var.uniform_(0.5, 2.0)
    ours.load_state_dict(ref.state_dict())
    ours.train(train)
    ref.train(train)
    x = torch.randn(4, 8, 5, 6) * 3 + 1
    _compare(ours, ref, x)
    if isinstance(ref, nn.BatchNorm2d) and train:
        # running statistics advance identically (4 passes above: 2 modes x 2 calls)
        assert rel_err(ours.running_var, ref.running_var) <= TOL
        assert ours.num_batches_tracked == ref.num_batches_tracked


def test_layernorm_tokens_matches_reference():
    torch.manual_seed(3)
    ref = ref_norms.DetachableLayerNorm(16)
    _randomise_affine(ref)
    ours = L.DetachableLayerNorm(16)
    ours.load_state_dict(ref.state_dict())
    _compare(ours, ref, torch.randn(2, 7, 16) * 2 + 0.5)


def test_logit_layer_matches_reference():
    ref = bcos_modules.LogitLayer(logit_temperature=0.7, logit_bias=-2.3)
    ours = L.LogitLayer(logit_bias=-2.3, logit_temperature=0.7)
    _compare(ours, ref, torch.randn(3, 10), explain_too=False)
    assert set(ours.state_dict()) == {"logit_bias", "logit_temperature"}


def test_attention_matches_reference():
    vit = pytest.importorskip("bcos.models.vit")
    torch.manual_seed(4)
    dim, heads = 32, 4
    ref = vit.Attention(dim, heads=heads, dim_head=dim // heads,
                        linear_layer=bcos_modules.BcosLinear, norm_layer=lambda d: nn.Identity())
    ours = L.BcosAttention(dim, num_heads=heads)
    ours.qkv.weight.data.copy_(ref.to_qkv.weight.data)
    ours.proj.weight.data.copy_(ref.to_out.linear.weight.data)
    _compare(ours, ref, torch.randn(2, 9, dim))


def test_input_encoding_matches_reference():
    from bcos.data.transforms import AddInverse

    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(L.InputEncoding()(x), AddInverse()(x))
