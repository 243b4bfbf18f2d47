"""Fused uncentered batch norm, training mode: y = x * w / sqrt(var_batch(x) + eps) per channel.

Statistics: each program reduces a chunk of one channel to (count, mean, M2)
by merging per-tile moments (Chan et al.'s parallel update, no E[x^2] - E[x]^2
cancellation); the apply kernel's programs each merge their channel's few chunks,
fold weight and 1/sqrt(var + eps) into one factor and apply it. Backward: the per-channel
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
def _stats_partial_kernel(x_ptr, part_ptr, N, C, HW, ROWS, SPLITS, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """(count, mean, M2) of rows [sp * ROWS, (sp + 1) * ROWS) of channel c into part [3, C, SPLITS]."""
    c = tl.program_id(0)
    sp = tl.program_id(1)
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
    at = part_ptr + c * SPLITS + sp
    tl.store(at, cnt)
    tl.store(at + C * SPLITS, mean)
    tl.store(at + 2 * C * SPLITS, m2)


@triton.jit
def _channel_stats(part_ptr, w_ptr, c, C, SPLITS, eps, HAS_W: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
    """(mean, var, 1/sqrt(var + eps), weight/sqrt(var + eps)) of channel c, merged from its SPLITS partials."""
    i = tl.arange(0, BLOCK_SPLITS)
    m = i < SPLITS
    at = part_ptr + c * SPLITS + i
    cnt = tl.load(at, mask=m, other=0.0)
    mu = tl.load(at + C * SPLITS, mask=m, other=0.0)
    q = tl.load(at + 2 * C * SPLITS, mask=m, other=0.0)
    total = tl.sum(cnt, axis=0)
    mean = tl.sum(cnt * mu, axis=0) / total
    var = tl.sum(q + cnt * (mu - mean) * (mu - mean), axis=0) / total  # biased, as batch norm
    inv = 1.0 / tl.sqrt(var + eps)
    scale = inv
    if HAS_W:
        scale = inv * tl.load(w_ptr + c).to(inv.dtype)
    return mean, var, inv, scale


@triton.jit
def _apply_kernel(x_ptr, part_ptr, w_ptr, stats_ptr, y_ptr, rv_ptr, C, HW, SPLITS, eps, momentum,
                  HAS_W: tl.constexpr, HAS_RV: tl.constexpr, LERP_LOW: tl.constexpr,
                  BLOCK: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
    """y = x * scale[c]; every program merges its channel's few partials itself (one launch fewer than a
    separate finalising kernel: host time per launch weighs on eager steps), and one program per
    channel writes (mean, var, inv, scale) into stats [4, C] and, with HAS_RV, moves the running
    variance towards var as torch.lerp does (its two branches: LERP_LOW is momentum < 0.5)."""
    row = tl.program_id(0).to(tl.int64)  # n * C + c
    c = row % C
    mean, var, inv, sc = _channel_stats(part_ptr, w_ptr, c, C, SPLITS, eps, HAS_W, BLOCK_SPLITS)
    if (row < C) & (tl.program_id(1) == 0):
        tl.store(stats_ptr + c, mean)
        tl.store(stats_ptr + C + c, var)
        tl.store(stats_ptr + 2 * C + c, inv)
        tl.store(stats_ptr + 3 * C + c, sc)
        if HAS_RV:
            rv = tl.load(rv_ptr + c).to(var.dtype)
            end = var.to(rv_ptr.dtype.element_ty).to(var.dtype)
            if LERP_LOW:
                rv = rv + momentum * (end - rv)
            else:
                rv = end - (end - rv) * (1.0 - momentum)
            tl.store(rv_ptr + c, rv.to(rv_ptr.dtype.element_ty))
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = s < HW
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
def _bwd_apply_kernel(g_ptr, x_ptr, gx_ptr, gw_ptr, partial_ptr, stats_ptr, C, HW, M, SPLITS,
                      DETACH: tl.constexpr, BLOCK: tl.constexpr, BLOCK_SPLITS: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c = row % C
    s = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = s < HW
    sc = tl.load(stats_ptr + 3 * C + c)
    g = tl.load(g_ptr + row * HW + s, mask=m, other=0.0).to(sc.dtype)
    gx = g * sc
    i = tl.arange(0, BLOCK_SPLITS)
    gx_sum = tl.sum(tl.load(partial_ptr + c * SPLITS + i, mask=i < SPLITS, other=0.0), axis=0)  # sum(g x)
    inv = tl.load(stats_ptr + 2 * C + c)
    if (row < C) & (tl.program_id(1) == 0):  # one program per channel writes the weight gradient
        tl.store(gw_ptr + c, gx_sum * inv)
    if not DETACH:  # d/dx through var: -(w inv^3 / M) sum(g x) (x - mean)
        coef = -(sc * inv * inv) * gx_sum / M
        x = tl.load(x_ptr + row * HW + s, mask=m, other=0.0).to(sc.dtype)
        gx += coef * (x - tl.load(stats_ptr + c))
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
def batch_norm_forward(x: Tensor, weight: Optional[Tensor], eps: float, running_var: Optional[Tensor] = None,
                       momentum: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(y, stats) for x [N, C, H, W]: stats [4, C] = (mean, var, inv, scale), in float32 (float64 for float64 x);
    `running_var`, if given, is lerped towards var in place. Two launches and three allocations: host
    time per op weighs on eager GPU steps."""
    x = x.contiguous()
    n, c, h, w = x.shape
    hw = h * w
    block, rows, splits = _splits(n, hw)
    part = torch.empty(3, c, splits, device=x.device, dtype=acc_torch_dtype(x))
    _stats_partial_kernel[(c, splits)](x, part, n, c, hw, rows, splits, ACC=acc_dtype(x), BLOCK=block)
    stats = torch.empty(4, c, device=x.device, dtype=part.dtype)
    y = torch.empty_like(x)
    rb = _rows_block(hw)
    _apply_kernel[(n * c, cdiv(hw, rb))](
        x, part, weight if weight is not None else stats, stats, y, running_var if running_var is not None else stats,
        c, hw, splits, eps, momentum, HAS_W=weight is not None, HAS_RV=running_var is not None,
        LERP_LOW=momentum < 0.5, BLOCK=rb, BLOCK_SPLITS=pow2(splits))
    return y, stats


