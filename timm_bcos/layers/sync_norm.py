"""Synchronised uncentered batch norm: batch statistics over every process of a data-parallel run.

With data parallelism each process sees 1/P of the global batch; a per-process batch norm
then divides by the variance of that slice. The synchronised variant all-reduces the
per-channel sums (count, sum x, sum x^2) so that every process divides by the variance of
the whole global batch, as one process on the global batch would.

torch's own `nn.SyncBatchNorm.convert_sync_batchnorm` must not be used on B-cos models: it
turns every BatchNorm2d subclass, ours included, into a *centered* norm with a bias.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .norms import BatchNormUncentered2d, _check_4d


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _SyncUncenteredBatchNormTrain(torch.autograd.Function):
    """y = x * weight / sqrt(var_global(x) + eps) per channel; returns (y, var_global).

    Backward: the variance depends on every process's x, so the term through it needs the
    global sum(g * x) (one all-reduce); the weight gradient stays local (DDP averages it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float, detach: bool, group):
        stats_dtype = weight.dtype if weight is not None else x.dtype
        xs = x.to(stats_dtype)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=stats_dtype, device=x.device)
        local = torch.cat([count, xs.sum((0, 2, 3)), (xs * xs).sum((0, 2, 3))])
        total = _all_reduce_sum(local, group)
        c = x.shape[1]
        m = total[0]
        mean = total[1:1 + c] / m
        var = (total[1 + c:] / m - mean * mean).clamp_min(0)  # biased, as the per-process layer
        inv = torch.rsqrt(var + eps)
        scale = inv * weight if weight is not None else inv
        ctx.save_for_backward(x, mean, inv, weight, m)
        ctx.detach, ctx.group = detach, group
        ctx.mark_non_differentiable(var)
        return x * scale.to(x.dtype)[:, None, None], var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_var: Tensor):
        x, mean, inv, weight, m = ctx.saved_tensors
        gx_local = (grad.to(inv.dtype) * x.to(inv.dtype)).sum((0, 2, 3))
        scale = inv * weight if weight is not None else inv
        grad_x = grad * scale.to(grad.dtype)[:, None, None]
        if not ctx.detach:
            gx_global = _all_reduce_sum(gx_local.clone(), ctx.group)
            # d var / d x_i = 2 (x_i - mean) / M over the global batch of M values per channel
            coef = -(scale * inv * inv) * gx_global / m
            grad_x = grad_x + (x * coef.to(x.dtype)[:, None, None] - (coef * mean).to(x.dtype)[:, None, None])
        grad_w = gx_local * inv if weight is not None and ctx.needs_input_grad[1] else None
        return grad_x.to(x.dtype), grad_w, None, None, None


class SyncBatchNormUncentered2d(BatchNormUncentered2d):
    """BatchNormUncentered2d whose training statistics span all processes of `process_group`.

    Without an initialised process group (one process, or eval mode) it is the plain layer.
    State-dict keys are those of BatchNormUncentered2d.
    """

    def __init__(self, *args, process_group=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size(self.process_group) > 1):
            return super().forward(x)
        _check_4d(x, self, self.num_features)
        y, var = _SyncUncenteredBatchNormTrain.apply(x, self.weight, self.eps, self.detach, self.process_group)
        if self.track_running_stats and self.running_var is not None:
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_var.lerp_(var.detach().to(self.running_var.dtype), momentum)
        return y + self.bias[:, None, None] if self.bias is not None else y


def convert_sync_batchnorm(model: nn.Module, process_group=None) -> nn.Module:
    """Synchronise every batch norm of `model` across processes, in place; returns `model`.

    Uncentered batch norms become SyncBatchNormUncentered2d (same parameter and buffer
    tensors, same state-dict keys); torch's own batch norms become nn.SyncBatchNorm.
    """
    if type(model) is BatchNormUncentered2d:
        model.__class__ = SyncBatchNormUncentered2d  # adds only the process group
        model.process_group = process_group
        return model
    if type(model) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d):
        return nn.SyncBatchNorm.convert_sync_batchnorm(model, process_group)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, (nn.SyncBatchNorm,
                                                                                    SyncBatchNormUncentered2d)):
        # a subclass with behaviour of its own (a 1d uncentered norm, timm's BatchNormAct2d):
        # converting it as its base class would change what it computes
        raise NotImplementedError(f"cannot synchronise {type(model).__module__}.{type(model).__name__} yet; "
                                  "train without --sync-bn")
    for name, child in model.named_children():
        converted = convert_sync_batchnorm(child, process_group)
        if converted is not child:
            setattr(model, name, converted)
    return model
