"""Stateless B-cos maths shared by the convolution and the linear layer."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from . import kernels

# Stabilisers of the B-cos v2 reference; kept identical so converted weights
# reproduce its outputs exactly (they matter for small |cos| and B != 2).
COS_EPS = 1e-6


def plain_ops_wanted() -> bool:
    """Inside torch.compile, or under a torch.func transform: the layers then use plain autograd ops,
    not their hand-written autograd.Functions (inductor fuses plain ops itself, dynamo has
    mis-differentiated such Functions, pytorch#184113, and they have no vmap/jvp rules)."""
    return torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()


_ONES: dict = {}


def _unit_gains(weight: Tensor) -> Tensor:
    """Ones of shape [rows, 1, ...]: the gain g of weight norm's w = g v / ||v||, so that w = v / ||v||.
    Cached per shape, device and dtype (plain tensors only: weight_norm_gains sends subclasses, fake
    tensors included, to the plain ops), made outside inference mode: an inference tensor cannot be
    saved for a later training step's backward."""
    key = (weight.shape[0], weight.dim(), weight.device, weight.dtype)
    if key not in _ONES:
        with torch.inference_mode(False):
            _ONES[key] = torch.ones(weight.shape[0], *[1] * (weight.dim() - 1), device=weight.device,
                                    dtype=weight.dtype)
    return _ONES[key]


class _UnitNormRows(torch.autograd.Function):
    """w / ||w|| per row through torch's fused weight-norm kernels: one kernel each way where the
    norm and the division take 2 forward and ~9 backward (host time per launch weighs on eager GPU
    steps, benchmarks/step_counts.py, and this runs in every B-cos layer). Once
    differentiable: torch's double backward of weight norm is wrong (gradgradcheck fails), so a
    second derivative through here raises instead."""

    @staticmethod
    def forward(ctx, weight: Tensor, gains: Tensor) -> Tensor:
        w_hat, norms = torch.ops.aten._weight_norm_interface(weight, gains, 0)
        ctx.save_for_backward(weight, gains, norms)
        return w_hat

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        weight, gains, norms = ctx.saved_tensors
        return torch.ops.aten._weight_norm_interface_backward(grad.contiguous(), weight, gains, norms, 0)[0], None


def weight_norm_gains(weight: Tensor) -> Tensor | None:
    """The gains that make torch's fused weight-norm kernels give w / ||w||, or None where the plain
    ops must normalise `weight`: in graphs, under torch.func transforms, for tensor subclasses
    (DTensor) and non-contiguous weights."""
    if (type(weight) not in (torch.Tensor, nn.Parameter) or not weight.is_contiguous()
            or plain_ops_wanted() or torch.jit.is_tracing()):
        return None
    return _unit_gains(weight)


def unit_norm_rows(weight: Tensor) -> Tensor:
    """Scale every output unit's weight vector to unit L2 norm (the hat in Eq. 3)."""
    gains = weight_norm_gains(weight)
    if gains is None:
        return weight / torch.linalg.vector_norm(weight, dim=tuple(range(1, weight.dim())), keepdim=True)
    return _UnitNormRows.apply(weight, gains)


def max_out(out: Tensor, units: int, dim: int) -> Tensor:
    """MaxOut over `units` consecutive channels along `dim` (Eq. 17)."""
    if units == 1:
        return out
    size = out.shape[dim]
    # .max (not .amax) so that ties route the gradient to one unit, as the reference does
    return out.unflatten(dim, (size // units, units)).max(dim=dim if dim < 0 else dim + 1).values


class _BcosScaleB2(torch.autograd.Function):
    """y = l |l| / n for B = 2, with a hand-written backward.

    Autograd of abs/div/mul keeps several full-size temporaries; this needs one
    pass for the forward and three for the backward, which is most of the
    B-cos overhead on CPUs. With `detach` (explanation mode) the factor |l|/n
    is a constant, so dy/dl = |l| / n and n gets no gradient.
    """

    @staticmethod
    def forward(ctx, lin: Tensor, norm: Tensor, detach: bool) -> Tensor:
        inv_norm = norm.reciprocal()  # small ([N, 1, H, W] for convs): cheaper to multiply by
        ctx.detach = detach
        if detach:  # explanation mode: the backward needs only the constant factor |l| / n
            scale = lin.abs().mul_(inv_norm)
            ctx.save_for_backward(scale)
            return scale * lin
        ctx.save_for_backward(lin, inv_norm)
        return lin.abs().mul_(lin).mul_(inv_norm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        if ctx.detach:
            (scale,) = ctx.saved_tensors
            return grad * scale, None, None  # g |l| / n
        lin, inv_norm = ctx.saved_tensors
        grad_lin = lin.abs().mul_(grad).mul_(2 * inv_norm)  # dy/dl = 2 |l| / n
        grad_norm = None
        if ctx.needs_input_grad[1]:
            # dy/dn = -l |l| / n^2 = -(l * grad_lin / g) / (2 n): reduce first, scale the small result
            grad_norm = (grad_lin * lin).sum_to_size(inv_norm.shape).mul_(inv_norm).mul_(-0.5)
        return grad_lin, grad_norm, None


def scales_output(b: float | Tensor) -> bool:
    """Whether a layer with this B rescales w^T x at all: a learned B always does, a fixed one unless 1."""
    return isinstance(b, Tensor) or b != 1


def bcos_scale(linear_out: Tensor, input_norm: Tensor, b: float | Tensor, detach: bool) -> Tensor:
    """Eq. 9: multiply w^T x by |cos(x, w)|^(B-1).

    In explanation mode the factor is detached, so the layer is the dynamic
    linear map W~(x) x of Eqs. 10-11 and its input gradient is W~(x). A learned B (a
    0-d tensor, see `learn_b`) takes the general formula, which differentiates with respect to B.
    """
    if isinstance(b, Tensor):
        norm = input_norm.detach() if detach else input_norm
        cos = (linear_out.detach() if detach else linear_out) / norm
        return (cos.abs() + COS_EPS).pow(b - 1) * linear_out
    if b == 1:
        return linear_out
    # explanation mode takes the plain autograd ops below: losses on explanations
    # (timm_bcos.guidance) differentiate through them, and the fused kernels and the
    # hand-written backward are once-differentiable
    if not detach and kernels.use_fused(linear_out):  # CUDA + Triton: one kernel each way
        fused = kernels.bcos_scale(linear_out, input_norm, b, detach)
        if fused is not None:
            return fused
    if b == 2 and not detach:
        if plain_ops_wanted():
            return linear_out * (linear_out.abs() / input_norm).to(linear_out.dtype)
        return _BcosScaleB2.apply(linear_out, input_norm, detach)
    if b == 2:  # explanation mode: the constant factor |l| / n, built in place
        # (as fast as the hand-written function: benchmarks/explain_mode_ops.py)
        return linear_out.detach().abs().mul_(input_norm.detach().reciprocal()) * linear_out
    out_for_scale = linear_out.detach() if detach else linear_out
    norm = input_norm.detach() if detach else input_norm
    scale = ((out_for_scale / norm).abs() + COS_EPS).pow(b - 1)
    return scale * linear_out

