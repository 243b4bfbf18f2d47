"""Fused uncentered batch norm, training mode: y = x * w / sqrt(var_batch(x) + eps) per channel.

Statistics: each program reduces a chunk of one channel to (count, mean, M2)
by merging per-tile moments (Chan et al.'s parallel update, no E[x^2] - E[x]^2
cancellation), a second kernel merges the chunks and folds weight and
1/sqrt(var + eps) into one factor, a third applies it. Backward: the per-channel
sum(g * x) gives the weight gradient and the variance term,
grad_x = g * scale - (scale inv^2 / M) sum(g x) (x - mean); with `detach`
(explanation mode) the variance is a constant and grad_x = g * scale.
"""
import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import TILE, acc_dtype, acc_torch_dtype, capturing_graph, cdiv, on_input_device, pow2

MAX_SPLITS = 256


@triton.jit
def _row_tile(r, s0, N, C, HW, ROWS, BLOCK: tl.constexpr):
    """Offsets and mask of the tile at s0 of row n = program_id(1) * ROWS + r of channel program_id(0)."""
    n = tl.program_id(1) * ROWS + r
    s = s0 + tl.arange(0, BLOCK)
    return (n.to(tl.int64) * C + tl.program_id(0)) * HW + s, (s < HW) & (n < N)