@on_input_device
def batch_norm_backward(grad: Tensor, x: Tensor, stats: Tensor, detach: bool) -> Tuple[Tensor, Tensor]:
    """(grad_x, sum(g * x) * inv), the second being the weight gradient."""
    grad, x = grad.contiguous(), x.contiguous()
    n, c, h, w = x.shape
    m, hw = n * h * w, h * w
    block, rows, splits = _splits(n, hw)
    partial = torch.empty(c, splits, device=x.device, dtype=stats.dtype)
    _gx_partial_kernel[(c, splits)](grad, x, partial, n, c, hw, rows, splits, ACC=acc_dtype(stats), BLOCK=block)
    grad_x, grad_w = torch.empty_like(x), torch.empty(c, device=x.device, dtype=stats.dtype)
    rb = _rows_block(hw)
    _bwd_apply_kernel[(n * c, cdiv(hw, rb))](grad, x, grad_x, grad_w, partial, stats, c, hw, m, splits,
                                             DETACH=detach, BLOCK=rb, BLOCK_SPLITS=pow2(splits))
    return grad_x, grad_w


def _weight_grad(ctx, grad_w: Tensor) -> Optional[Tensor]:
    return grad_w.to(ctx.weight_dtype) if ctx.weight_dtype is not None and ctx.needs_input_grad[1] else None


