"""timm_bcos.layers against hand-computed oracles and the dynamic-linearity invariant."""
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_dynamic_linear, input_grad, rel_err
from timm_bcos import layers as L
from timm_bcos.layers import explanation_mode


def bcos_conv_oracle(x, weight, b, max_out, stride, padding, dilation, groups):
    """Eq. 3 computed patch by patch with unfold: ||x|| |cos|^B sgn(cos), then MaxOut."""
    n, c, h, w = x.shape
    o_all, cg, kh, kw = weight.shape
    outs = []
    for g in range(groups):
        xg = x[:, g * cg:(g + 1) * cg]
        patches = F.unfold(xg, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [N, cg*k*k, P]
        wg = weight[g * o_all // groups:(g + 1) * o_all // groups].reshape(o_all // groups, -1)
        w_hat = wg / wg.norm(dim=1, keepdim=True)
        norm = (patches.pow(2).sum(1, keepdim=True) + 1e-6).sqrt()
        lin = torch.einsum("ok,nkp->nop", w_hat, patches)
        cos = lin / norm
        outs.append(norm * cos.abs().pow(b) * cos.sign())
    out = torch.cat(outs, 1)
    h_out = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    w_out = (w + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    out = out.reshape(n, o_all, h_out, w_out)
    return out.unflatten(1, (o_all // max_out, max_out)).max(2).values


@pytest.mark.parametrize("b", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("max_out,groups,stride,padding,dilation", [
    (1, 1, 1, 1, 1), (2, 1, 2, 0, 1), (2, 4, 1, 2, 2), (3, 2, 2, 1, 2),
])
def test_bcos_conv2d_equals_eq3(b, max_out, groups, stride, padding, dilation):
    torch.manual_seed(0)
    conv = L.BcosConv2d(8, 12, 3, stride, padding, dilation, groups, b=b, max_out=max_out).double()
    x = torch.randn(2, 8, 9, 10, dtype=torch.float64)
    expected = bcos_conv_oracle(x, conv.weight.detach(), b, max_out, stride, padding, dilation, groups)
    # the layer's stabilisers (1e-6 on |cos| for B != 2) differ from Eq. 3 by O(1e-6)
    assert rel_err(conv(x), expected) <= (1e-12 if b in (1.0, 2.0) else 1e-4)


def test_bcos_linear_equals_eq3_for_tokens():
    torch.manual_seed(1)
    lin = L.BcosLinear(6, 4, b=2, max_out=2).double()
    x = torch.randn(3, 5, 6, dtype=torch.float64)
    w_hat = lin.weight / lin.weight.norm(dim=1, keepdim=True)
    cos = (x @ w_hat.T) / x.norm(dim=-1, keepdim=True)
    expected = (x.norm(dim=-1, keepdim=True) * cos.abs() * cos).unflatten(-1, (4, 2)).max(-1).values
    assert rel_err(lin(x), expected) <= 1e-12


def test_output_is_bounded_by_input_norm():
    """Eq. 4: |B-cos(x; w)| <= ||x||, with equality iff x is aligned with w."""
    lin = L.BcosLinear(6, 3, b=2).double()
    x = torch.randn(100, 6, dtype=torch.float64)
    assert (lin(x).abs() <= x.norm(dim=-1, keepdim=True) + 1e-12).all()
    aligned = lin.weight.detach()[:1] * 3.0
    assert torch.allclose(lin(aligned)[0, 0], aligned.norm())


def test_v1_output_scale():
    conv = L.BcosConv2d(16, 8, 3, padding=1, b=2, scale=L.v1_output_scale(3, 16)).double()
    plain = L.BcosConv2d(16, 8, 3, padding=1, b=2).double()
    plain.weight.data.copy_(conv.weight.data)
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64)
    assert math.isclose(L.v1_output_scale(3, 16), 3 * 4 / 100)
    assert rel_err(conv(x), plain(x) / (3 * 4 / 100)) <= 1e-6


def _layers_for_linearity():
    torch.manual_seed(0)
    bn = L.BatchNormUncentered2d(8, affine=True)
    bn.running_var.uniform_(0.5, 2)
    bn_eval = L.drop_bias(bn).eval()
    bn_train = L.drop_bias(L.BatchNormUncentered2d(8)).train()
    return {
        "conv_b2": (L.BcosConv2d(8, 6, 3, padding=1, b=2), (2, 8, 7, 7)),
        "conv_b1.25_maxout_groups": (L.BcosConv2d(8, 8, 3, 2, 1, groups=4, b=1.25, max_out=2), (2, 8, 7, 7)),
        "conv_b2.5_dilated": (L.BcosConv2d(8, 6, 3, padding=2, dilation=2, b=2.5, max_out=2), (2, 8, 7, 7)),
        "conv_scaled": (L.BcosConv2d(8, 6, 1, b=2, scale=0.1), (2, 8, 4, 4)),
        "linear_vectors": (L.BcosLinear(8, 6, b=2, max_out=2), (5, 8)),
        "linear_tokens": (L.BcosLinear(8, 6, b=1.5), (2, 5, 8)),
        "bn_uncentered_eval": (bn_eval, (4, 8, 5, 5)),
        "bn_uncentered_train": (bn_train, (4, 8, 5, 5)),
        "gn_uncentered": (L.drop_bias(L.GroupNormUncentered2d(2, 8)), (2, 8, 5, 5)),
        "gn_centered": (L.drop_bias(L.DetachableGroupNorm2d(2, 8)), (2, 8, 5, 5)),
        "ln_tokens": (L.drop_bias(L.DetachableLayerNorm(8)), (2, 5, 8)),
        "ln2d_centered": (L.drop_bias(L.DetachableLayerNorm2d(8)), (2, 8, 5, 5)),
        "pn_uncentered": (L.drop_bias(L.PositionNormUncentered2d(8)), (2, 8, 5, 5)),
        "attention": (L.BcosAttention(8, num_heads=2, b=2), (2, 5, 8)),
    }


@pytest.mark.parametrize("name", list(_layers_for_linearity()))
def test_every_layer_is_dynamic_linear(name):
    layer, shape = _layers_for_linearity()[name]
    x = torch.randn(*shape) + 0.3
    assert assert_dynamic_linear(layer, x, n_units=6) == 6


def test_logit_layer_is_linear_up_to_its_bias():
    layer = L.LogitLayer(logit_bias=L.default_logit_bias(10), logit_temperature=2.0)
    assert math.isclose(layer.logit_bias.item(), -math.log(9), rel_tol=1e-6)
    # float64: y - bias cancels the bias, which float32 keeps only to ~2e-7 absolute
    layer = layer.double()
    x = torch.randn(3, 10, dtype=torch.float64)
    y, grad = input_grad(layer, x, out_weights=torch.eye(10, dtype=torch.float64)[4].expand(3, 10))
    assert rel_err((grad * x).sum(1), y[:, 4] - layer.logit_bias) <= 1e-12


@pytest.mark.parametrize("b", [1.25, 2.0, 2.5])
def test_explanation_gradient_is_the_dynamic_weight(b):
    """Eq. 11: in explanation mode d y_j / d x = |cos(x, w_j)|^(B-1) w_j_hat.

    B-cos is positively homogeneous of degree 1, so completeness alone holds
    with or without detaching; this checks the weight itself.
    """
    torch.manual_seed(0)
    lin = L.BcosLinear(6, 4, b=b).double()
    x = torch.randn(6, dtype=torch.float64)
    w_hat = lin.weight.detach() / lin.weight.detach().norm(dim=1, keepdim=True)
    cos = (w_hat @ x) / (x.norm() + 1e-12)
    dynamic_w = ((cos.abs() + (0 if b == 2 else 1e-6)) ** (b - 1))[:, None] * w_hat
    with explanation_mode(lin):
        _, grad = input_grad(lin, x, out_weights=torch.eye(4, dtype=torch.float64)[2])
    assert rel_err(grad, dynamic_w[2]) <= 1e-10
    _, grad_plain = input_grad(lin, x, out_weights=torch.eye(4, dtype=torch.float64)[2])
    assert rel_err(grad_plain, dynamic_w[2]) > 1e-3  # the undetached gradient differs

    conv = L.BcosConv2d(2, 3, 3, b=b).double()
    xc = torch.randn(1, 2, 3, 3, dtype=torch.float64)  # one patch, one output position
    wc = conv.weight.detach().reshape(3, -1)
    wc_hat = wc / wc.norm(dim=1, keepdim=True)
    cos_c = (wc_hat @ xc.reshape(-1)) / (xc.norm() ** 2 + 1e-6).sqrt()
    dyn_c = ((cos_c.abs() + (0 if b == 2 else 1e-6)) ** (b - 1))[:, None] * wc_hat
    with explanation_mode(conv):
        _, grad_c = input_grad(conv, xc, out_weights=torch.eye(3, dtype=torch.float64)[1].reshape(1, 3, 1, 1))
    assert rel_err(grad_c.reshape(-1), dyn_c[1]) <= 1e-10


def test_completeness_detects_undetached_norm():
    """x / std(x) is scale invariant: without detaching, sum(grad * x) is 0, not y."""
    torch.manual_seed(0)
    norm = L.drop_bias(L.GroupNormUncentered2d(1, 4)).double()
    x = (torch.randn(1, 4, 3, 3, dtype=torch.float64) + 0.5).requires_grad_(True)
    y = norm(x)[0, 1, 1, 1]
    (grad,) = torch.autograd.grad(y, x)
    assert abs((grad * x).sum().item()) < 1e-3 * abs(y.item())


@pytest.mark.parametrize("b", [1.0, 1.25, 2.0, 2.5])
@pytest.mark.parametrize("explain", [False, True])
def test_zero_patch_gives_zero_output_and_finite_grads(b, explain):
    conv = L.BcosConv2d(6, 4, 3, padding=1, b=b, max_out=2)
    x = torch.rand(1, 6, 8, 8)
    x[:, :, :4, :4] = 0.0  # receptive fields of outputs (0..2, 0..2) are all zero
    x.requires_grad_(True)
    with explanation_mode(conv) if explain else torch.enable_grad():
        y = conv(x)
        y.sum().backward()
    assert torch.equal(y[:, :, :3, :3], torch.zeros_like(y[:, :, :3, :3]))
    assert torch.isfinite(x.grad).all() and torch.isfinite(conv.weight.grad).all()

    lin = L.BcosLinear(6, 4, b=b)
    z = torch.zeros(2, 6, requires_grad=True)
    with explanation_mode(lin) if explain else torch.enable_grad():
        out = lin(z)
        out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.isfinite(z.grad).all() and torch.isfinite(lin.weight.grad).all()


@pytest.mark.parametrize("layer,bad,expected_msg", [
    (L.BcosConv2d(6, 4, 3), torch.randn(1, 3, 8, 8), r"expects 6 channels.*\(1, 3, 8, 8\)"),
    (L.BcosConv2d(6, 4, 3), torch.randn(6, 8, 8), r"expects a 4D input.*\(6, 8, 8\)"),
    (L.BcosLinear(6, 4), torch.randn(2, 5), r"expects 6 channels in the last dim.*\(2, 5\)"),
    (L.InputEncoding(), torch.rand(1, 1, 8, 8), r"\[N, 3, H, W\].*\(1, 1, 8, 8\)"),
    (L.BatchNormUncentered2d(8), torch.randn(2, 4, 3, 3), r"\[N, 8, H, W\].*\(2, 4, 3, 3\)"),
    (L.DetachableLayerNorm(8), torch.randn(2, 3, 4), r"trailing dims \(8,\).*\(2, 3, 4\)"),
    (L.BcosAttention(8, 2), torch.randn(2, 3, 4), r"\[N, T, 8\].*\(2, 3, 4\)"),
])
def test_bad_shapes_say_what_was_expected(layer, bad, expected_msg):
    with pytest.raises(ValueError, match=expected_msg):
        layer(bad)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(b=0.5), "b must be >= 1"), (dict(max_out=0), "max_out must be >= 1"),
    (dict(groups=3), "divisible by groups"),
])
def test_bad_constructor_args(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        L.BcosConv2d(8, 4, 3, **kwargs)


def test_explanation_mode_switches_and_restores_even_on_error():
    model = torch.nn.Sequential(L.BcosConv2d(6, 4, 3), L.BatchNormUncentered2d(4), torch.nn.Flatten())
    model[1].set_explanation_mode(True)  # a module already on stays on afterwards
    with explanation_mode(model):
        assert model[0].is_in_explanation_mode and model[1].is_in_explanation_mode
    assert not model[0].is_in_explanation_mode and model[1].is_in_explanation_mode
    with pytest.raises(RuntimeError, match="boom"):
        with explanation_mode(model):
            raise RuntimeError("boom")
    assert not model[0].is_in_explanation_mode and model[1].is_in_explanation_mode


def test_explanation_mode_is_reexported_at_top_level():
    import timm_bcos

    assert timm_bcos.explanation_mode is explanation_mode


def test_input_encoding():
    x = torch.rand(2, 3, 4, 4)
    enc = L.InputEncoding()(x)
    assert enc.shape == (2, 6, 4, 4)
    assert torch.equal(enc[:, 3:], 1 - x)


@pytest.mark.parametrize("groups", [1, 2])
def test_bcos_b2_hand_written_backward_passes_gradcheck(groups):
    """The B=2 scale has a custom backward: check it w.r.t. input and weight."""
    torch.manual_seed(0)
    conv = L.BcosConv2d(4, 4, 3, padding=1, groups=groups, b=2, max_out=2).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    w = conv.weight.detach().clone().requires_grad_(True)
    call = torch.func.functional_call
    assert torch.autograd.gradcheck(lambda inp, weight: call(conv, {"weight": weight}, (inp,)), (x, w))
    lin = L.BcosLinear(5, 3, b=2).double()
    xl = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    wl = lin.weight.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, weight: call(lin, {"weight": weight}, (inp,)), (xl, wl))


def test_uncentered_batch_norm_backward_passes_gradcheck():
    """The training-mode uncentered batch norm has a custom backward (input and weight)."""
    from timm_bcos.layers.norms import _UncenteredBatchNormTrain

    torch.manual_seed(0)
    x = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True) + 0.5
    w = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda inp, weight: _UncenteredBatchNormTrain.apply(inp, weight, 1e-5, False)[0], (x, w))
    # explanation mode: the variance is a constant, the layer linear in x
    detached = lambda inp: _UncenteredBatchNormTrain.apply(inp, w.detach(), 1e-5, True)[0]  # noqa: E731
    _, grad = input_grad(detached, x, out_weights=torch.ones(4, 3, 3, 3, dtype=torch.float64))
    expected = (w.detach() * torch.rsqrt(x.detach().var((0, 2, 3), unbiased=False) + 1e-5))[None, :, None, None]
    assert rel_err(grad, expected.expand_as(grad)) <= 1e-12


