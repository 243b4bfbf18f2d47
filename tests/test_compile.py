"""The layers compile as one graph (torch.compile(fullgraph=True) raises on a graph break)."""
import contextlib

import torch
from torch import nn

from helpers import rel_err
from timm_bcos import layers as L
from timm_bcos.layers import explanation_mode


def test_layers_compile_without_graph_breaks():
    torch.manual_seed(0)
    model = nn.Sequential(
        L.InputEncoding(3),
        L.BcosConv2d(6, 8, 3, padding=1, b=2, max_out=2),
        L.BatchNormUncentered2d(8),
        L.BcosConv2d(8, 8, 3, stride=2, padding=1, groups=2, b=1.5),
        L.DetachableLayerNorm2d(8),
        L.GroupNormUncentered2d(2, 8),
        nn.Flatten(2),
    )
    tokens = nn.Sequential(L.BcosAttention(8, 2), L.DetachableLayerNorm(8), L.BcosLinear(8, 4, b=2))
    # float64: compiled and eager may sum in another order, and a MaxOut near-tie or a small
    # norm denominator must not turn that into a visible difference on some machine
    model, tokens = model.double(), tokens.double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)

    def full(inp):
        feats = model(inp).transpose(1, 2)
        return L.LogitLayer(-1.0)(tokens(feats).mean(1))

    compiled = torch.compile(full, fullgraph=True, backend="aot_eager")
    for explain in (False, True):
        with contextlib.ExitStack() as stack:
            if explain:
                stack.enter_context(explanation_mode(model))
                stack.enter_context(explanation_mode(tokens))
            xe = x.clone().requires_grad_(True)
            xc = x.clone().requires_grad_(True)
            ye, yc = full(xe), compiled(xc)
            ye.sum().backward()
            yc.sum().backward()
        assert rel_err(yc, ye) <= 1e-9
        assert rel_err(xc.grad, xe.grad) <= 1e-9


def test_compiled_graphs_use_plain_ops_for_the_scale_and_batch_norm():
    """Graphs get plain ops, not the hand-written autograd.Functions of the eager path (dynamo has
    mis-differentiated such Functions: pytorch#184113, torch 2.11; our H100 run saw a wrong input
    gradient there), with the eager path's numbers."""
    torch.manual_seed(0)
    net = nn.Sequential(L.BcosConv2d(6, 8, 3, padding=1), L.BatchNormUncentered2d(8),
                        L.BcosConv2d(8, 4, 1), L.BatchNormUncentered2d(4, affine=False)).double()
    seen = []

    def recording(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    x = torch.rand(2, 6, 5, 5, dtype=torch.float64)
    eager_x, compiled_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    r = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    (net(eager_x) * r).sum().backward()
    (torch.compile(net, backend=recording, fullgraph=True)(compiled_x) * r).sum().backward()
    assert seen and "autograd_function_apply" not in seen, sorted(set(seen))
    assert rel_err(compiled_x.grad, eager_x.grad) <= 1e-9
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    compiled_x.grad = None
    (compiled(compiled_x) * r).sum().backward()
    assert rel_err(compiled_x.grad, eager_x.grad) <= 1e-9
