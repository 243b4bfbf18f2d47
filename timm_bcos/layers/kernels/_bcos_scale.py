"""Fused B-cos scale (Eq. 9): y = l * (|l| / n + eps)^(B-1), and y = l |l| / n for B = 2.

Tensors are seen as lin [N, G*K, S] and norm [N, G, S]: a conv's output
[N, C, H, W] with its patch norms [N, 1 or G or C, H, W], or a linear
layer's rows [R, F, 1] with norms [R, 1, 1]. Each program owns one (n, g) and
a block of S and walks the K channels that share a norm, so the backward's
reduction onto the norm stays in registers.

With a = |l| / n, s = (a + eps)^(B-1) and t = (B-1) (a + eps)^(B-2) a:
dy/dl = s + t and dy/dn = -l t / n (B = 2: s = t = a). In explanation mode s is
a constant: dy/dl = s and the norm gets no gradient.

For B = 2 the backward reads y instead of l: |l| / n = sqrt(|y| / n) and l t = y, so
dy/dl = 2 sqrt(|y| / n) and dy/dn = -y / n. The layer after the scale (a batch norm)
keeps y for its own backward anyway, so the conv output l need not outlive the
forward: one activation fewer per B-cos layer. (y must then not be modified in place
before the backward; autograd's version check says so if it is.) Not for float16: see
`from_output`.
"""
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import acc_dtype, acc_torch_dtype, capturing_graph, grouped_geometry, on_input_device

COS_EPS = 1e-6  # the reference's stabiliser (timm_bcos.layers.functional.COS_EPS)


@triton.jit
def _scale_terms(l, inv, b_minus_1, cos_eps, IS_B2: tl.constexpr):
    """(s, t) of the module docstring for a tile of l and its broadcast 1/n."""
    a = tl.abs(l) * inv
    if IS_B2:
        return a, a
    p = tl.exp((b_minus_1 - 1.0) * tl.log(a + cos_eps))  # (a + eps)^(B-2)
    return p * (a + cos_eps), b_minus_1 * p * a