class FusedBatchNormUncentered(torch.autograd.Function):
    """Eager autograd around the kernels: (y, var); `detach` (explanation mode) only changes the backward.
    A plain Function for its low dispatch cost (see _bcos_scale.FusedBcosScale)."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Optional[Tensor], eps: float, detach: bool,
                running_var: Optional[Tensor], momentum: float):
        y, stats = batch_norm_forward(x, weight, eps, running_var, momentum)
        ctx.save_for_backward(x, stats)
        ctx.detach = detach
        ctx.weight_dtype = weight.dtype if weight is not None else None
        var = stats[1]
        ctx.mark_non_differentiable(var)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for var: one launch fewer per layer
        return y, var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Optional[Tensor], _grad_var):
        if grad is None:  # y did not reach the loss
            return None, None, None, None, None, None
        x, stats = ctx.saved_tensors
        grad_x, grad_w = batch_norm_backward(grad, x, stats, ctx.detach)
        return grad_x, _weight_grad(ctx, grad_w), None, None, None, None


# The same kernels as torch custom ops, for compiled graphs (see _bcos_scale.bcos_scale_op).
@torch.library.custom_op("timm_bcos::batch_norm_uncentered", mutates_args=())
def batch_norm_uncentered_op(x: Tensor, weight: Optional[Tensor], eps: float, detach: bool) -> Tuple[Tensor, Tensor]:
    """(y, stats [4, C] = (mean, var, inv, scale)); `detach` (explanation mode) only changes the backward."""
    return batch_norm_forward(x, weight, eps)


@batch_norm_uncentered_op.register_fake
def _(x, weight, eps, detach):
    return torch.empty_like(x), x.new_empty(4, x.shape[1], dtype=acc_torch_dtype(x))


@torch.library.custom_op("timm_bcos::batch_norm_uncentered_backward", mutates_args=())
def batch_norm_uncentered_backward_op(grad: Tensor, x: Tensor, stats: Tensor, detach: bool) -> Tuple[Tensor, Tensor]:
    return batch_norm_backward(grad, x, stats, detach)


@batch_norm_uncentered_backward_op.register_fake
def _(grad, x, stats, detach):
    return torch.empty_like(x), stats.new_empty(x.shape[1])


def _setup_context(ctx, inputs, output):
    x, weight, _eps, detach = inputs
    ctx.save_for_backward(x, output[1])
    ctx.detach = detach
    ctx.weight_dtype = weight.dtype if weight is not None else None


def _backward(ctx, grad, _grad_stats):
    x, stats = ctx.saved_tensors
    grad_x, grad_w = batch_norm_uncentered_backward_op(grad, x, stats, ctx.detach)
    return grad_x, _weight_grad(ctx, grad_w), None, None


batch_norm_uncentered_op.register_autograd(_backward, setup_context=_setup_context)


def batch_norm_uncentered(x: Tensor, weight: Optional[Tensor], eps: float, detach: bool,
                          running_var: Optional[Tensor] = None, momentum: float = 0.0) -> Tuple[Tensor, Tensor]:
    """(y, var) as `_UncenteredBatchNormTrain` returns them; `running_var`, if given, lerped towards var
    by `momentum` in place (eagerly by the apply kernel, one launch fewer per layer)."""
    if running_var is not None and running_var.dtype == torch.float64:
        # Triton passes a Python float as float32: a float64 model's update stays on the host, exact
        y, var = batch_norm_uncentered(x, weight, eps, detach)
        with torch.no_grad():
            running_var.lerp_(var.to(running_var.dtype), momentum)
        return y, var
    if capturing_graph():  # the op stays functional in graphs; the update is a plain in-place op there
        y, stats = batch_norm_uncentered_op(x, weight, float(eps), bool(detach))
        if running_var is not None:
            with torch.no_grad():
                running_var.lerp_(stats[1].to(running_var.dtype), momentum)
        return y, stats[1]
    return FusedBatchNormUncentered.apply(x, weight, float(eps), bool(detach), running_var, float(momentum))
