"""Fused patch norm of BcosConv2d: ||x_patch|| = sqrt(sum_window sum_channels x^2 + eps).

Forward: one kernel sums the squares over each group's channels ([N, G, H, W],
accumulated in float32), a second sums them over each receptive field and
takes the square root; a 1x1 stride-1 unpadded conv needs only the first.
Backward: d||p_o||/dx_{c,p} = x_{c,p} / ||p_o|| for every window o holding p,
so grad_x = x * u with u_p = sum_{o ∋ p} g_o / ||p_o||: one kernel gathers u
and writes grad_x.
"""
from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._common import acc_dtype, acc_torch_dtype, capturing_graph, cdiv, grouped_geometry, on_input_device, pow2


@triton.jit
def _channel_sumsq_kernel(x_ptr, out_ptr, K, HW, KPER, NGHW, eps, FINAL: tl.constexpr, ACC: tl.constexpr,
                          BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    ng = tl.program_id(0).to(tl.int64)  # n * G + g: x[n, g*K + k, s] sits at (ng*K + k)*HW + s
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < HW
    base = ng * K * HW
    acc = tl.zeros([BLOCK_S], dtype=ACC)
    for k0 in range(0, KPER, BLOCK_K):  # this program's KPER channels; axis 2 splits K into planes of partial sums
        k = tl.program_id(2) * KPER + k0 + tl.arange(0, BLOCK_K)
        m = (k[:, None] < K) & smask[None, :]
        v = tl.load(x_ptr + base + k[:, None] * HW + s[None, :], mask=m, other=0.0).to(ACC)
        acc += tl.sum(v * v, axis=0)
    if FINAL:
        acc = tl.sqrt(acc + eps)
    tl.store(out_ptr + tl.program_id(2) * NGHW + ng * HW + s, acc.to(out_ptr.dtype.element_ty), mask=smask)


@triton.jit
def _window_norm(sq_ptr, ng, o, omask, H, W, Wo, SH, SW, PH, PW, DH, DW, PLANES, NGHW, eps,
                 KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    """sqrt(eps + the window sums of the squares) at output positions o of plane ng, over the channel
    splits' PLANES partial sums."""
    oh = o // Wo
    ow = o % Wo
    acc = tl.zeros([BLOCK], dtype=sq_ptr.dtype.element_ty)
    for p in range(0, PLANES):
        for i in tl.static_range(KH):
            ih = oh * SH - PH + i * DH
            for j in tl.static_range(KW):
                iw = ow * SW - PW + j * DW
                m = omask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                acc += tl.load(sq_ptr + p * NGHW + ng * H * W + ih * W + iw, mask=m, other=0.0)
    return tl.sqrt(acc + eps)


@triton.jit
def _window_sum_sqrt_kernel(sq_ptr, out_ptr, Ho, H, W, Wo, SH, SW, PH, PW, DH, DW, PLANES, NGHW, eps,
                            KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr):
    ng = tl.program_id(0).to(tl.int64)
    o = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    omask = o < Ho * Wo
    nrm = _window_norm(sq_ptr, ng, o, omask, H, W, Wo, SH, SW, PH, PW, DH, DW, PLANES, NGHW, eps, KH, KW, BLOCK)
    tl.store(out_ptr + ng * Ho * Wo + o, nrm.to(out_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _patch_norm_bwd_kernel(g_ptr, norm_ptr, x_ptr, gx_ptr, K, KPER, H, W, Ho, Wo, SH, SW, PH, PW, DH, DW,
                           PLANES, NGO, KH: tl.constexpr, KW: tl.constexpr, ACCUMULATE: tl.constexpr,
                           ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr):
    """grad_x = x * u (ACCUMULATE: grad_x += x * u); the norm gradient g may come as PLANES partial
    planes of NGO values each (the scale's channel splits), summed here."""
    ng = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < H * W
    ih = s // W
    iw = s % W
    u = tl.zeros([BLOCK_S], dtype=ACC)
    for i in tl.static_range(KH):
        th = ih + PH - i * DH  # = oh * SH for the output row oh whose window holds ih at tap i
        oh = th // SH
        mh = (th >= 0) & (th % SH == 0) & (oh < Ho)
        for j in tl.static_range(KW):
            tw = iw + PW - j * DW
            ow = tw // SW
            m = smask & mh & (tw >= 0) & (tw % SW == 0) & (ow < Wo)
            idx = ng * Ho * Wo + oh * Wo + ow
            g = tl.load(g_ptr + idx, mask=m, other=0.0).to(ACC)
            for p in range(1, PLANES):
                g += tl.load(g_ptr + p * NGO + idx, mask=m, other=0.0).to(ACC)
            nrm = tl.load(norm_ptr + idx, mask=m, other=1.0).to(ACC)
            u += g / nrm
    base = ng * K * H * W
    for k0 in range(0, KPER, BLOCK_K):
        k = tl.program_id(2) * KPER + k0 + tl.arange(0, BLOCK_K)
        mk = (k[:, None] < K) & smask[None, :]
        offs = base + k[:, None] * (H * W) + s[None, :]
        gx = tl.load(x_ptr + offs, mask=mk, other=0.0).to(ACC) * u[None, :]
        if ACCUMULATE:
            gx += tl.load(gx_ptr + offs, mask=mk, other=0.0).to(ACC)
        tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=mk)


def _out_hw(h: int, w: int, k, s, p, d):
    return (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1, (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1


def _is_identity(k, s, p) -> bool:
    return list(k) == [1, 1] and list(s) == [1, 1] and list(p) == [0, 0]


def channel_squares(x: Tensor, groups: int, kernel_size: List[int], stride: List[int], padding: List[int],
                    eps: float) -> Tuple[Optional[Tensor], Tensor]:
    """(norms, None) where one kernel gives the patch norms (1x1, stride 1, unpadded, one channel split),
    else (None, the channel sums of squares as [splits, N, G, H, W] partial planes). x contiguous."""
    n, c, h, w = x.shape
    grid, k, per, bk, bs = grouped_geometry(n, c, h * w, groups)
    final = grid[2] == 1 and _is_identity(kernel_size, stride, padding)
    if final:
        out = torch.empty(n, groups, h, w, device=x.device, dtype=x.dtype)
    else:
        out = torch.empty(grid[2], n, groups, h, w, device=x.device, dtype=acc_torch_dtype(x))
    _channel_sumsq_kernel[grid](
        x, out, k, h * w, per, n * groups * h * w, eps, FINAL=final, ACC=acc_dtype(x), BLOCK_K=bk, BLOCK_S=bs)
    return (out, None) if final else (None, out)


def window_args(x: Tensor, squares: Tensor, kernel_size, stride, padding, dilation, eps: float):
    """(runtime args from H to eps, constexprs KH and KW) of `_window_norm` over x's squares."""
    h, w = x.shape[2:]
    wo = _out_hw(h, w, kernel_size, stride, padding, dilation)[1]
    return ((h, w, wo, *stride, *padding, *dilation, squares.shape[0], squares[0].numel(), eps),
            dict(KH=kernel_size[0], KW=kernel_size[1]))


@on_input_device
def patch_norm_forward(x: Tensor, groups: int, kernel_size: List[int], stride: List[int], padding: List[int],
                       dilation: List[int], eps: float) -> Tensor:
    x = x.contiguous()
    norm, squares = channel_squares(x, groups, kernel_size, stride, padding, eps)
    if norm is not None:
        return norm
    ho, wo = _out_hw(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation)
    norm = torch.empty(x.shape[0], groups, ho, wo, device=x.device, dtype=x.dtype)
    return window_norms(x, squares, norm, kernel_size, stride, padding, dilation, eps)


def window_norms(x: Tensor, squares: Tensor, norm: Tensor, kernel_size, stride, padding, dilation,
                 eps: float) -> Tensor:
    """Fills norm [N, G, H_out, W_out] with the patch norms from x's channel squares; returns it."""
    n, groups, ho, wo = norm.shape
    args, consts = window_args(x, squares, kernel_size, stride, padding, dilation, eps)
    block = min(pow2(ho * wo), 1024)
    _window_sum_sqrt_kernel[(n * groups, cdiv(ho * wo, block))](squares, norm, ho, *args, **consts, BLOCK=block)
    return norm


@on_input_device
def patch_norm_backward(grad: Tensor, x: Tensor, norm: Tensor, kernel_size: List[int], stride: List[int],
                        padding: List[int], dilation: List[int], add_to: Optional[Tensor] = None) -> Tensor:
    """grad_x; `grad` may hold extra leading planes of partial sums ([P, *norm.shape]); with `add_to`
    (contiguous, x's shape) the result is added into it in place and returned."""
    grad, x, norm = grad.contiguous(), x.contiguous(), norm.contiguous()
    n, c, h, w = x.shape
    groups, ho, wo = norm.shape[1:]
    grad_x = torch.empty_like(x) if add_to is None else add_to
    grid, k, per, bk, bs = grouped_geometry(n, c, h * w, groups)
    _patch_norm_bwd_kernel[grid](
        grad, norm, x, grad_x, k, per, h, w, ho, wo, *stride, *padding, *dilation, grad.numel() // max(norm.numel(), 1),
        norm.numel(), KH=kernel_size[0], KW=kernel_size[1], ACCUMULATE=add_to is not None, ACC=acc_dtype(x),
        BLOCK_K=bk, BLOCK_S=bs)
    return grad_x


class FusedPatchNorm(torch.autograd.Function):
    """Eager autograd around the kernels (a plain Function for its low dispatch cost; see _bcos_scale)."""

    @staticmethod
    def forward(ctx, x: Tensor, groups: int, kernel_size, stride, padding, dilation, eps: float) -> Tensor:
        out = patch_norm_forward(x, groups, kernel_size, stride, padding, dilation, eps)
        ctx.save_for_backward(x, out)
        ctx.geometry = (kernel_size, stride, padding, dilation)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, norm = ctx.saved_tensors
        return patch_norm_backward(grad, x, norm, *ctx.geometry), None, None, None, None, None, None


# The same kernels as torch custom ops, for compiled graphs (see _bcos_scale.bcos_scale_op).
@torch.library.custom_op("timm_bcos::patch_norm", mutates_args=())
def patch_norm_op(x: Tensor, groups: int, kernel_size: List[int], stride: List[int], padding: List[int],
                  dilation: List[int], eps: float) -> Tensor:
    return patch_norm_forward(x, groups, kernel_size, stride, padding, dilation, eps)


@patch_norm_op.register_fake
def _(x, groups, kernel_size, stride, padding, dilation, eps):
    ho, wo = _out_hw(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation)
    return x.new_empty(x.shape[0], groups, ho, wo)


@torch.library.custom_op("timm_bcos::patch_norm_backward", mutates_args=())
def patch_norm_backward_op(grad: Tensor, x: Tensor, norm: Tensor, kernel_size: List[int], stride: List[int],
                           padding: List[int], dilation: List[int]) -> Tensor:
    return patch_norm_backward(grad, x, norm, kernel_size, stride, padding, dilation)


@patch_norm_backward_op.register_fake
def _(grad, x, norm, kernel_size, stride, padding, dilation):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, _groups, kernel_size, stride, padding, dilation, _eps = inputs
    ctx.save_for_backward(x, output)
    ctx.geometry = (kernel_size, stride, padding, dilation)


def _backward(ctx, grad):
    x, norm = ctx.saved_tensors
    return patch_norm_backward_op(grad, x, norm, *ctx.geometry), None, None, None, None, None, None


patch_norm_op.register_autograd(_backward, setup_context=_setup_context)


def _explicit_padding(padding, kernel_size, stride, dilation):
    """Pairs for 'valid' and a symmetric 'same'; None where only F.conv2d can say (asymmetric 'same')."""
    if padding == "valid":
        return [0, 0]
    if padding == "same":
        total = [d * (k - 1) for k, d in zip(kernel_size, dilation)]
        if any(t % 2 for t in total) or list(stride) != [1, 1]:
            return None
        return [t // 2 for t in total]
    return list(padding)


def patch_norm(x: Tensor, groups: int, kernel_size, stride, padding, dilation, eps: float):
    """[N, groups, H_out, W_out] patch norms, or None for a padding only the PyTorch path handles."""
    pad = _explicit_padding(padding, kernel_size, stride, dilation)
    if pad is None:
        return None
    apply = patch_norm_op if capturing_graph() else FusedPatchNorm.apply
    return apply(x, groups, list(kernel_size), list(stride), pad, list(dilation), float(eps))
