"""The small linear/affine blocks of timm_bcos.layers.affine and the detached functional softmax."""
import pytest
import torch
import torch.nn.functional as F

from helpers import assert_dynamic_linear
from timm_bcos.layers import DetachableGate, explanation_mode
from timm_bcos.layers.affine import (
    BatchNormUncentered1d,
    DetachableDropout,
    DetachableGlobalResponseNorm,
    DetachableRadixSoftmax,
    Scale,
)
from timm_bcos.layers.detached_ops import detached_softmax


def test_grn_matches_timm_without_bias_and_is_dynamic_linear():
    from timm.layers.grn import GlobalResponseNorm

    torch.manual_seed(0)
    for channels_last, shape in ((True, (2, 5, 5, 8)), (False, (2, 8, 5, 5))):
        ref = GlobalResponseNorm(8, channels_last=channels_last).double()
        ours = DetachableGlobalResponseNorm(8, channels_last=channels_last).double()
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ours.weight.copy_(ref.weight)
        x = torch.randn(shape, dtype=torch.float64)
        assert torch.allclose(ours(x), ref(x), rtol=1e-12, atol=0)
        assert_dynamic_linear(ours, x, tol=1e-10)
        # in explanation mode the gradient is the detached per-channel factor 1 + weight * N(x)
        xg = x.clone().requires_grad_(True)
        with explanation_mode(ours):
            (grad,) = torch.autograd.grad(ours(xg).sum(), xg)
        factor = (ours(x) / x)
        assert torch.allclose(grad, factor, rtol=1e-10, atol=0)


def test_radix_softmax_gate_matches_timm_and_detaches():
    from timm.layers.split_attn import RadixSoftmax

    x = torch.randn(2, 2 * 3 * 4, dtype=torch.float64, requires_grad=True)
    for radix in (1, 2):
        gate = DetachableRadixSoftmax(radix, 3)
        assert torch.allclose(gate(x), RadixSoftmax(radix, 3)(x), rtol=1e-12, atol=0)
        assert gate(x).requires_grad
        with explanation_mode(gate):
            assert not gate(x).requires_grad


def test_uncentered_batch_norm_1d_on_vectors_and_tokens():
    torch.manual_seed(0)
    bn = BatchNormUncentered1d(4).double()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
    bn.eval()
    for shape in ((3, 4), (3, 4, 7)):
        x = torch.randn(shape, dtype=torch.float64)
        expected = x * (bn.weight / (bn.running_var + bn.eps).sqrt()).view(1, 4, *[1] * (x.dim() - 2))
        assert bn(x).shape == x.shape and torch.allclose(bn(x), expected, rtol=1e-12, atol=0)
    bn.train()
    assert_dynamic_linear(bn, torch.randn(6, 4, 5, dtype=torch.float64), tol=1e-10)
    with pytest.raises(ValueError, match=r"\[N, C\] or \[N, C, L\]"):
        bn(torch.randn(2, 4, 3, 3))


def test_scale_and_dropout_after_softmax():
    s = Scale(torch.tensor([2.0]))
    assert torch.equal(s(torch.ones(3)), torch.full((3,), 2.0))
    drop = DetachableDropout(0.0)
    a = torch.rand(2, 3, requires_grad=True)
    assert drop(a).requires_grad
    with explanation_mode(drop):
        assert not drop(a).requires_grad


def test_glu_gate_kinds():
    z = torch.randn(5, dtype=torch.float64)
    assert torch.allclose(DetachableGate("silu")(z), F.silu(z))
    assert torch.allclose(DetachableGate("gelu")(z), F.gelu(z))


def test_detached_softmax_detaches_attention_but_not_values():
    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    z = torch.randn(3, 4, requires_grad=True)
    with detached_softmax():
        assert not F.softmax(z, -1).requires_grad and not z.softmax(-1).requires_grad
        out = F.scaled_dot_product_attention(q, k, v)
        by_name = F.scaled_dot_product_attention(query=q, key=k, value=v)
    assert torch.equal(by_name, out) and torch.autograd.grad(by_name.sum(), q, allow_unused=True) == (None,)
    gq, gk, gv = torch.autograd.grad(out.sum(), (q, k, v), allow_unused=True)
    assert gq is None and gk is None and gv is not None
    attn = (q @ k.transpose(-2, -1) / 8 ** 0.5).softmax(-1).detach()
    assert torch.allclose(out, attn @ v, rtol=1e-10, atol=0)
    assert torch.allclose((gv * v).sum(), out.sum(), rtol=1e-10, atol=0)  # A(x) v is complete in v
