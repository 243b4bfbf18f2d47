"""The fused Triton kernels against the PyTorch path, run on the CPU by Triton's interpreter.

Not collected by pytest: tests/test_kernels.py runs this file in a subprocess
with TRITON_INTERPRET=1 (Triton reads it when the kernels are defined, so it
must not leak into other tests) and reads one JSON line of results,
{check name: "ok" or the traceback}. Run alone: TRITON_INTERPRET=1 python tests/kernels_interpreted.py
"""
import contextlib
import json
import sys
import time
import traceback

import torch
from torch import nn

from helpers import rel_err
from timm_bcos import layers as L
from timm_bcos.layers import explanation_mode, kernels
from timm_bcos.layers.functional import bcos_scale as torch_bcos_scale
from timm_bcos.layers.kernels import _ops
from timm_bcos.layers.kernels._common import k_split, tile_2d
from timm_bcos.layers.norms import _UncenteredBatchNormTrain

TOL64 = 1e-12  # float64 throughout: only summation order differs


@contextlib.contextmanager
def pytorch_path():
    """The layers' own PyTorch code (the oracle), with the kernels switched off."""
    kernels.ENABLED = False
    try:
        yield
    finally:
        kernels.ENABLED = True


def grads(fn, inputs, seed=0):
    """fn(*inputs) and the gradients of <fn(*inputs), r> for a fixed random r."""
    inputs = [t.detach().clone().requires_grad_(t.requires_grad) if t is not None else None for t in inputs]
    out = fn(*inputs)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    needs = [t for t in inputs if t is not None and t.requires_grad]
    return (out.detach(), *torch.autograd.grad((out * r).sum(), needs))


