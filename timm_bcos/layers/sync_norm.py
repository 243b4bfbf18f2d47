"""Synchronised uncentered batch norm: batch statistics over every process of a data-parallel run.

With data parallelism each process sees 1/P of the global batch; a per-process batch norm
then divides by the variance of that slice. The synchronised variant gives every process the
variance of the whole global batch, as one process on the global batch would compute it:
each process reduces its own slice to (count, mean, M2) with a stable one-pass reduction, one
all_gather shares them, and Chan et al.'s parallel merge combines them. (All-reducing
(count, sum x, sum x^2) and taking E[x^2] - mean^2 instead cancels catastrophically when
|mean| >> std: in float32 a mean of 1e4 leaves no digit of a unit variance.)

torch's own `nn.SyncBatchNorm.convert_sync_batchnorm` must not be used on B-cos models: it
turns every BatchNorm2d subclass, ours included, into a *centered* norm with a bias.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .norms import BatchNormUncentered2d, _check_4d, _stats_dtype, _times_inverse_std


def _local_moments(x: Tensor, stats_dtype: torch.dtype) -> Tensor:
    """[count, mean (C), M2 (C)] of this process's slice per channel, in float64 for the merge."""
    c = x.shape[1]
    count = x.numel() // c
    if count == 0:  # an empty slice adds nothing (and batch_norm_update_stats refuses it)
        return x.new_zeros(1 + 2 * c, dtype=torch.float64)
    # Welford-style per-channel reduction: stable for any offset
    mean, var = torch.batch_norm_update_stats(x.to(stats_dtype), None, None, 0.0)
    n = torch.full((1,), float(count), dtype=torch.float64, device=x.device)
    return torch.cat([n, mean.double(), var.double() * count])


def _global_mean_var(x: Tensor, stats_dtype: torch.dtype, group) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean, biased variance and value count of the global batch (no autograd).

    Processes may hold slices of different sizes (the last batch), so the merge weighs each
    by its count: M2 = sum_p M2_p + sum_p n_p (mean_p - mean)^2 (Chan, Golub & LeVeque).
    """
    local = _local_moments(x, stats_dtype)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, local, group=group)
    c = x.shape[1]
    counts, means, m2s = torch.stack(parts).split([1, c, c], dim=1)
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mean).square()).sum(0)
    return mean.to(stats_dtype), (m2 / total).to(stats_dtype), total.to(stats_dtype)


def _all_reduce_sum(t: Tensor, group) -> Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


class _SyncUncenteredBatchNormTrain(torch.autograd.Function):
    """y = x * weight / sqrt(var_global(x) + eps) per channel; returns (y, var_global).

    Backward: the variance depends on every process's x, so the term through it needs the
    global sum(g * x) (one all-reduce) and the global mean; the weight gradient stays local
    (DDP averages it).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, eps: float, group):
        mean, var, m = _global_mean_var(x, _stats_dtype(x, weight), group)
        inv = torch.rsqrt(var + eps)
        scale = inv * weight if weight is not None else inv
        ctx.save_for_backward(x, mean, inv, weight, m)
        ctx.group = group
        ctx.mark_non_differentiable(var)
        return x * scale.to(x.dtype)[:, None, None], var

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor, _grad_var: Tensor):
        x, mean, inv, weight, m = ctx.saved_tensors
        g, xs = grad.to(inv.dtype), x.to(inv.dtype)  # autocast: reduce in the statistics' precision
        gx_local = (g * xs).sum((0, 2, 3))
        gx_global = _all_reduce_sum(gx_local.clone(), ctx.group)
        scale = inv * weight if weight is not None else inv
        # d var / d x_i = 2 (x_i - mean) / M over the global batch of M values per channel;
        # x - mean before the product: x * coef - mean * coef would cancel when |mean| >> std
        coef = -(scale * inv * inv) * gx_global / m
        grad_x = (xs - mean[:, None, None]).mul_(coef[:, None, None]).addcmul_(g, scale[:, None, None])
        grad_w = gx_local * inv if weight is not None and ctx.needs_input_grad[1] else None
        return grad_x.to(x.dtype), grad_w, None, None


def _sync_batch_norm_detached(x: Tensor, weight: Tensor | None, eps: float, group) -> tuple[Tensor, Tensor]:
    """Explanation mode: x times a constant factor from the global variance, in plain autograd
    ops (twice differentiable, as the per-process layer's, for guidance losses)."""
    with torch.no_grad():
        var = _global_mean_var(x, _stats_dtype(x, weight), group)[1]
    return _times_inverse_std(x, var, weight, eps), var


@torch.compiler.disable
def _sync_batch_norm_train(x: Tensor, weight: Tensor | None, eps: float, detach: bool, group):
    """(y, global variance), always eager: under torch.compile a graph break, so the
    collectives and the hand-written backward run outside any graph. Dynamo (torch 2.14) does
    trace the Function, collectives included, but hand-written Functions in graphs have been
    mis-differentiated (pytorch#184113, torch 2.11), and a graph break is robust."""
    if detach:
        return _sync_batch_norm_detached(x, weight, eps, group)
    return _SyncUncenteredBatchNormTrain.apply(x, weight, eps, group)


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
        y, var = _sync_batch_norm_train(x, self.weight, self.eps, self.detach, self.process_group)
        self._update_running_var(var, self._count_batch())
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
