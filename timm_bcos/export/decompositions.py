"""Backward ops of the explaining graph written as forward ops an ONNX runtime has.

The input gradient of a convolution (`aten.convolution_backward`, which ONNX lacks) is the
transposed convolution with the same weight: ONNX's ConvTranspose; that of an average pool is
the transposed convolution with a box of ones, each window's gradient first divided by the
pool's divisor; that of a gather (picking the explained logits) a sum of one-hot masks. Everything
else in an explanation's backward pass decomposes through PyTorch's own core-ATen table.
"""
from __future__ import annotations

import torch

aten = torch.ops.aten


def conv_input_grad(grad_out, inp, weight, bias_sizes, stride, padding, dilation, transposed,
                    output_padding, groups, output_mask):
    """aten.convolution_backward for the input gradient only (an explanation needs no weight gradient)."""
    if transposed or output_mask[1] or output_mask[2]:
        raise NotImplementedError("only the input gradient of a forward convolution can be exported "
                                  f"(transposed={transposed}, output_mask={list(output_mask)})")
    kernel = weight.shape[2:]
    # the transposed convolution's output must have the input's size: add what the strides dropped
    extra = [inp.shape[2 + i] - ((grad_out.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                 + dilation[i] * (kernel[i] - 1) + 1) for i in range(len(kernel))]
    grad_in = aten.convolution(grad_out, weight, None, stride, padding, dilation, True, extra, groups)
    return grad_in, None, None


def avg_pool_input_grad(grad_out, inp, kernel_size, stride, padding, ceil_mode, count_include_pad,
                        divisor_override):
    """aten.avg_pool2d_backward: every input pixel collects grad / divisor from the windows holding it."""
    kernel = list(kernel_size) * (3 - len(kernel_size))
    stride = list(stride or kernel) * (3 - len(stride or kernel))
    padding = list(padding) * (3 - len(padding))
    size = inp.shape[-2:]
    ones = inp.new_ones(1, 1, *size)
    # avg_pool2d(1) = (pixels of the image in the window) / divisor, whatever the pool's options
    pooled_ones = aten.avg_pool2d(ones, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
    box = inp.new_ones(1, 1, *kernel)
    out = pooled_ones.shape[-2:]
    # ceil_mode windows may reach past the padded image: pad the ones as far as the last window reaches
    reach = [(out[i] - 1) * stride[i] + kernel[i] - size[i] - padding[i] for i in range(2)]
    inside = aten.convolution(aten.constant_pad_nd(ones, [padding[1], reach[1], padding[0], reach[0]]), box,
                              None, stride, [0, 0], [1, 1], False, [0, 0], 1)
    scaled = grad_out * (pooled_ones / inside.clamp_min(1))  # grad / divisor
    channels = inp.shape[-3]
    spread = aten.convolution(scaled, box.expand(channels, 1, *kernel), None, stride, [0, 0], [1, 1], True,
                              [0, 0], channels)  # every window's share back on its pixels, padding included
    full = [(out[i] - 1) * stride[i] + kernel[i] for i in range(2)]
    missing = [max(0, padding[i] + size[i] - full[i]) for i in range(2)]  # floor mode can leave the last rows out
    spread = aten.constant_pad_nd(spread, [0, missing[1], 0, missing[0]])
    return spread[..., padding[0]:padding[0] + size[0], padding[1]:padding[1] + size[1]]


def adaptive_avg_pool_input_grad(grad_out, inp):
    """aten._adaptive_avg_pool2d_backward where each output pixel pools an equal block (sizes divide)."""
    size, out = inp.shape[-2:], grad_out.shape[-2:]
    if size[0] % out[0] or size[1] % out[1]:
        raise NotImplementedError(f"the gradient of an adaptive average pool from {tuple(size)} to {tuple(out)} "
                                  "(sizes that do not divide) cannot be exported; use an input size that divides")
    kernel = [size[0] // out[0], size[1] // out[1]]
    return avg_pool_input_grad(grad_out, inp, kernel, kernel, [0, 0], False, True, None)


def gather_grad(grad, inp, dim, index, sparse_grad=False):
    """aten.gather_backward as a sum of one-hot masks: the scatter-add it decomposes to by default has
    no float16 kernel in onnxruntime's CPU provider. [..., K] explained values of [..., C] outputs."""
    if any(index.shape[d] != inp.shape[d] for d in range(inp.dim()) if d != dim % inp.dim()):
        raise NotImplementedError("the gradient of a gather with an index smaller than its input")
    one_hot = index.movedim(dim, -1)[..., None] == torch.arange(inp.shape[dim], device=index.device)
    return (one_hot * grad.movedim(dim, -1)[..., None]).sum(-2).movedim(-1, dim)


def onnx_decompositions() -> dict:
    """PyTorch's core-ATen decompositions, plus the convolution's input gradient as ConvTranspose."""
    table = torch.export.default_decompositions()
    table[aten.convolution_backward.default] = conv_input_grad
    table[aten.avg_pool2d_backward.default] = avg_pool_input_grad
    table[aten._adaptive_avg_pool2d_backward.default] = adaptive_avg_pool_input_grad
    table[aten.gather_backward.default] = gather_grad
    return table
