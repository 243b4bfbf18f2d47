"""Synchronised uncentered batch norm: 2 CPU processes (gloo) against one process on the
whole global batch (forward, running variance, input and weight gradients), with even, uneven
and empty slices, a large offset in float32, and under torch.compile.

The two processes run once per module (spawning them costs seconds); each test checks one part
of what they saved."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from helpers import computed_once, rel_err
from timm_bcos import layers as L

SPLITS = {"even": 4, "uneven": 3, "empty": 0}  # rows of the global batch (8) on process 0
OFFSET = 1e4  # |mean| >> std: E[x^2] - mean^2 in float32 keeps no digit of the variance


def _global_batch(offset: float = 0.7):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64) + offset
    r = torch.randn(8, 5, 4, 4, generator=g, dtype=torch.float64)  # loss = sum(y * r)
    return x, r


def _layer(sync: bool, detach: bool, dtype=torch.float64, momentum=0.3) -> nn.Module:
    torch.manual_seed(1)
    layer = L.BatchNormUncentered2d(5, momentum=momentum).double()
    nn.init.uniform_(layer.weight, 0.5, 1.5)
    layer.to(dtype)
    layer.set_explanation_mode(detach)
    return L.convert_sync_batchnorm(layer) if sync else layer


def _run(layer, x, r):
    x = x.clone().requires_grad_(True)
    y = layer.train()(x)
    (y * r).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "w_grad": layer.weight.grad.clone(),
            "running_var": layer.running_var.clone()}


def _synced_run(layer, x, r, rows: slice) -> dict:
    out = _run(layer, x[rows], r[rows])
    dist.all_reduce(out["w_grad"])  # the sum of the local weight gradients (DDP averages them)
    return out


class _ConvSyncNet(nn.Module):
    """conv -> sync BN -> relu -> conv -> sync BN (no affine). Not an nn.Sequential: dynamo runs a
    Sequential whose loop holds a graph break eagerly, and the test would compile nothing."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv1, self.bn1 = nn.Conv2d(3, 5, 3, padding=1), L.BatchNormUncentered2d(5, momentum=0.3)
        self.conv2, self.bn2 = nn.Conv2d(5, 4, 1), L.BatchNormUncentered2d(4, affine=False)

    def forward(self, x):
        return self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))


