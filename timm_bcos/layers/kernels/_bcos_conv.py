"""A B-cos convolution's training step as one autograd node: conv, patch norm and scale (Eq. 9).

As three nodes, autograd also launches a kernel to add the conv's and the patch norm's input
gradients and one to sum the scale's per-split norm gradients, and runs three nodes' host code;
eager GPU steps are bound by host time per launch (benchmarks/step_counts.py). Here the patch
norm's backward kernel sums the splits while it reads them and adds its part into the conv's
input gradient in place. The maths and the kernels are those of the three separate ops.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from ._bcos_scale import _as_groups, from_output, scale_backward, scale_forward
from ._common import capturing_graph
from ._patch_norm import _explicit_padding, patch_norm_backward, patch_norm_forward


def _autocast_inputs(x: Tensor, weight: Tensor) -> Tuple[Tensor, Tensor]:
    """(x, weight) as autocast would hand them to the conv, so that the backward sees the same tensors."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return x.to(dtype), weight.to(dtype)
    return x, weight


class FusedBcosConv2d(torch.autograd.Function):
    """out = scale(conv(x, w_hat), patch_norm(x)) for training (not explanation mode), MaxOut 1."""

    @staticmethod
    def forward(ctx, x: Tensor, w_hat: Tensor, b: float, stride: List[int], padding: List[int],
                dilation: List[int], groups: int, kernel_size: List[int], eps: float) -> Tensor:
        x_conv, w_conv = _autocast_inputs(x, w_hat)
        lin = F.conv2d(x_conv, w_conv, None, stride, padding, dilation, groups)
        norm = patch_norm_forward(x, groups, kernel_size, stride, padding, dilation, eps)
        lin_v, norm_v = _as_groups(lin, norm)
        out = scale_forward(lin_v, norm_v, b).view(lin.shape)
        ctx.save_for_backward(x, x_conv, w_conv, out if from_output(b, False, lin.dtype) else lin, norm)
        ctx.geometry = (kernel_size, stride, padding, dilation, groups)
        ctx.b = b
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, x_conv, w_conv, kept, norm = ctx.saved_tensors
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
            if grad_x.dtype == x.dtype and grad_x.is_contiguous():  # add into the conv's gradient in place
                grad_x = patch_norm_backward(grad_norm, x, norm, kernel_size, stride, padding, dilation, grad_x)
            else:  # autocast cast x for the conv: sum in x's dtype, as autograd would
                grad_x = grad_x.to(x.dtype) + patch_norm_backward(grad_norm, x, norm, kernel_size, stride,
                                                                  padding, dilation)
        return grad_x, grad_w, None, None, None, None, None, None, None


def bcos_conv2d(x: Tensor, w_hat: Tensor, b: float, kernel_size, stride, padding, dilation, groups: int,
                eps: float) -> Optional[Tensor]:
    """The fused training step, or None where the separate ops must run: inside graphs (they take
    the custom ops), and for a padding only F.conv2d can resolve (asymmetric 'same')."""
    pad = _explicit_padding(padding, kernel_size, stride, dilation)
    if pad is None or capturing_graph():
        return None
    return FusedBcosConv2d.apply(x, w_hat, float(b), list(stride), pad, list(dilation), int(groups),
                                 list(kernel_size), float(eps))
