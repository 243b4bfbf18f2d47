"""Normalisation layers that keep a B-cos model dynamic linear.

Uncentered norms divide by a statistic and never subtract a mean; in
explanation mode that statistic is detached, so the norm is a per-input
linear scaling. Centered (detachable) norms subtract the mean, which is
linear in the input, and detach only the standard deviation. A bias is an
input-independent offset that breaks completeness (contributions summing to
the output); use `drop_bias` for models that must keep it.

State-dict keys match the torch modules they subclass (and the `bcos`
package's norms), so weights transfer by name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from torch.autograd.function import once_differentiable

from . import kernels
from .detach import DetachableModule
from .functional import plain_ops_wanted


class _UncenteredBatchNormTrain(torch.autograd.Function):
    """y = x * weight / sqrt(var_batch(x) + eps) per channel, with a hand-written backward.

    Returns (y, var). The backward needs one reduction, sum(g * x), for both the
    weight gradient and the variance term; with `detach` the variance is a constant.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float, detach: bool):
        # per-channel (biased) batch statistics; ~3x faster on CPU than var_mean over (0, 2, 3)
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        if weight is not None and var.dtype != weight.dtype:  # autocast: statistics in the weight's precision
            mean, var = mean.to(weight.dtype), var.to(weight.dtype)
        inv = torch.rsqrt(var + eps)
        scale = inv * weight if weight is not None else inv
        ctx.save_for_backward(x, mean, inv, weight)
        ctx.detach = detach
        ctx.mark_non_differentiable(var)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for var
        return x * scale.to(x.dtype)[:, None, None], var  # keeps x's dtype under autocast

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor | None, _grad_var: Tensor | None):
        if grad is None:  # y did not reach the loss
            return None, None, None, None
        x, mean, inv, weight = ctx.saved_tensors
        stats_dtype = inv.dtype
        g, xs = grad, x
        if g.dtype != stats_dtype or xs.dtype != stats_dtype:  # autocast: reduce in the stats' precision
            g, xs = g.to(stats_dtype), xs.to(stats_dtype)
        if g.is_contiguous() and xs.is_contiguous():
            # per-channel sum(g * x) without a full-size temporary
            gx_sum = torch.linalg.vecdot(g.flatten(2), xs.flatten(2), dim=-1).sum(0)
        else:
            gx_sum = (g * xs).sum((0, 2, 3))
        scale = inv * weight if weight is not None else inv
        grad_x = grad * scale.to(grad.dtype)[:, None, None]
        if not ctx.detach:
            m = x.numel() // x.shape[1]
            coef = -(scale * inv * inv) * gx_sum / m  # d/dx through var: -(w inv^3 / M) sum(g x) (x - mean)
            grad_x.addcmul_(x, coef.to(grad_x.dtype)[:, None, None]).sub_((coef * mean).to(grad_x.dtype)[:, None, None])
        grad_w = gx_sum * inv if weight is not None and ctx.needs_input_grad[1] else None
        return grad_x.to(x.dtype), grad_w, None, None


def _times_inverse_std(x: Tensor, var: Tensor, weight: Tensor | None, eps: float) -> Tensor:
    """x * weight / sqrt(var + eps) per channel, in x's dtype (autocast keeps bf16 activations)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    return x * scale.to(x.dtype)[:, None, None]


def _stats_dtype(x: Tensor, weight: Tensor | None) -> torch.dtype:
    """Batch statistics' dtype: the weight's (autocast keeps it float32), at least float32 without one."""
    return weight.dtype if weight is not None else torch.promote_types(x.dtype, torch.float32)


def _uncentered_batch_norm_plain(x: Tensor, weight: Tensor | None, eps: float):
    """Training mode in plain ops, for compiled graphs and torch.func transforms: inductor fuses them
    itself, and hand-written autograd.Functions have met dynamo bugs with wrong gradients
    (pytorch#184113, torch 2.11) and have no vmap/jvp rules."""
    var = x.to(_stats_dtype(x, weight)).var(dim=(0, 2, 3), unbiased=False)
    return _times_inverse_std(x, var, weight, eps), var.detach()


def _uncentered_batch_norm_detached(x: Tensor, weight: Tensor | None, eps: float):
    """Explanation mode with batch statistics: x times a constant per-channel factor."""
    var = torch.batch_norm_update_stats(x.detach(), None, None, 0.0)[1]
    if weight is not None and var.dtype != weight.dtype:  # autocast: statistics in the weight's precision
        var = var.to(weight.dtype)
    return _times_inverse_std(x, var, weight, eps), var


def _affine_2d(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    if weight is not None:
        x = x * weight[:, None, None]
    if bias is not None:
        x = x + bias[:, None, None]
    return x


def _check_4d(x: Tensor, layer: nn.Module, channels: int) -> None:
    if x.dim() != 4 or x.shape[1] != channels:
        raise ValueError(
            f"{type(layer).__name__} expects a 4D [N, {channels}, H, W] input, "
            f"got shape {tuple(x.shape)}"
        )


class BatchNormUncentered2d(nn.BatchNorm2d, DetachableModule):
    """Batch norm without mean subtraction: x / sqrt(var + eps) * weight (+ bias).

    Training mode divides by the batch variance and updates `running_var`;
    eval mode divides by `running_var`, a constant, so the layer is linear.
    `running_mean` is kept (and tracked) only for state-dict compatibility.
    """

    def __init__(self, *args, **kwargs) -> None:
        DetachableModule.__init__(self)
        nn.BatchNorm2d.__init__(self, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_features)
        use_batch_stats = self.training or self.running_var is None
        if use_batch_stats:
            if x.numel() == 0:
                raise ValueError(f"{type(self).__name__} needs at least one value per channel for batch "
                                 f"statistics (training mode), got shape {tuple(x.shape)}")
            momentum = self._count_batch()
            if self.detach:  # explanation mode: plain autograd ops (twice differentiable, for guidance losses)
                y, var = _uncentered_batch_norm_detached(x, self.weight, self.eps)
            elif kernels.use_fused(x):  # CUDA + Triton: fused statistics and apply (kernels/_batch_norm.py)
                running_var = self.running_var if momentum is not None else None
                y, var = kernels.batch_norm_uncentered(x, self.weight, self.eps, False, running_var, momentum or 0.0)
                momentum = None  # the kernel has moved running_var
            elif plain_ops_wanted():
                y, var = _uncentered_batch_norm_plain(x, self.weight, self.eps)
            else:
                y, var = _UncenteredBatchNormTrain.apply(x, self.weight, self.eps, False)
            self._update_running_var(var, momentum)
        else:
            # running variance and weight folded into one per-channel factor: one pass over x
            scale = torch.rsqrt(self.running_var + self.eps)
            if self.weight is not None:
                scale = scale * self.weight
            y = x * scale[:, None, None]
        return y + self.bias[:, None, None] if self.bias is not None else y

    def _count_batch(self) -> float | None:
        """Counts a training batch; the running statistics' momentum for it, or None when they are not updated."""
        if not (self.training and self.track_running_stats and self.running_var is not None):
            return None
        self.num_batches_tracked.add_(1)
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def _update_running_var(self, var: Tensor, momentum: float | None) -> None:
        if momentum is not None:
            with torch.no_grad():
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), momentum)