def assert_close(actual, expected, tol=TOL64, what=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, f"{what}[{i}] shape {tuple(a.shape)} vs {tuple(e.shape)}"
        err = rel_err(a, e)
        assert err <= tol, f"{what}[{i}]: relative error {err:.3e} > {tol:g}"


GEOMETRIES = [  # groups, kernel, stride, padding, dilation
    (1, 3, 1, 1, 1), (1, 1, 1, 0, 1), (1, 1, 2, 0, 1), (2, 3, 2, 1, 1), (1, 3, 1, 2, 2), (1, 3, 1, "same", 1),
    (1, 2, 1, "same", 1),  # asymmetric 'same': the kernel declines, the PyTorch path answers
]


def check_patch_norm_forward_backward():
    torch.manual_seed(0)
    # 4 channels: one program per (n, g) covers them all; 20 channels at 16x16: three programs split them
    assert k_split(2 * 1, 4, tile_2d(4, 42)[0])[0] == 1 and k_split(1, 20, tile_2d(20, 256)[0])[0] == 3
    for (g, k, s, p, d), shape in [(geo, (2, 4, 7, 6)) for geo in GEOMETRIES] + [
            ((1, 3, 1, 1, 1), (1, 20, 16, 16)), ((1, 1, 1, 0, 1), (1, 20, 16, 16))]:
        conv = L.BcosConv2d(shape[1], 4, k, stride=s, padding=p, dilation=d, groups=g).double()
        x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
        fused = grads(conv._patch_norms, [x])
        with pytorch_path():
            expected = grads(conv._patch_norms, [x])
        assert_close(fused, expected, what=f"patch norm {(g, k, s, p, d)}")


def check_patch_norm_gradcheck():
    x = torch.randn(1, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    for k, s, p in ((3, 2, 1), (1, 1, 0)):
        assert torch.autograd.gradcheck(
            lambda t: _ops.patch_norm(t, 1, (k, k), (s, s), (p, p), (1, 1), 1e-6), (x,), fast_mode=True)


def _scale_cases():
    """(lin, norm) pairs: conv [N, C, H, W] over norms [N, 1 | G, H, W], and linear rows [..., F] over [..., 1]."""
    torch.manual_seed(1)
    conv = (torch.randn(2, 6, 3, 4), torch.rand(2, 1, 3, 4) + 0.5)
    grouped = (torch.randn(2, 6, 3, 4), torch.rand(2, 3, 3, 4) + 0.5)
    rows = (torch.randn(2, 5, 7), torch.rand(2, 5, 1) + 0.5)
    # channels split over several programs (K split): partial norm gradients added up
    wide = (torch.randn(1, 20, 16, 16), torch.rand(1, 1, 16, 16) + 0.5)
    wide_rows = (torch.randn(2, 3000), torch.rand(2, 1) + 0.5)
    assert k_split(1, 20, tile_2d(20, 256)[0])[0] == 3 and k_split(2, 3000, tile_2d(3000, 1)[0])[0] == 2
    return [(lin.double().requires_grad_(), norm.double().requires_grad_())
            for lin, norm in (conv, grouped, rows, wide, wide_rows)]


def check_bcos_scale_forward_backward():
    for b in (2.0, 1.5, 3.0):
        for detach in (False, True):
            for lin, norm in _scale_cases():
                def torch_path(lin, norm):  # the PyTorch path takes norms broadcast to lin's channels
                    if lin.dim() == 4:
                        norm = norm.repeat_interleave(lin.shape[1] // norm.shape[1], dim=1)
                    with pytorch_path():
                        return torch_bcos_scale(lin, norm, b, detach)

                fused_fn = lambda lin, norm: _ops.bcos_scale(lin, norm, b, detach)  # noqa: E731
                what = f"bcos scale b={b} detach={detach} {tuple(lin.shape)}/{tuple(norm.shape)}"
                if detach:  # the factor is a constant: only lin gets a gradient
                    norm = norm.detach()
                assert_close(grads(fused_fn, [lin, norm]), grads(torch_path, [lin, norm]), what=what)


def check_bcos_scale_gradcheck():
    for b in (2.0, 1.5):
        for lin, norm in _scale_cases()[:2]:
            lin, norm = lin[:1, :, :2, :2].detach().requires_grad_(), norm[:1, :, :2, :2].detach().requires_grad_()
            assert torch.autograd.gradcheck(lambda l, n: _ops.bcos_scale(l, n, b, False), (lin, norm), fast_mode=True)
            # explanation mode: the gradient of l * s(l, n).detach() w.r.t. l is s = y / l
            expected = torch_bcos_scale(lin, norm.detach().repeat_interleave(
                lin.shape[1] // norm.shape[1], 1), b, False).detach() / lin.detach()
            (g,) = torch.autograd.grad(_ops.bcos_scale(lin, norm.detach(), b, True).sum(), lin)
            assert_close([g], [expected], what=f"explanation-mode gradient b={b}")


def check_b2_backward_keeps_the_output_not_the_conv_output():
    """B = 2 training: the backward reads y (which the next batch norm keeps anyway), so l is freed;
    an in-place change of y before the backward is refused by autograd, not silently wrong."""
    lin = torch.randn(2, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    norm = torch.rand(2, 1, 3, 2, dtype=torch.float64) + .5
    for b, detach, keeps_output in ((2.0, False, True), (2.0, True, False), (1.5, False, False)):
        y = _ops.bcos_scale(lin, norm, b, detach)
        node = y.grad_fn.next_functions[0][0]
        assert type(node).__name__ == "FusedBcosScaleBackward", type(node).__name__
        assert (node.saved_tensors[0].data_ptr() == y.data_ptr()) == keeps_output, (b, detach)
    half = _ops.bcos_scale(lin.detach().half().requires_grad_(), norm.half(), 2.0, False)  # float16: y underflows
    assert half.grad_fn.next_functions[0][0].saved_tensors[0].data_ptr() != half.data_ptr()
    y = _ops.bcos_scale(lin, norm, 2.0, False)
    y.mul_(2)
    try:
        y.sum().backward()
    except RuntimeError as err:
        assert "modified by an inplace operation" in str(err), err
    else:
        raise AssertionError("an in-place change of the kept output went unnoticed")


def _conv_layer_grads(layer, x, separate: bool = False):
    """Output, grad_x (if x requires it) and grad_w of `layer` for a fixed random output weighting;
    `separate`: the four ops (weight norm, conv, patch norm, scale) as separate autograd nodes instead of
    the one-node layer step."""
    if separate:
        layer._fused_training_step = lambda x: None
    try:
        out = layer(x)
    finally:
        layer.__dict__.pop("_fused_training_step", None)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    needs = [x, layer.weight] if x.requires_grad else [layer.weight]
    return [out.detach(), *torch.autograd.grad((out * r).sum(), needs)]


def check_fused_conv_layer_matches_separate_ops():
    """BcosConv2d's one-node training step (weight norm + conv + patch norm + scale) against the PyTorch path in
    float64, over the geometries, B = 2 (backward from the output) and B = 1.5, frozen inputs, and
    a shape whose norm gradient comes in several channel-split planes; then under bf16 autocast
    against the same kernels as separate nodes."""
    from timm_bcos.layers.kernels._common import grouped_geometry

    assert grouped_geometry(2, 32, 16 * 16, 1)[0][2] > 1  # squares and norm gradients in several planes
    torch.manual_seed(6)
    cases = [(g, k, s, p, d, 4 * g, 8, 6) for g, k, s, p, d in GEOMETRIES]
    cases += [(1, 3, 1, 1, 1, 32, 16, 32), (1, 1, 1, 0, 1, 32, 16, 32)]  # several split planes, both ways
    for groups, k, stride, pad, dil, cin, hw, cout in cases:
        for b in (2.0, 1.5):
            layer = L.BcosConv2d(cin, cout, k, stride=stride, padding=pad, dilation=dil, groups=groups, b=b,
                                 scale=3.0 if b == 1.5 else None).double().train()
            for x_grad in (True, False):
                x = torch.randn(2, cin, hw, hw, dtype=torch.float64, requires_grad=x_grad)
                y = layer(x)
                declined = pad == "same" and k % 2 == 0  # asymmetric 'same': the separate ops answer
                node = y.grad_fn if layer.scale is None else y.grad_fn.next_functions[0][0]
                assert (type(node).__name__ == "FusedBcosConv2dBackward") != declined, type(node).__name__
                fused = _conv_layer_grads(layer, x)
                with pytorch_path():
                    expected = _conv_layer_grads(layer, x)
                assert_close(fused, expected, what=f"conv layer g={groups} k={k} s={stride} p={pad} b={b} x_grad={x_grad}")
    layer = L.BcosConv2d(8, 16, 3, padding=1).double().train()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    node = layer(x).grad_fn  # the weight norm is inside the one node: the weight's gradient leaves it directly
    assert any(getattr(n, "variable", None) is layer.weight for n, _ in node.next_functions), node.next_functions
    layer.weight = torch.nn.Parameter(torch.randn(3, 3, 8, 16, dtype=torch.float64).permute(3, 2, 0, 1))
    assert not layer.weight.is_contiguous()  # not for the weight-norm kernel: the separate ops
    assert type(layer(x).grad_fn).__name__ != "FusedBcosConv2dBackward"
    fused = _conv_layer_grads(layer, x)
    with pytorch_path():
        expected = _conv_layer_grads(layer, x)
    assert_close(fused, expected, what="conv layer with a non-contiguous weight")
    with torch.inference_mode():  # a frozen weight made there (a model loaded in inference mode) is not saved
        frozen = L.BcosConv2d(8, 16, 3, padding=1).double().requires_grad_(False)
    for changed in (False, True):
        out = frozen(x)
        if changed:  # nor then checked for in-place changes: only the input gradient is wanted
            with torch.inference_mode():
                frozen.weight.mul_(2)
        assert type(out.grad_fn).__name__ == "FusedBcosConv2dBackward"
        (grad_x,) = torch.autograd.grad(out.sum(), x)
        assert grad_x.shape == x.shape
    empty = torch.randn(0, 4, 6, 6, dtype=torch.float64, requires_grad=True)  # declined: the separate ops run
    L.BcosConv2d(4, 4, 3, padding=1, max_out=1).double()(empty).sum().backward()
    L.BcosConv2d(4, 4, 3, padding=1, max_out=2).double()(empty).sum().backward()
    assert empty.grad.shape == empty.shape
    layer = L.BcosConv2d(8, 16, 3, padding=1).double().train()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast leaves float64 alone, and so must the one node
        one_node = _conv_layer_grads(layer, x)
    with pytorch_path():
        expected = _conv_layer_grads(layer, x)
    assert one_node[0].dtype == torch.float64
    assert_close(one_node, expected, what="float64 conv layer under autocast")
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64, requires_grad=True)
    batched = torch.func.vmap(lambda t: layer(t[None])[0])(x)  # a transform takes the plain ops
    assert rel_err(batched, layer(x)) <= 1e-12
    layer = L.BcosConv2d(8, 16, 3, padding=1).train()
    for x in (torch.randn(2, 8, 8, 8), torch.randn(2, 8, 8, 8).bfloat16()):  # float32 image / bf16 activation
        x.requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            one_node = _conv_layer_grads(layer, x)
            separate = _conv_layer_grads(layer, x, separate=True)
        assert [t.dtype for t in one_node] == [t.dtype for t in separate]
        assert_close(one_node, separate, tol=1e-2, what=f"conv layer under autocast, x {x.dtype}")


def check_batch_norm_forward_backward():
    torch.manual_seed(2)
    x = torch.randn(3, 4, 5, 5, dtype=torch.float64) + 3.0
    for with_weight in (True, False):
        w = torch.randn(4, dtype=torch.float64) if with_weight else None
        for detach in (False, True):
            def run(x, w=None):
                y, var = (kernels.batch_norm_uncentered if kernels.ENABLED else _UncenteredBatchNormTrain.apply)(
                    x, w, 1e-5, detach)
                return y + 0 * var.sum()  # var has no gradient: it only feeds running_var

            inputs = [x.requires_grad_(), w.requires_grad_() if w is not None else None]
            fused = grads(run, inputs)
            with pytorch_path():
                expected = grads(run, inputs)
            assert_close(fused, expected, what=f"uncentered BN weight={with_weight} detach={detach}")


def check_batch_norm_running_var_updated_by_the_kernel():
    """The apply kernel's running-variance update against the layer's lerp_ on the PyTorch path, for
    momentum below and above torch.lerp's branch point, None (cumulative average), and no tracking."""
    torch.manual_seed(4)
    xs = [torch.randn(3, 4, 5, 5, dtype=torch.float64) * (i + 1) + 2.0 for i in range(3)]
    for kwargs in (dict(momentum=0.1), dict(momentum=0.7), dict(momentum=None), dict(track_running_stats=False)):
        layers = [L.BatchNormUncentered2d(4, **kwargs).double().train() for _ in range(2)]
        for x in xs:
            y_fused = layers[0](x)
            with pytorch_path():
                y_torch = layers[1](x)
            assert_close([y_fused], [y_torch], what=f"BN output {kwargs}")
        for name in ("running_var", "num_batches_tracked"):
            a, b = getattr(layers[0], name), getattr(layers[1], name)
            assert (a is None) == (b is None), (name, kwargs)
            if a is not None:
                assert_close([a.double()], [b.double()], tol=1e-14, what=f"{name} {kwargs}")


def check_batch_norm_statistics_split_and_offset():
    """Several chunks per channel, merged; a mean of 1e3 at std 1 in float32 (E[x^2] - E[x]^2 would lose it)."""
    from timm_bcos.layers.kernels._batch_norm import _splits

    torch.manual_seed(3)
    # rows drift by 0.25 each, so the chunks' means differ and their merge must count it
    x = torch.randn(20, 3, 32, 32) + 1e3 + 0.25 * torch.arange(20.0)[:, None, None, None]
    assert _splits(20, 32 * 32) == (1024, 8, 3)  # three chunks of 8, 8 and 4 rows per channel
    y, var = kernels.batch_norm_uncentered(x, None, 1e-5, False)
    expected_var = x.double().var(dim=(0, 2, 3), unbiased=False)
    assert rel_err(var, expected_var) <= 1e-4, rel_err(var, expected_var)
    assert rel_err(y, x.double() / (expected_var + 1e-5).sqrt()[:, None, None]) <= 1e-4


def check_batch_norm_gradcheck():
    x = (torch.randn(2, 2, 3, 3, dtype=torch.float64) + 1).requires_grad_()
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w: kernels.batch_norm_uncentered(x, w, 1e-5, False)[0], (x, w), fast_mode=True)


def check_bfloat16_and_mixed_dtypes():
    """Autocast's dtypes: bf16 in, float32 accumulation, bf16 out; a bf16 conv output over float32 norms promotes."""
    torch.manual_seed(5)
    x = torch.randn(2, 8, 6, 6).bfloat16().requires_grad_()
    lin = torch.randn(2, 8, 6, 6).bfloat16().requires_grad_()
    norm = _ops.patch_norm(x, 1, (3, 3), (1, 1), (1, 1), (1, 1), 1e-6)
    x64, lin64 = x.detach().double(), lin.detach().double()
    expected = (torch.nn.functional.conv2d(x64.pow(2).sum(1, keepdim=True), torch.ones(1, 1, 3, 3).double(),
                                           padding=1) + 1e-6).sqrt()
    assert norm.dtype == torch.bfloat16 and rel_err(norm, expected) <= 1e-2
    y = _ops.bcos_scale(lin, norm, 2.0, False)
    assert y.dtype == torch.bfloat16 and rel_err(y, lin64 * lin64.abs() / norm.double()) <= 1e-2
    y.float().sum().backward()
    assert lin.grad.dtype == torch.bfloat16 and rel_err(lin.grad, 2 * lin64.abs() / norm.double()) <= 1e-2
    for b in (2.0, 1.5):  # a bf16 conv output over float32 image norms: the PyTorch path's dtype
        with pytorch_path():
            expected_dtype = torch_bcos_scale(lin, norm.float(), b, False).dtype
        assert _ops.bcos_scale(lin, norm.float(), b, False).dtype == expected_dtype, f"B={b}"
    assert expected_dtype == torch.float32  # B != 2 promotes as bf16 / float32 does in torch
    w = torch.rand(8, requires_grad=True)
    y, var = _ops.batch_norm_uncentered(x.detach(), w, 1e-5, False)
    assert y.dtype == torch.bfloat16 and var.dtype == torch.float32
    assert rel_err(var, x64.var(dim=(0, 2, 3), unbiased=False)) <= 1e-5  # float32 statistics of the bf16 values


def _small_net(encode: bool = True):
    torch.manual_seed(4)
    return nn.Sequential(
        L.BcosConv2d(6, 8, 3, padding=1, b=2, max_out=2, encode_input=encode),
        L.BatchNormUncentered2d(8),
        L.BcosConv2d(8, 8, 3, stride=2, padding=1, groups=2, b=1.5),
        L.BatchNormUncentered2d(8, affine=False),
        L.BcosConv2d(8, 6, 1, b=3),
        nn.Flatten(2),
        L.BcosLinear(16, 5, b=2),
    ).double()


def check_layers_train_and_explain():
    """A small network, training mode and explanation mode: outputs, input and weight gradients, running_var."""
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    for explain in (False, True):
        results = []
        for fused in (True, False):
            net = _small_net()
            with contextlib.ExitStack() as stack:
                if not fused:
                    stack.enter_context(pytorch_path())
                if explain:
                    stack.enter_context(explanation_mode(net))
                out, gx = grads(net, [x.clone().requires_grad_()])
                net(x).sum().backward()
            results.append([out, gx, *(p.grad for p in net.parameters()), net[1].running_var])
        assert_close(*results, what=f"network explain={explain}")
        if explain:  # dynamic linearity (Eqs. 10-11): sum(dy_j/dx * x) == y_j, here without the input encoding
            net = _small_net(encode=False)
            xe = torch.cat([x, 1 - x], 1).requires_grad_()
            with explanation_mode(net):
                y = net(xe)[0, 0, 0]
                (g,) = torch.autograd.grad(y, xe)
            assert abs((g * xe).sum().item() - y.item()) <= 1e-10 * abs(y.item()), ((g * xe).sum().item(), y.item())


def check_jit_trace_records_the_ops():
    """torch.jit.trace (and the TorchScript ONNX export built on it) records the custom ops,
    so the traced module runs the kernels on a new input with the same numbers as eager."""
    net = nn.Sequential(L.BcosConv2d(6, 8, 3, padding=1), L.BatchNormUncentered2d(8),
                        L.BcosConv2d(8, 4, 1)).double()
    traced = torch.jit.trace(net, torch.rand(2, 6, 8, 8, dtype=torch.float64), check_trace=False)
    for op in ("patch_norm", "bcos_scale", "batch_norm_uncentered"):
        assert f"timm_bcos::{op}" in str(traced.inlined_graph), f"timm_bcos::{op} not in the traced graph"
    x = torch.rand(3, 6, 5, 7, dtype=torch.float64)
    assert_close(grads(traced, [x.requires_grad_()]), grads(net, [x]), what="traced vs eager")


def check_compiled_graph_sees_the_ops():
    """torch.compile(fullgraph=True): no graph break, the custom ops in the graph, same numbers as eager."""
    net = _small_net()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        from functorch.compile import make_boxed_func
        from torch._dynamo.backends.common import aot_autograd
        boxed = lambda g, _: make_boxed_func(g)  # noqa: E731 - run the traced graphs as they are
        return aot_autograd(fw_compiler=boxed, bw_compiler=boxed)(gm, example_inputs)

    eager = grads(net, [x.clone().requires_grad_()])
    compiled = grads(torch.compile(net, fullgraph=True, backend=backend), [x.clone().requires_grad_()])
    assert_close(compiled, eager, what="compiled vs eager")
    for op in ("patch_norm", "bcos_scale", "batch_norm_uncentered"):
        assert any(f"timm_bcos.{op}" in s for s in seen), f"timm_bcos::{op} not in the graph: {sorted(set(seen))}"


def check_opcheck():
    """torch.library.opcheck: schema, fake (meta) kernels, autograd registration."""
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    lin, norm = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True), torch.rand(1, 1, 6, dtype=torch.float64) + .5
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    ops = torch.ops.timm_bcos
    for op, args in [
        (ops.patch_norm.default, (x, 1, [3, 3], [1, 1], [1, 1], [1, 1], 1e-6)),
        (ops.bcos_scale.default, (lin, norm.requires_grad_(), 2.0, False)),
        (ops.bcos_scale.default, (lin, norm, 1.5, True)),
        (ops.batch_norm_uncentered.default, (x, w, 1e-5, False)),
        (ops.batch_norm_uncentered.default, (x, None, 1e-5, True)),
        (ops.patch_norm_backward.default, (x.detach(), x.detach(), x.detach()[:, :1], [3, 3], [1, 1], [1, 1], [1, 1])),
        (ops.bcos_scale_backward.default, (lin.detach(), lin.detach(), norm.detach(), 1.5, False)),
        (ops.batch_norm_uncentered_backward.default,
         (x.detach(), x.detach(), torch.rand(4, 2, dtype=torch.float64) + .5, False)),
    ]:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def check_eager_takes_the_plain_functions():
    """Eager mode dispatches through the autograd.Functions (cheap on the host), not the custom ops."""
    x = torch.rand(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    norm = L.BcosConv2d(4, 4, 3, padding=1).double()._patch_norms(x)
    y = torch_bcos_scale(x, norm, 2.0, False)
    z = L.BatchNormUncentered2d(4, affine=False).double()(x)
    names = [type(t.grad_fn).__name__ for t in (norm, y, z)]
    assert names[0] == "FusedPatchNormBackward", names
    assert names[1] == "ViewBackward0" and type(y.grad_fn.next_functions[0][0]).__name__ == "FusedBcosScaleBackward"
    assert names[2] == "FusedBatchNormUncenteredBackward", names


def main() -> None:
    assert kernels.INTERPRET and kernels.ENABLED, "run with TRITON_INTERPRET=1 and triton installed"
    wanted = set(sys.argv[1:])
    results = {}
    for name, fn in list(globals().items()):
        if name.startswith("check_") and (not wanted or name in wanted):
            t0 = time.perf_counter()
            try:
                fn()
                results[name] = "ok"
            except Exception:  # noqa: BLE001 - every failure is reported by name
                results[name] = traceback.format_exc()
            print(f"{name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
