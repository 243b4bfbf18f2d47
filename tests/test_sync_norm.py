"""Synchronised uncentered batch norm: 2 CPU processes (gloo) against one process on the
whole global batch, in float64 (forward, running variance, input and weight gradients)."""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import rel_err
from timm_bcos import layers as L


def _global_batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64) + 0.7
    r = torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64)  # loss = sum(y * r)
    return x, r


def _layer(sync: bool, detach: bool) -> nn.Module:
    torch.manual_seed(1)
    layer = L.BatchNormUncentered2d(5, momentum=0.3).double()
    nn.init.uniform_(layer.weight, 0.5, 1.5)
    layer.set_explanation_mode(detach)
    return L.convert_sync_batchnorm(layer) if sync else layer


def _run(layer, x, r):
    x = x.clone().requires_grad_(True)
    y = layer.train()(x)
    (y * r).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": layer.weight.grad.clone(),
            "running_var": layer.running_var.clone()}


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x, r = _global_batch()
        part = slice(rank * 8 // world, (rank + 1) * 8 // world)
        for detach in (False, True):
            out = _run(_layer(sync=True, detach=detach), x[part], r[part])
            dist.all_reduce(out["w_grad"])  # the sum of the local weight gradients (DDP averages them)
            torch.save(out, f"{out_file}.{detach}.{rank}")
    finally:
        dist.destroy_process_group()


def _two_processes(tmp_path) -> dict:
    out_file = str(tmp_path / "out")
    mp.start_processes(_worker, args=(2, str(tmp_path / "init"), out_file), nprocs=2, start_method="spawn")
    results = {}
    for detach in (False, True):
        parts = [torch.load(f"{out_file}.{detach}.{rank}", weights_only=True) for rank in range(2)]
        results[detach] = {"y": torch.cat([p["y"] for p in parts]),
                           "x_grad": torch.cat([p["x_grad"] for p in parts]),
                           "w_grad": parts[0]["w_grad"], "running_var": parts[0]["running_var"],
                           "running_var_1": parts[1]["running_var"]}
    return results


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    results = _two_processes(tmp_path)
    for detach in (False, True):
        x, r = _global_batch()
        one = _run(_layer(sync=False, detach=detach), x, r)
        two = results[detach]
        for key in ("y", "x_grad", "w_grad", "running_var"):
            assert rel_err(two[key], one[key]) <= 1e-12, (detach, key, rel_err(two[key], one[key]))
        assert torch.equal(two["running_var"], two["running_var_1"])  # every process holds the same
    # the per-process layer on half the batch is visibly different: the test can tell
    half = _run(_layer(sync=False, detach=False), x[:4], r[:4])
    assert rel_err(half["running_var"], one["running_var"]) > 1e-3


def test_one_process_is_the_plain_layer_and_convert_keeps_tensors():
    x, r = _global_batch()
    plain, synced = _layer(sync=False, detach=False), _layer(sync=True, detach=False)
    assert isinstance(synced, L.SyncBatchNormUncentered2d)
    assert synced.state_dict().keys() == plain.state_dict().keys()
    a, b = _run(plain, x, r), _run(synced, x, r)
    assert all(torch.equal(a[k], b[k]) for k in a)

    model = nn.Sequential(L.BatchNormUncentered2d(3), nn.Sequential(nn.BatchNorm2d(3), nn.Identity()))
    weight = model[0].weight
    model = L.convert_sync_batchnorm(model)
    assert type(model[0]) is L.SyncBatchNormUncentered2d and model[0].weight is weight
    # torch's batch norms go to torch's SyncBatchNorm (centered), ours never do
    assert type(model[1][0]) is nn.SyncBatchNorm
    # a subclass with behaviour of its own is refused, not silently left per-process
    class OwnNorm(L.BatchNormUncentered2d):
        pass

    import pytest

    with pytest.raises(NotImplementedError, match="cannot synchronise"):
        L.convert_sync_batchnorm(nn.Sequential(OwnNorm(3)))