class BatchNormActUncentered2d(BatchNormUncentered2d):
    """An uncentered batch norm followed by an activation (what timm's BatchNormAct2d becomes
    when a recipe keeps activations); the state-dict keys are the norm's own plus `act.*`."""

    def __init__(self, num_features: int, act: nn.Module, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(super().forward(x))


class GroupNormUncentered2d(nn.GroupNorm, DetachableModule):
    """Group norm without mean subtraction; the group variance is detached in explanation mode."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        DetachableModule.__init__(self)
        nn.GroupNorm.__init__(self, num_groups, num_channels, eps, affine)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_channels)
        n, c = x.shape[:2]
        grouped = x.reshape(n, self.num_groups, -1)
        var = (grouped.detach() if self.detach else grouped).var(dim=-1, unbiased=False, keepdim=True)
        x = (grouped * torch.rsqrt(var + self.eps)).reshape(x.shape)
        return _affine_2d(x, self.weight, self.bias)


class DetachableGroupNorm2d(nn.GroupNorm, DetachableModule):
    """Centered group norm; in explanation mode the standard deviation is detached."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        DetachableModule.__init__(self)
        nn.GroupNorm.__init__(self, num_groups, num_channels, eps, affine)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.num_channels)
        if not self.detach:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        n = x.shape[0]
        grouped = x.reshape(n, self.num_groups, -1)
        var, mean = torch.var_mean(grouped, dim=-1, unbiased=False, keepdim=True)
        x = ((grouped - mean) * torch.rsqrt(var.detach() + self.eps)).reshape(x.shape)
        return _affine_2d(x, self.weight, self.bias)


class DetachableLayerNorm(nn.LayerNorm, DetachableModule):
    """Centered LayerNorm over the trailing dims (channels-last tokens)."""

    def __init__(self, *args, **kwargs) -> None:
        DetachableModule.__init__(self)
        nn.LayerNorm.__init__(self, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        if tuple(x.shape[-len(self.normalized_shape):]) != tuple(self.normalized_shape):
            raise ValueError(
                f"{type(self).__name__} expects trailing dims {tuple(self.normalized_shape)}, "
                f"got shape {tuple(x.shape)}"
            )
        if not self.detach:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        dims = tuple(range(-len(self.normalized_shape), 0))
        var, mean = torch.var_mean(x, dim=dims, unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var.detach() + self.eps)
        if self.weight is not None:
            x = x * self.weight
        if self.bias is not None:
            x = x + self.bias
        return x


class DetachablePositionNorm2d(nn.LayerNorm, DetachableModule):
    """Centered LayerNorm over the channels of an [N, C, H, W] map (timm's LayerNorm2d)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None) -> None:
        DetachableModule.__init__(self)
        nn.LayerNorm.__init__(self, num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.normalized_shape[0])
        if not self.detach:
            x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
            return x.permute(0, 3, 1, 2)
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        x = (x - mean) * torch.rsqrt(var.detach() + self.eps)
        return _affine_2d(x, self.weight, self.bias)


class PositionNormUncentered2d(nn.LayerNorm, DetachableModule):
    """Uncentered LayerNorm over the channels of an [N, C, H, W] map."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True, device=None, dtype=None) -> None:
        DetachableModule.__init__(self)
        nn.LayerNorm.__init__(self, num_channels, eps=eps, elementwise_affine=affine, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        _check_4d(x, self, self.normalized_shape[0])
        var = (x.detach() if self.detach else x).var(dim=1, unbiased=False, keepdim=True)
        x = x * torch.rsqrt(var + self.eps)
        return _affine_2d(x, self.weight, self.bias)


# timm's name for a channels-first LayerNorm
DetachableLayerNorm2d = DetachablePositionNorm2d


def drop_bias(norm: nn.Module) -> nn.Module:
    """Remove a norm's additive bias in place (keeps the model dynamic linear)."""
    if getattr(norm, "bias", None) is None:
        raise ValueError(f"{type(norm).__name__} has no bias to drop")
    norm.bias = None
    return norm