@triton.jit
def _scale_rows(lin_ptr, out_ptr, inv, ng, s, smask, K, S, KPER, b_minus_1, cos_eps, IS_B2: tl.constexpr,
                ACC: tl.constexpr, BLOCK_K: tl.constexpr):
    """y = l * s(l, 1/n) for this program's KPER channels (axis 2 splits K) at positions s of plane ng."""
    base = ng * K * S
    for k0 in range(0, KPER, BLOCK_K):
        k = tl.program_id(2) * KPER + k0 + tl.arange(0, BLOCK_K)
        m = (k[:, None] < K) & smask[None, :]
        offs = base + k[:, None] * S + s[None, :]
        l = tl.load(lin_ptr + offs, mask=m, other=0.0).to(ACC)
        scale, _ = _scale_terms(l, inv[None, :], b_minus_1, cos_eps, IS_B2)
        tl.store(out_ptr + offs, (l * scale).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _scale_fwd_kernel(lin_ptr, norm_ptr, out_ptr, K, S, KPER, NGS, b_minus_1, cos_eps, IS_B2: tl.constexpr,
                      ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    ng = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < S
    inv = 1.0 / tl.load(norm_ptr + ng * S + s, mask=smask, other=1.0).to(ACC)
    _scale_rows(lin_ptr, out_ptr, inv, ng, s, smask, K, S, KPER, b_minus_1, cos_eps, IS_B2, ACC, BLOCK_K)


@triton.jit
def _scale_bwd_kernel(g_ptr, lin_ptr, norm_ptr, gl_ptr, gn_ptr, K, S, KPER, NGS, b_minus_1, cos_eps,
                      IS_B2: tl.constexpr, DETACH: tl.constexpr, FROM_OUT: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """FROM_OUT (B = 2, not DETACH): lin_ptr holds the forward's output y, not l."""
    ng = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < S
    inv = 1.0 / tl.load(norm_ptr + ng * S + s, mask=smask, other=1.0).to(ACC)
    base = ng * K * S
    gn = tl.zeros([BLOCK_S], dtype=ACC)
    for k0 in range(0, KPER, BLOCK_K):
        k = tl.program_id(2) * KPER + k0 + tl.arange(0, BLOCK_K)
        m = (k[:, None] < K) & smask[None, :]
        offs = base + k[:, None] * S + s[None, :]
        l = tl.load(lin_ptr + offs, mask=m, other=0.0).to(ACC)
        g = tl.load(g_ptr + offs, mask=m, other=0.0).to(ACC)
        if FROM_OUT:  # l is y here: a = |l| / n = sqrt(|y| / n), dy/dl = 2a, l t = y
            a = tl.sqrt(tl.abs(l) * inv[None, :])
            gl = g * (a + a)
            gn += tl.sum(g * l, axis=0)
        elif DETACH:
            scale, _ = _scale_terms(l, inv[None, :], b_minus_1, cos_eps, IS_B2)
            gl = g * scale
        else:
            scale, t = _scale_terms(l, inv[None, :], b_minus_1, cos_eps, IS_B2)
            gl = g * (scale + t)
            gn += tl.sum(g * l * t, axis=0)
        tl.store(gl_ptr + offs, gl.to(gl_ptr.dtype.element_ty), mask=m)
    if not DETACH:  # one plane of partial sums per K split, added up by the caller when there are several
        tl.store(gn_ptr + tl.program_id(2) * NGS + ng * S + s, (-gn * inv).to(gn_ptr.dtype.element_ty), mask=smask)


def _launch_args(lin: Tensor, norm: Tensor, b: float):
    n, c, s = lin.shape
    grid, k, per, bk, bs = grouped_geometry(n, c, s, norm.shape[1])
    args = (k, s, per, norm.numel(), b - 1.0, COS_EPS)
    return grid, args, dict(IS_B2=b == 2.0, ACC=acc_dtype(lin), BLOCK_K=bk, BLOCK_S=bs)


def _out_dtype(lin: Tensor, norm: Tensor, b: float) -> torch.dtype:
    """The PyTorch path's dtype: B = 2 scales l in place (a bf16 conv output stays bf16 over float32
    image norms, so autocast keeps bf16 activations); other B promote as l / n does."""
    return lin.dtype if b == 2.0 else torch.promote_types(lin.dtype, norm.dtype)


@on_input_device
def scale_forward(lin: Tensor, norm: Tensor, b: float) -> Tensor:
    """Eq. 9 on lin [N, G*K, S] over norm [N, G, S]."""
    lin, norm = lin.contiguous(), norm.contiguous()
    out = torch.empty_like(lin, dtype=_out_dtype(lin, norm, b))
    grid, args, meta = _launch_args(lin, norm, b)
    _scale_fwd_kernel[grid](lin, norm, out, *args, **meta)
    return out


def from_output(b: float, detach: bool, dtype: torch.dtype) -> bool:
    """Whether the backward reads the forward's output instead of its input: B = 2, training, and not
    float16, whose y = l |l| / n underflows to subnormals for small cosines (bf16 has float32's range;
    it costs one more bf16 rounding in the norm's gradient, ~3e-3 relative)."""
    return b == 2.0 and not detach and dtype != torch.float16


@on_input_device
def scale_backward(grad: Tensor, lin: Tensor, norm: Tensor, b: float, detach: bool, sum_planes: bool = True):
    """(grad_lin, grad_norm); grad_norm is None with `detach`. `lin` is the forward's output
    where `from_output(b, detach, lin.dtype)`. Without `sum_planes`, grad_norm may come as [P, *norm.shape]
    partial sums of the P channel splits (the patch norm's backward kernel sums them)."""
    grad, lin, norm = grad.contiguous(), lin.contiguous(), norm.contiguous()
    grad_lin = torch.empty_like(lin)
    grid, args, meta = _launch_args(lin, norm, b)
    if detach:
        grad_norm = norm.new_empty(0)
    elif grid[2] == 1:
        grad_norm = torch.empty_like(norm)
    else:
        grad_norm = norm.new_empty((grid[2], *norm.shape), dtype=acc_torch_dtype(lin))
    _scale_bwd_kernel[grid](grad, lin, norm, grad_lin, grad_norm, *args, DETACH=detach,
                            FROM_OUT=from_output(b, detach, lin.dtype), **meta)
    if detach:
        return grad_lin, None
    if grad_norm.dim() > norm.dim() and sum_planes:
        grad_norm = grad_norm.sum(0).to(norm.dtype)
    return grad_lin, grad_norm


class FusedBcosScale(torch.autograd.Function):
    """Eager autograd around the two kernels. A plain Function rather than the custom op below: the
    custom op's dispatch costs ~60 us more per forward + backward on the host, and the eager steps
    on an H100 were bound by host time (benchmarks/RESULTS.md)."""

    @staticmethod
    def forward(ctx, lin: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
        out = scale_forward(lin, norm, b)
        ctx.save_for_backward(out if from_output(b, detach, lin.dtype) else lin, norm)
        ctx.b, ctx.detach = b, detach
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        kept, norm = ctx.saved_tensors  # l, or y where from_output (y has l's dtype for B = 2)
        grad_lin, grad_norm = scale_backward(grad, kept, norm, ctx.b, ctx.detach)
        return grad_lin, grad_norm, None, None


# The same kernels as torch custom ops, for compiled graphs: opaque to inductor, with fake (meta)
# kernels and autograd. Eager mode uses FusedBcosScale, whose dispatch costs far less.
@torch.library.custom_op("timm_bcos::bcos_scale", mutates_args=())
def bcos_scale_op(lin: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor:
    return scale_forward(lin, norm, b)


@bcos_scale_op.register_fake
def _(lin, norm, b, detach):
    return torch.empty_like(lin, dtype=_out_dtype(lin, norm, b))


@torch.library.custom_op("timm_bcos::bcos_scale_backward", mutates_args=())
def bcos_scale_backward_op(grad: Tensor, lin: Tensor, norm: Tensor, b: float, detach: bool) -> Tuple[Tensor, Tensor]:
    """`lin` is the forward's output where from_output(b, detach, lin.dtype)."""
    grad_lin, grad_norm = scale_backward(grad, lin, norm, b, detach)
    return grad_lin, (norm.new_empty(0) if grad_norm is None else grad_norm)  # an op returns tensors only


@bcos_scale_backward_op.register_fake
def _(grad, lin, norm, b, detach):
    return torch.empty_like(lin), (norm.new_empty(0) if detach else torch.empty_like(norm))


def _setup_context(ctx, inputs, output):
    lin, norm, b, detach = inputs
    ctx.save_for_backward(output if from_output(b, detach, lin.dtype) else lin, norm)
    ctx.b, ctx.detach = b, detach


def _backward(ctx, grad):
    kept, norm = ctx.saved_tensors
    grad_lin, grad_norm = bcos_scale_backward_op(grad, kept, norm, ctx.b, ctx.detach)
    return grad_lin, (None if ctx.detach else grad_norm), None, None


bcos_scale_op.register_autograd(_backward, setup_context=_setup_context)


def _as_groups(lin: Tensor, norm: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
    """lin [N, G*K, S] and norm [N, G, S] views, or None for another layout."""
    if lin.dim() == 4 and norm.dim() == 4 and norm.shape[0] == lin.shape[0] and norm.shape[2:] == lin.shape[2:] \
            and lin.shape[1] % norm.shape[1] == 0:
        n, c, h, w = lin.shape
        return lin.reshape(n, c, h * w), norm.reshape(n, norm.shape[1], h * w)
    if lin.dim() >= 1 and tuple(norm.shape) == tuple(lin.shape[:-1]) + (1,):
        return lin.reshape(-1, lin.shape[-1], 1), norm.reshape(-1, 1, 1)
    return None


def bcos_scale(lin: Tensor, norm: Tensor, b: float, detach: bool) -> Optional[Tensor]:
    views = _as_groups(lin, norm)
    if views is None or lin.numel() == 0:
        return None
    apply = bcos_scale_op if capturing_graph() else FusedBcosScale.apply
    return apply(*views, float(b), bool(detach)).view(lin.shape)