def test_bfloat16_autocast_trains():
    """Mixed precision: the hand-written backward passes accept bf16 activations with fp32 weights."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(L.BcosConv2d(6, 8, 3, padding=1), L.BatchNormUncentered2d(8),
                                L.BcosConv2d(8, 4, 1)).train()
    x = torch.rand(2, 6, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    # element-wise (norm-wise) error: a sum could cancel and leave bf16 rounding exposed
    assert rel_err(out.float(), model(x)) <= 0.05


@pytest.mark.parametrize("shape", [(5, 3, 3, 3), (7, 4), (3, 2, 1, 1)])
def test_unit_norm_rows_hand_written_backward_matches_autograd(shape):
    """The short backward (g - w_hat <g, w_hat>) / ||w|| against autograd of the plain ops, in float64."""
    from timm_bcos.layers.functional import unit_norm_rows

    torch.manual_seed(0)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    g = torch.randn(*shape, dtype=torch.float64)
    plain = w / torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)
    (expected,) = torch.autograd.grad((plain * g).sum(), w)
    out = unit_norm_rows(w)
    assert type(out.grad_fn).__name__ == "_UnitNormRowsBackward"
    assert rel_err(out, plain) <= 1e-15
    (got,) = torch.autograd.grad((out * g).sum(), w)
    assert rel_err(got, expected) <= 1e-12
    assert torch.autograd.gradcheck(unit_norm_rows, (w,))


def test_unit_norm_rows_after_inference_mode_under_fake_mode_and_torch_func():
    """The cached unit gains survive an inference-mode or fake-mode first call; torch.func transforms
    and tensor subclasses take the plain ops (the hand-written Function has no vmap/jvp rule)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from timm_bcos.layers.functional import unit_norm_rows

    def plain(w):
        return w / torch.linalg.vector_norm(w, dim=tuple(range(1, w.dim())), keepdim=True)

    w = torch.randn(13, 5, 3, 3, dtype=torch.float64, requires_grad=True)  # a shape no other test caches
    with torch.inference_mode():
        unit_norm_rows(torch.randn(13, 5, 3, 3, dtype=torch.float64))
    v = torch.randn(17, 4, dtype=torch.float64)
    with FakeTensorMode() as mode:
        unit_norm_rows(mode.from_tensor(v))
    for weight in (w, v.clone().requires_grad_()):
        (got,) = torch.autograd.grad((unit_norm_rows(weight) ** 3).sum(), weight)
        (expected,) = torch.autograd.grad((plain(weight) ** 3).sum(), weight)
        assert rel_err(got, expected) <= 1e-12
    g = torch.func.grad(lambda t: (unit_norm_rows(t) ** 3).sum())(w.detach())
    assert rel_err(g, torch.func.grad(lambda t: (plain(t) ** 3).sum())(w.detach())) <= 1e-12
    batched = torch.func.vmap(unit_norm_rows)(w.detach()[None].expand(2, -1, -1, -1, -1))
    assert rel_err(batched[1], plain(w.detach())) <= 1e-15