@triton.jit
def _stats_partial_kernel(x_ptr, cnt_ptr, mean_ptr, m2_ptr, N, C, HW, ROWS, SPLITS,
                          ACC: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    sp = tl.program_id(1)  # rows n in [sp * ROWS, (sp + 1) * ROWS) of channel c
    cnt = tl.zeros([], dtype=ACC)
    mean = tl.zeros([], dtype=ACC)
    m2 = tl.zeros([], dtype=ACC)
    for r in range(0, ROWS):
        for s0 in range(0, HW, BLOCK):
            offs, m = _row_tile(r, s0, N, C, HW, ROWS, BLOCK)
            v = tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
            nb = tl.sum(m.to(ACC), axis=0)
            mb = tl.sum(v, axis=0) / tl.maximum(nb, 1.0)
            d = tl.where(m, v - mb, 0.0)
            tot = cnt + nb
            delta = mb - mean
            frac = nb / tl.maximum(tot, 1.0)
            mean = mean + delta * frac
            m2 = m2 + tl.sum(d * d, axis=0) + delta * delta * cnt * frac
            cnt = tot
    tl.store(cnt_ptr + c * SPLITS + sp, cnt)
    tl.store(mean_ptr + c * SPLITS + sp, mean)
    tl.store(m2_ptr + c * SPLITS + sp, m2)


@triton.jit
def _stats_final_kernel(cnt_ptr, mean_ptr, m2_ptr, w_ptr, mean_out, var_out, inv_out, scale_out, SPLITS, eps,
                        HAS_W: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    i = tl.arange(0, BLOCK)
    m = i < SPLITS
    cnt = tl.load(cnt_ptr + c * SPLITS + i, mask=m, other=0.0)
    mu = tl.load(mean_ptr + c * SPLITS + i, mask=m, other=0.0)
    q = tl.load(m2_ptr + c * SPLITS + i, mask=m, other=0.0)
    total = tl.sum(cnt, axis=0)
    mean = tl.sum(cnt * mu, axis=0) / total
    var = tl.sum(q + cnt * (mu - mean) * (mu - mean), axis=0) / total  # biased, as batch norm
    inv = 1.0 / tl.sqrt(var + eps)
    scale = inv
    if HAS_W:
        scale = inv * tl.load(w_ptr + c).to(inv.dtype)
    tl.store(mean_out + c, mean)
    tl.store(var_out + c, var)
    tl.store(inv_out + c, inv)
    tl.store(scale_out + c, scale)


@triton.jit
def _apply_kernel(x_ptr, scale_ptr, y_ptr, C, HW, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # n * C + c
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = s < HW
    sc = tl.load(scale_ptr + row % C)
    x = tl.load(x_ptr + row * HW + s, mask=m, other=0.0)
    tl.store(y_ptr + row * HW + s, (x.to(sc.dtype) * sc).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _gx_partial_kernel(g_ptr, x_ptr, out_ptr, N, C, HW, ROWS, SPLITS, ACC: tl.constexpr, BLOCK: tl.constexpr):
    c = tl.program_id(0)
    sp = tl.program_id(1)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for r in range(0, ROWS):
        for s0 in range(0, HW, BLOCK):
            offs, m = _row_tile(r, s0, N, C, HW, ROWS, BLOCK)
            acc += tl.load(g_ptr + offs, mask=m, other=0.0).to(ACC) * tl.load(x_ptr + offs, mask=m, other=0.0).to(ACC)
    tl.store(out_ptr + c * SPLITS + sp, tl.sum(acc, axis=0))


@triton.jit
def _bwd_apply_kernel(g_ptr, x_ptr, gx_ptr, gw_ptr, partial_ptr, mean_ptr, inv_ptr, scale_ptr, C, HW, M, SPLITS,
                      DETACH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = row % C
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = s < HW
    sc = tl.load(scale_ptr + c)
    g = tl.load(g_ptr + row * HW + s, mask=m, other=0.0).to(sc.dtype)
    gx = g * sc
    i = tl.arange(0, BLOCK_SPLITS)
    gx_sum = tl.sum(tl.load(partial_ptr + c * SPLITS + i, mask=i < SPLITS, other=0.0), axis=0)  # sum(g x)
    inv = tl.load(inv_ptr + c)
    if (row < C) & (tl.program_id(1) == 0):  # one program per channel writes the weight gradient
        tl.store(gw_ptr + c, gx_sum * inv)
    if not DETACH:  # d/dx through var: -(w inv^3 / M) sum(g x) (x - mean)
        coef = -(sc * inv * inv) * gx_sum / M
        x = tl.load(x_ptr + row * HW + s, mask=m, other=0.0).to(sc.dtype)
        gx += coef * (x - tl.load(mean_ptr + c))
    tl.store(gx_ptr + row * HW + s, gx.to(gx_ptr.dtype.element_ty), mask=m)


@functools.lru_cache(maxsize=1024)
def _splits(n: int, hw: int) -> Tuple[int, int, int]:
    """(BLOCK, ROWS, SPLITS): each channel's N rows of HW values in SPLITS programs of ROWS rows."""
    block = min(pow2(hw), TILE // 2)
    rows = max(1, min(n, cdiv(8 * block, hw)), cdiv(n, MAX_SPLITS))  # >= ~8 tiles per program
    return block, rows, cdiv(n, rows)


def _rows_block(hw: int) -> int:
    return min(pow2(hw), 1024)


@on_input_device
def batch_norm_forward(x: Tensor, weight: Optional[Tensor], eps: float) -> Tuple[Tensor, ...]:
    """(y, var, mean, inv, scale) for x [N, C, H, W]; statistics in float32 (float64 for float64 x)."""
    x = x.contiguous()
    n, c, h, w = x.shape
    hw = h * w
    block, rows, splits = _splits(n, hw)
    part = torch.empty(3, c, splits, device=x.device, dtype=acc_torch_dtype(x))
    _stats_partial_kernel[(c, splits)](x, part[0], part[1], part[2], n, c, hw, rows, splits,
                                       ACC=acc_dtype(x), BLOCK=block)
    mean, var, inv, scale = (torch.empty(c, device=x.device, dtype=part.dtype) for _ in range(4))
    _stats_final_kernel[(c,)](part[0], part[1], part[2], weight if weight is not None else scale,
                              mean, var, inv, scale, splits, eps, HAS_W=weight is not None, BLOCK=pow2(splits))
    y = torch.empty_like(x)
    rb = _rows_block(hw)
    _apply_kernel[(n * c, cdiv(hw, rb))](x, scale, y, c, hw, BLOCK=rb)
    return y, var, mean, inv, scale


@on_input_device
def batch_norm_backward(grad: Tensor, x: Tensor, mean: Tensor, inv: Tensor, scale: Tensor,
                        detach: bool) -> Tuple[Tensor, Tensor]:
    """(grad_x, sum(g * x) * inv), the second being the weight gradient."""
    grad, x = grad.contiguous(), x.contiguous()
    n, c, h, w = x.shape
    m, hw = n * h * w, h * w
    block, rows, splits = _splits(n, hw)
    partial = torch.empty(c, splits, device=x.device, dtype=inv.dtype)
    _gx_partial_kernel[(c, splits)](grad, x, partial, n, c, hw, rows, splits, ACC=acc_dtype(inv), BLOCK=block)
    grad_x, grad_w = torch.empty_like(x), torch.empty_like(inv)
    rb = _rows_block(hw)
    _bwd_apply_kernel[(n * c, cdiv(hw, rb))](grad, x, grad_x, grad_w, partial, mean, inv, scale, c, hw, m, splits,
                                             DETACH=detach, BLOCK=rb, BLOCK_SPLITS=pow2(splits))
    return grad_x, grad_w


class FusedBatchNormUncentered(torch.autograd.Function):
    """Eager autograd around the kernels: (y, var); `detach` (explanation mode) only changes the backward.
    A plain Function for its low dispatch cost (see _bcos_scale.FusedBcosScale)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], eps: float, detach: bool):
        y, var, mean, inv, scale = batch_norm_forward(x, weight, eps)
        ctx.save_for_backward(x, mean, inv, scale)
        ctx.detach = detach
        ctx.weight_dtype = weight.dtype if weight is not None else None
        ctx.mark_non_differentiable(var)
        return y, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_var):
        x, mean, inv, scale = ctx.saved_tensors
        grad_x, grad_w = batch_norm_backward(grad, x, mean, inv, scale, ctx.detach)
        grad_w = grad_w.to(ctx.weight_dtype) if ctx.weight_dtype is not None and ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None


# The same kernels as torch custom ops, for compiled graphs (see _bcos_scale.bcos_scale_op).
@torch.library.custom_op("timm_bcos::batch_norm_uncentered", mutates_args=())
def batch_norm_uncentered_op(x: Tensor, weight: Optional[Tensor], eps: float,
                             detach: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, var, mean, inv, scale); `detach` (explanation mode) only changes the backward."""
    return batch_norm_forward(x, weight, eps)


@batch_norm_uncentered_op.register_fake
def _(x, weight, eps, detach):
    stats = [x.new_empty(x.shape[1], dtype=acc_torch_dtype(x)) for _ in range(4)]
    return (torch.empty_like(x), *stats)


@torch.library.custom_op("timm_bcos::batch_norm_uncentered_backward", mutates_args=())
def batch_norm_uncentered_backward_op(grad: Tensor, x: Tensor, mean: Tensor, inv: Tensor, scale: Tensor,
                                      detach: bool) -> Tuple[Tensor, Tensor]:
    return batch_norm_backward(grad, x, mean, inv, scale, detach)


@batch_norm_uncentered_backward_op.register_fake
def _(grad, x, mean, inv, scale, detach):
    return torch.empty_like(x), torch.empty_like(inv)


def _setup_context(ctx, inputs, output):
    x, weight, _eps, detach = inputs
    _y, _var, mean, inv, scale = output
    ctx.save_for_backward(x, mean, inv, scale)
    ctx.detach = detach
    ctx.weight_dtype = weight.dtype if weight is not None else None


def _backward(ctx, grad, *_grad_stats):
    x, mean, inv, scale = ctx.saved_tensors
    grad_x, grad_w = batch_norm_uncentered_backward_op(grad, x, mean, inv, scale, ctx.detach)
    grad_w = grad_w.to(ctx.weight_dtype) if ctx.weight_dtype is not None and ctx.needs_input_grad[1] else None
    return grad_x, grad_w, None, None


batch_norm_uncentered_op.register_autograd(_backward, setup_context=_setup_context)


def batch_norm_uncentered(x: Tensor, weight: Optional[Tensor], eps: float, detach: bool) -> Tuple[Tensor, Tensor]:
    """(y, var) as `_UncenteredBatchNormTrain` returns them."""
    if capturing_graph():
        return batch_norm_uncentered_op(x, weight, float(eps), bool(detach))[:2]
    return FusedBatchNormUncentered.apply(x, weight, float(eps), bool(detach))
