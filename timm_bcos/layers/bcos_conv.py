"""B-cos 2D convolution (Eq. 3 / Eq. 9, with MaxOut of Sec. 3.2.3)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from . import kernels
from ._checks import b_repr, bcos_repr, check_bcos_args, check_input
from .detach import DetachableModule
from .encoding import InputEncoding, NormalizedEncoding
from .functional import bcos_scale, max_out, scales_output, unit_norm_rows, weight_norm_gains

# Added to the squared patch norm before the square root, as in the reference.
PATCH_NORM_EPS = 1e-6


def v1_output_scale(kernel_size, in_channels: int, scale_factor: float = 100.0) -> float:
    """The per-layer output divisor of the paper's original (v1) models.

    Plain B-cos stacks without normalisation shrink their signal layer by layer;
    v1 divides each layer's output by sqrt(k_h * k_w * C_in) / scale_factor.
    """
    kh, kw = _pair(kernel_size)
    return math.sqrt(kh * kw) * math.sqrt(in_channels) / scale_factor


class BcosConv2d(DetachableModule):
    """B-cos convolution: unit-norm kernels, output scaled by |cos|^(B-1).

    `weight` has shape [out_channels * max_out, in_channels // groups, kh, kw],
    the same layout as the `bcos` package's `linear.weight`; MaxOut units of one
    output channel are consecutive.

    With `encode_input=True` the layer is a model's stem: it takes plain
    images with in_channels // 2 channels and applies `InputEncoding` first
    (a parameter-free child, so state-dict keys do not change); `input_norm=(mean, std)`
    then normalises the encoded image as a B-cosified stem does (`NormalizedEncoding`).

    `weight_norm=False` keeps the weights' own scale (B-cosification: at B=1 the layer is the
    conventional conv it was made from); `bias=True` adds a bias before the |cos| scaling.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size=1,
        stride=1,
        padding=0,
        dilation=1,
        groups: int = 1,
        b: float = 2.0,
        max_out: int = 1,
        scale: float | None = None,
        padding_mode: str = "zeros",
        encode_input: bool = False,
        input_norm: tuple | None = None,
        weight_norm: bool = True,
        bias: bool = False,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if encode_input and in_channels % 2:
            raise ValueError(f"encode_input needs an even in_channels (2 x image channels), got {in_channels}")
        check_bcos_args(b, max_out)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                f"must both be divisible by groups ({groups})"
            )
        if padding_mode != "zeros":
            raise ValueError(f"only padding_mode='zeros' is supported, got {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("valid", "same"):
            raise ValueError(f"padding must be an int, a pair, 'valid' or 'same'; got {padding!r}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        self.dilation = _pair(dilation)
        self.groups = groups
        self.b = float(b)
        self.max_out = max_out
        self.scale = scale
        self.weight = nn.Parameter(
            torch.empty(
                out_channels * max_out, in_channels // groups, *self.kernel_size,
                device=device, dtype=dtype,
            )
        )
        self.weight_norm = weight_norm
        self.bias = (nn.Parameter(torch.zeros(out_channels * max_out, device=device, dtype=dtype))
                     if bias else None)
        self.input_encoding = InputEncoding(in_channels // 2) if encode_input else None
        if input_norm is not None and not encode_input:
            raise ValueError("input_norm normalises the encoded image: it needs encode_input=True")
        self.input_norm = NormalizedEncoding(*input_norm) if input_norm is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same init as nn.Conv2d; only the direction matters after normalisation.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def _patch_norms(self, x: Tensor) -> Tensor:
        """||x_patch|| for every output position and group: [N, G, H_out, W_out]."""
        if kernels.use_fused(x):  # CUDA + Triton (kernels/_patch_norm.py)
            norms = kernels.patch_norm(x, self.groups, self.kernel_size, self.stride, self.padding,
                                       self.dilation, PATCH_NORM_EPS)
            if norms is not None:
                return norms
        squares = x * x
        n, c, h, w = squares.shape
        g = self.groups
        squares = squares.sum(1, keepdim=True) if g == 1 else squares.view(n, g, c // g, h, w).sum(2)
        if self.kernel_size != (1, 1) or self.stride != (1, 1) or self.padding not in ((0, 0), "valid", "same"):
            # Sum of squares over each receptive field: one ones-kernel per group.
            ones = squares.new_ones(g, 1, *self.kernel_size)
            squares = F.conv2d(squares, ones, None, self.stride, self.padding, self.dilation, g)
        return (squares + PATCH_NORM_EPS).sqrt()

    def _fused_training_step(self, x: Tensor) -> Tensor | None:
        """Weight norm, conv, patch norm and scale as one fused autograd node (CUDA + Triton, not
        explanation mode, no MaxOut), or None for the separate ops below."""
        if (isinstance(self.b, Tensor) or self.b == 1 or self.max_out != 1 or self.detach or not self.weight_norm
                or self.bias is not None or not kernels.use_fused(x)):
            return None
        gains = weight_norm_gains(self.weight)
        if gains is None:  # in graphs and for a non-contiguous (channels_last) weight: the separate ops
            return None
        return kernels.bcos_conv2d(x, self.weight, gains, self.b, self.kernel_size, self.stride, self.padding,
                                   self.dilation, self.groups, PATCH_NORM_EPS)

    def forward(self, x: Tensor) -> Tensor:
        if self.input_encoding is not None:
            x = self.input_encoding(x)
            if self.input_norm is not None:
                x = self.input_norm(x)
        check_input(x, layer=type(self).__name__, ndim=4, channels=self.in_channels, channel_dim=1)
        out = self._fused_training_step(x)
        if out is not None:
            return out / self.scale if self.scale is not None else out
        w = unit_norm_rows(self.weight) if self.weight_norm else self.weight
        out = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        out = max_out(out, self.max_out, dim=1)
        if scales_output(self.b):
            norms = self._patch_norms(x)
            if self.groups > 1:
                # each group's norm serves its out_channels // groups outputs
                norms = norms.repeat_interleave(self.out_channels // self.groups, dim=1)
            out = bcos_scale(out, norms, self.b, self.detach)
        if self.scale is not None:
            out = out / self.scale
        return out

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, b={b_repr(self.b)}"
        )
        if self.padding not in ((0, 0), "valid"):
            s += f", padding={self.padding}"
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if not self.weight_norm:
            s += ", weight_norm=False"
        if self.bias is not None:
            s += ", bias=True"
        return s + bcos_repr(self.max_out, self.scale)