def test_uncentered_batch_norm_refuses_an_empty_training_batch():
    bn = L.BatchNormUncentered2d(4).train()
    with pytest.raises(ValueError, match="at least one value per channel"):
        bn(torch.empty(0, 4, 3, 3))
    assert bn.num_batches_tracked.item() == 0 and torch.equal(bn.running_var, torch.ones(4))
    assert bn.eval()(torch.empty(0, 4, 3, 3)).shape == (0, 4, 3, 3)  # eval mode: a per-channel scaling


def test_torch_func_transforms_run_through_the_layers():
    """vmap and torch.func.grad through B-cos layers (training mode, B = 2): the layers take plain ops
    under transforms, since their hand-written autograd.Functions have no vmap/jvp rules."""
    torch.manual_seed(0)
    conv = L.BcosConv2d(4, 6, 3, padding=1).double().train()
    linear = L.BcosLinear(6, 3).double().train()
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64)

    def per_sample(t):
        return linear(conv(t[None]).mean((2, 3)))[0]

    batched = torch.func.vmap(per_sample)(x)
    assert rel_err(batched, linear(conv(x).mean((2, 3)))) <= 1e-12
    g = torch.func.vmap(torch.func.grad(lambda t: per_sample(t).sum()))(x)
    xr = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(linear(conv(xr).mean((2, 3))).sum(), xr)
    assert rel_err(g, expected) <= 1e-12