def _compiled_against_eager(rows: slice) -> dict:
    """One training step of a small conv + sync-BN net, eager and torch.compile'd (aot_eager)."""
    from torch._dynamo import lookup_backend

    g = torch.Generator().manual_seed(3)
    x = torch.rand(8, 3, 6, 6, generator=g, dtype=torch.float64)[rows]
    r = torch.randn(8, 4, 6, 6, generator=g, dtype=torch.float64)[rows]
    graphs = []

    def recording_aot_eager(gm, example_inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return lookup_backend("aot_eager")(gm, example_inputs)

    eager = L.convert_sync_batchnorm(_ConvSyncNet().double()).train()
    compiled_net = copy.deepcopy(eager)
    out = {"graphs": graphs}
    for name, net, fn in (("eager", eager, eager), ("compiled", compiled_net,
                                                    torch.compile(compiled_net, backend=recording_aot_eager))):
        xg = x.clone().requires_grad_(True)
        y = fn(xg)
        (y * r).sum().backward()
        out[name] = {"y": y.detach(), "x_grad": xg.grad, "running_var": net.bn2.running_var.clone(),
                     **{f"grad_{k}": p.grad.clone() for k, p in net.named_parameters()}}
    return out


def _worker(rank: int, world: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        out = {}
        x, r = _global_batch()
        for split, k in SPLITS.items():
            rows = slice(0, k) if rank == 0 else slice(k, 8)
            for detach in (False, True):
                out[split, detach] = _synced_run(_layer(sync=True, detach=detach), x, r, rows)
        xo, ro = _global_batch(OFFSET)
        # momentum None: the first batch's running variance is its batch variance
        out["offset"] = _synced_run(_layer(True, False, torch.float32, None), xo.float(), ro.float(),
                                    slice(0, 3) if rank == 0 else slice(3, 8))
        out["compile"] = _compiled_against_eager(slice(0, 3) if rank == 0 else slice(3, 8))
        torch.save(out, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict]:
    def spawn(tmp):
        mp.start_processes(_worker, args=(2, str(tmp / "init"), str(tmp / "out")), nprocs=2, start_method="spawn")

    tmp = computed_once(tmp_path_factory, "sync_norm_two_processes", spawn)  # once, not once per xdist worker
    return [torch.load(tmp / f"out.{rank}", weights_only=False) for rank in range(2)]


def _joined(parts: list[dict]) -> dict:
    """The processes' outputs as one process on the global batch would return them."""
    return {"y": torch.cat([p["y"] for p in parts]), "x_grad": torch.cat([p["x_grad"] for p in parts]),
            "w_grad": parts[0]["w_grad"], "running_var": parts[0]["running_var"]}


@pytest.mark.parametrize("split", SPLITS)
def test_two_processes_equal_one_process_on_the_global_batch(two_processes, split):
    x, r = _global_batch()
    for detach in (False, True):
        one = _run(_layer(sync=False, detach=detach), x, r)
        two = _joined([p[split, detach] for p in two_processes])
        for key in ("y", "x_grad", "w_grad", "running_var"):
            assert rel_err(two[key], one[key]) <= 1e-12, (detach, key, rel_err(two[key], one[key]))
        # every process holds the same running variance
        assert torch.equal(two_processes[0][split, detach]["running_var"], two_processes[1][split, detach]["running_var"])
    # the per-process layer on half the batch is visibly different: the test can tell
    half = _run(_layer(sync=False, detach=False), x[:4], r[:4])
    assert rel_err(half["running_var"], one["running_var"]) > 1e-3


def test_large_offset_in_float32_gives_the_global_variance(two_processes):
    """mean 1e4, std 1: the float32 statistics equal float64 ones of the same values (rel 1e-3;
    measured 4e-5 for the variance, where E[x^2] - mean^2 is off by 7x)."""
    x, r = _global_batch(OFFSET)
    x = x.float().double()  # the values the processes saw
    exact = _run(_layer(False, False, torch.float32, None).double(), x, r)  # float64, one process
    assert rel_err(exact["running_var"], x.var((0, 2, 3), unbiased=False)) <= 1e-12
    two = _joined([p["offset"] for p in two_processes])
    # x_grad's variance term holds x - mean, and a float32 mean near 1e4 is known to ulp/2 ~ 5e-4
    # of the unit std (rounded once per process, once after the merge): a looser margin there
    for key, tol in (("running_var", 1e-3), ("y", 1e-3), ("w_grad", 1e-3), ("x_grad", 5e-3)):
        assert rel_err(two[key], exact[key]) <= tol, (key, rel_err(two[key], exact[key]))


def test_compiled_sync_net_equals_eager(two_processes):
    """torch.compile (aot_eager: dynamo and AOT autograd, where Functions were mis-differentiated;
    inductor's C++ build on CPU would cost the suite much longer) against eager, on 2 processes
    with slices of 3 and 5: outputs, input and every parameter gradient, running variance."""
    for rank, part in enumerate(two_processes):
        eager, compiled = part["compile"]["eager"], part["compile"]["compiled"]
        assert eager.keys() == compiled.keys() and len(eager) == 9, sorted(eager)
        for key in eager:
            assert rel_err(compiled[key], eager[key]) <= 1e-9, (rank, key, rel_err(compiled[key], eager[key]))
        graphs = part["compile"]["graphs"]
        # the synchronised statistics run eagerly: no Function and no collective inside a graph,
        # while the convolutions and the rest of the layer are compiled
        ops = [t for graph in graphs for t in graph]
        assert not any("autograd_function_apply" in t or "c10d" in t for t in ops), sorted(set(ops))
        assert sum("conv2d" in t for t in ops) == 2 and any("relu" in t for t in ops), graphs


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

    with pytest.raises(NotImplementedError, match="cannot synchronise"):
        L.convert_sync_batchnorm(nn.Sequential(OwnNorm(3)))
