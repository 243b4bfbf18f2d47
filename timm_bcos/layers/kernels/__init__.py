"""Optional fused GPU kernels (Triton) for the B-cos hot spots.

The layers call `use_fused(x)` and, where it says yes, the functions below
instead of their PyTorch code; that code stays the CPU path and the oracle.
Eager autograd goes through plain `torch.autograd.Function`s (their dispatch
costs far less than `torch.library` custom ops', and eager steps on an H100
were bound by host time); compiled graphs get the same kernels as custom ops
with fake (meta) kernels, opaque to inductor. (Compiling the PyTorch code
instead was 2.3x faster on an H100, but it then gave a wrong input gradient
with torch 2.11; benchmarks/RESULTS.md.)

Fused only for CUDA tensors (or any tensor under Triton's interpreter,
TRITON_INTERPRET=1, which is how the tests run them on a CPU), only when
`triton` is importable, and not when TIMM_BCOS_KERNELS=0. Nothing here
imports triton until a fused path is taken.
"""
from __future__ import annotations

import importlib.util
import os

import torch
from torch import Tensor


def _triton_present() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # ValueError: sys.modules["triton"] is None (blocked)
        return False


# Read once at import: a module constant keeps the dispatch free for
# torch.compile (a guard on a global) and cheap in eager mode.
ENABLED = os.environ.get("TIMM_BCOS_KERNELS", "1") != "0" and _triton_present()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_fused(x: Tensor) -> bool:
    """Whether the fused kernels handle `x`: CUDA (or the interpreter), contiguous NCHW/rows, a plain
    tensor (not a subclass such as DTensor) and no torch.func transform (the Functions have no vmap/jvp rules)."""
    return (ENABLED and (x.is_cuda or INTERPRET) and x.is_contiguous() and type(x) is Tensor
            and (torch.compiler.is_compiling() or not torch._C._are_functorch_transforms_active()))


def _load():
    from . import _ops as ops  # imports triton and registers the ops on first use

    return ops


def patch_norm(x: Tensor, groups: int, kernel_size, stride, padding, dilation, eps: float) -> Tensor:
    """sqrt(window sum of the channel sum of squares + eps): [N, groups, H_out, W_out]."""
    return _load().patch_norm(x, groups, kernel_size, stride, padding, dilation, eps)


def bcos_conv2d(x: Tensor, weight: Tensor, gains: Tensor, b: float, kernel_size, stride, padding, dilation,
                groups: int, eps: float) -> Tensor | None:
    """A B-cos conv's training step (weight norm through torch's kernel with unit `gains`, conv, patch
    norm, Eq. 9 scale) as one autograd node, or None where the separate ops must run (inside graphs;
    an asymmetric 'same' padding; an empty batch)."""
    return _load().bcos_conv2d(x, weight, gains, b, kernel_size, stride, padding, dilation, groups, eps)


def bcos_scale(lin: Tensor, norm: Tensor, b: float, detach: bool) -> Tensor | None:
    """Eq. 9 fused, or None when the shapes are not the conv or linear layout."""
    return _load().bcos_scale(lin, norm, b, detach)


def batch_norm_uncentered(x: Tensor, weight: Tensor | None, eps: float, detach: bool,
                          running_var: Tensor | None = None, momentum: float = 0.0):
    """(x * weight / sqrt(var_batch + eps), var_batch) for an [N, C, H, W] input; `running_var`,
    if given, is lerped towards var_batch by `momentum` in place."""
    return _load().batch_norm_uncentered(x, weight, eps, detach, running_var, momentum)
