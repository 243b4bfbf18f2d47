"""A B-cos convolution's training step as one autograd node: weight norm, conv, patch norm and
scale (Eq. 9).

As four nodes, autograd also launches a kernel to add the conv's and the patch norm's input
gradients and one to sum the scale's per-split norm gradients, and runs four nodes' host code;
eager GPU steps looked bound by host time per launch (benchmarks/step_counts.py; the weight
norm's own node was ~7% of a conv + BN block's host time, launch_cost.py --stub). Here the scale
kernel sums the channel squares over each window itself where that is cheap (no separate
window kernel: it writes the norms the backward needs), and the patch norm's backward kernel
sums the scale's splits while it reads them and adds its part into the conv's input gradient
in place. The maths are those of the four separate ops, to the rounding
(tests/kernels_interpreted.py).
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._bcos_scale import _as_groups, _launch_args, _out_dtype, _scale_rows, from_output, scale_backward, scale_forward
from ._common import capturing_graph, on_input_device
from ._patch_norm import (_explicit_padding, _out_hw, _window_norm, channel_squares, patch_norm_backward, window_args,
                          window_norms)


@triton.jit
def _window_scale_fwd_kernel(lin_ptr, sq_ptr, norm_ptr, out_ptr, K, S, KPER, NGS, b_minus_1, cos_eps,
                             H, W, Wo, SH, SW, PH, PW, DH, DW, PLANES, NGHW, eps, IS_B2: tl.constexpr,
                             ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_S: tl.constexpr,
                             KH: tl.constexpr, KW: tl.constexpr):
    """The scale of _bcos_scale._scale_fwd_kernel with the norms made from the channel squares'
    window sums on the spot (and written once, by the first channel split, for the backward)."""
    ng = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    smask = s < S
    nrm = _window_norm(sq_ptr, ng, s, smask, H, W, Wo, SH, SW, PH, PW, DH, DW, PLANES, NGHW, eps, KH, KW, BLOCK_S)
    nrm = nrm.to(norm_ptr.dtype.element_ty)  # the separate ops' rounding: the backward reads these norms
    if tl.program_id(2) == 0:
        tl.store(norm_ptr + ng * S + s, nrm, mask=smask)
    inv = 1.0 / tl.where(smask, nrm.to(ACC), 1.0)
    _scale_rows(lin_ptr, out_ptr, inv, ng, s, smask, K, S, KPER, b_minus_1, cos_eps, IS_B2, ACC, BLOCK_K)


@on_input_device
def norms_and_scale(x: Tensor, lin: Tensor, b: float, groups: int, kernel_size: List[int], stride: List[int],
                    padding: List[int], dilation: List[int], eps: float) -> Tuple[Tensor, Tensor]:
    """(patch norms [N, G, H_out, W_out], scaled output) from x and the conv output lin: two launches
    (three where the window sums would cost the scale's channel splits too much)."""
    x = x.contiguous()
    norm, squares = channel_squares(x, groups, kernel_size, stride, padding, eps)
    if norm is not None:  # one kernel gave the norms: the plain scale
        lin_v, norm_v = _as_groups(lin, norm)
        return norm, scale_forward(lin_v, norm_v, b).view(lin.shape)
    ho, wo = _out_hw(x.shape[2], x.shape[3], kernel_size, stride, padding, dilation)
    norm = torch.empty(x.shape[0], groups, ho, wo, device=x.device, dtype=x.dtype)
    lin_v, norm_v = _as_groups(lin.contiguous(), norm)
    grid, args, meta = _launch_args(lin_v, norm_v, b)
    if grid[2] > 1 and kernel_size[0] * kernel_size[1] * squares.shape[0] > args[2]:
        # each channel split recomputes the window sums: fused only where that reads at most as
        # many values as the split's channels do (KH * KW * planes <= channels per split)
        window_norms(x, squares, norm, kernel_size, stride, padding, dilation, eps)
        return norm, scale_forward(lin_v, norm_v, b).view(lin.shape)
    out = torch.empty_like(lin_v, dtype=_out_dtype(lin_v, norm_v, b))
    window, consts = window_args(x, squares, kernel_size, stride, padding, dilation, eps)
    _window_scale_fwd_kernel[grid](lin_v, squares, norm, out, *args, *window, **meta, **consts)
    return norm, out.view(lin.shape)


def _autocast_inputs(x: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """(x, weight) as autocast would hand them to the conv (float64 stays), so that the backward sees
    the same tensors."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.dtype != torch.float64 else t for t in (x, weight))


class FusedBcosConv2d(torch.autograd.Function):
    """out = scale(conv(x, w_hat), patch_norm(x)) for training (not explanation mode), MaxOut 1, with
    w_hat = weight / ||weight|| per row (the hat in Eq. 3) made here by torch's fused weight-norm
    kernel from `gains` (ones): one autograd node fewer per layer."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, gains: Tensor, b: float, stride: List[int],
                padding: List[int], dilation: List[int], groups: int, kernel_size: List[int], eps: float) -> Tensor:
        w_hat, row_norms = torch.ops.aten._weight_norm_interface(weight, gains, 0)
        x_conv, w_conv = _autocast_inputs(x, w_hat)
        lin = F.conv2d(x_conv, w_conv, None, stride, padding, dilation, groups)
        norm, out = norms_and_scale(x, lin, b, groups, kernel_size, stride, padding, dilation, eps)
        x_kept = x if ctx.needs_input_grad[0] else None  # only the input gradient reads x itself
        # only the weight's gradient reads these: a frozen weight (made under inference_mode, say) is not kept
        w_kept = (weight, gains, row_norms) if ctx.needs_input_grad[1] else (None, None, None)
        ctx.save_for_backward(x_kept, x_conv, w_conv, out if from_output(b, False, lin.dtype) else lin, norm, *w_kept)
        ctx.geometry = (kernel_size, stride, padding, dilation, groups)
        ctx.b = b
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, x_conv, w_conv, kept, norm, weight, gains, row_norms = ctx.saved_tensors
        kernel_size, stride, padding, dilation, groups = ctx.geometry
        need_x, need_w = ctx.needs_input_grad[:2]
        kept_v, norm_v = _as_groups(kept, norm)
        grad_v = grad.contiguous().view(kept_v.shape)
        grad_lin, grad_norm = scale_backward(grad_v, kept_v, norm_v, ctx.b, False, False)  # norm gradient unsummed
        grad_x, grad_w, _ = torch.ops.aten.convolution_backward(
            grad_lin.view(kept.shape), x_conv, w_conv, None, stride, padding, dilation, False, [0, 0], groups,
            [need_x, need_w, False])
        if need_x:
            grad_norm = grad_norm.view(-1, *norm.shape)  # [P, N, G, H_out, W_out] partial sums
            # added into the conv's input gradient in place (in x's dtype where autocast cast x for the conv)
            grad_x = patch_norm_backward(grad_norm, x, norm, kernel_size, stride, padding, dilation,
                                         grad_x.to(x.dtype).contiguous())
        if need_w:  # through w_hat = weight / ||weight|| (in the weight's dtype where autocast cast w_hat)
            grad_w = torch.ops.aten._weight_norm_interface_backward(grad_w.to(weight.dtype).contiguous(), weight,
                                                                    gains, row_norms, 0)[0]
        return grad_x, grad_w, None, None, None, None, None, None, None, None


def bcos_conv2d(x: Tensor, weight: Tensor, gains: Tensor, b: float, kernel_size, stride, padding,
                dilation, groups: int, eps: float) -> Optional[Tensor]:
    """The fused training step, or None where the separate ops must run: inside graphs (they take
    the custom ops), for a padding only F.conv2d can resolve (asymmetric 'same'), for an empty batch."""
    pad = _explicit_padding(padding, kernel_size, stride, dilation)
    if pad is None or x.numel() == 0 or capturing_graph():
        return None
    return FusedBcosConv2d.apply(x, weight, gains, float(b), list(stride), pad, list(dilation), int(groups),
                                 list(kernel_size), float(eps))
