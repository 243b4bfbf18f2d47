import os
import re
import shutil
from pathlib import Path

import torch


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| (norm-wise relative error)."""
    actual, expected = actual.detach().double(), expected.detach().double()
    denom = expected.norm().clamp_min(1e-300)
    return ((actual - expected).norm() / denom).item()


def input_grad(module, x: torch.Tensor, out_weights: torch.Tensor | None = None, seed: int = 0):
    """Output and the gradient of sum(out_weights * module(x)) w.r.t. x."""
    x = x.detach().clone().requires_grad_(True)
    y = module(x)
    if out_weights is None:
        g = torch.Generator().manual_seed(seed)
        out_weights = torch.randn(y.shape, generator=g, dtype=y.dtype)
    (grad,) = torch.autograd.grad((y * out_weights).sum(), x)
    return y.detach(), grad


def assert_dynamic_linear(module, x: torch.Tensor, n_units: int = 5, seed: int = 0, tol: float = 1e-5):
    """In explanation mode, sum(grad_x(y_j) * x) == y_j for randomly chosen units j."""
    from timm_bcos.layers import explanation_mode

    g = torch.Generator().manual_seed(seed)
    x = x.detach().clone().requires_grad_(True)
    with explanation_mode(module):
        y = module(x)
        flat = y.reshape(-1)
        # pick units with non-negligible magnitude so the relative check is meaningful
        candidates = torch.nonzero(flat.abs() > flat.abs().max() * 1e-3).reshape(-1)
        picks = candidates[torch.randperm(len(candidates), generator=g)[:n_units]]
        for j in picks.tolist():
            (grad,) = torch.autograd.grad(flat[j], x, retain_graph=True)
            reconstructed = (grad * x).sum()
            err = abs(reconstructed.item() - flat[j].item()) / abs(flat[j].item())
            assert err <= tol, f"unit {j}: sum(grad*x)={reconstructed.item()} vs y={flat[j].item()} (rel {err:.2e})"
    return len(picks)


def calibrate_bn(model, x: torch.Tensor, passes: int = 2):
    """Running statistics set to the batch statistics of `x` (cumulative average), then eval.

    With random weights every B-cos layer shrinks its output; eval-mode batch
    norms with their initial running variance would let the signal underflow.
    """
    with torch.no_grad():  # random affine parameters, so a bias left in a norm would show
        for m in model.modules():
            if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.normal_(0.0, 0.5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(passes):
            model(x)
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    return model.eval()


def model_contributions(model, x: torch.Tensor, classes: torch.Tensor):
    """Explanation-mode contributions of `classes` (one per image) and the pre-logit-layer outputs.

    Returns (sum of contributions per image, classifier output before the logit
    layer, logits). Contributions are w.r.t. the encoded 6-channel input (Eq. 15).
    """
    from timm_bcos.layers import explanation_mode

    captured = {}
    enc = model.input_encoding()
    h1 = enc.register_forward_hook(lambda m, i, o: captured.__setitem__("enc", o.requires_grad_(True) if not o.requires_grad else o) or o.retain_grad())
    h2 = model.logit_layer.register_forward_hook(lambda m, i, o: captured.__setitem__("pre", i[0]))
    try:
        with torch.enable_grad(), explanation_mode(model):
            logits = model(x)
            picked = logits.gather(1, classes[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, captured["enc"])
    finally:
        h1.remove()
        h2.remove()
    contrib = (grad * captured["enc"]).flatten(1).sum(1)
    pre = captured["pre"].gather(1, classes[:, None])[:, 0] / model.logit_layer.logit_temperature
    return contrib.detach(), pre.detach(), logits.detach()


def shallow(name: str) -> dict:
    """create_model kwargs that keep a registered model's wiring at a fraction of the cost: the ViTs
    built for 112 px (49 tokens, not 196: the same blocks), the B and L ViTs with 2 blocks (each block
    is the S/Ti block at another width), VGG with a 256-wide hidden layer in its 7x7 head (4096: 100M
    weights). The full-size ViTs still run forward in test_features_only; the full VGG in timm's own
    suite and the VGG parity test. ResNet-101/152 and ConvNeXt-B at the depth of ResNet-50 and ConvNeXt-T (the same
    blocks, fewer repeats); their full depth runs in test_features_only and timm's suite."""
    if "vit" in name:
        return dict(img_size=VIT_SIZE, **(dict(depth=2) if re.search(r"vit\w*_[bl]_patch", name) else {}))
    if re.fullmatch(r"bcos_resnet(101|152)", name):
        return dict(layers=(3, 4, 6, 3))
    if re.fullmatch(r"bcos_convnext_base(_bnu)?", name):
        return dict(depths=(3, 3, 9, 3))
    return dict(mlp_ratio=1 / 16) if "vgg" in name else {}


VIT_SIZE = 112


def image_size(name: str) -> int:
    """A small input each registered model, built with `shallow(name)`, accepts."""
    return VIT_SIZE if "vit" in name else 75 if "inception" in name else 32 if "cifar" in name else 64


def without_position_embedding(model):
    """ViTs add a fixed position embedding whatever the input (an input-independent term, like a
    bias); completeness is exact without it, which is what these tests check."""
    if getattr(model, "pos_embed", None) is not None:
        with torch.no_grad():
            model.pos_embed.zero_()
    return model


def reference_model(name: str):
    """`bcos.models.pretrained.<name>` with random weights (the reference's own warning silenced)."""
    import warnings

    import pytest

    pretrained = pytest.importorskip("bcos.models.pretrained")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(pretrained, name)(pretrained=False)


def write_parquet_shards(root, cifar, *, train: int, test: int, shards: int, row_group: int):
    """The first `train` / `test` CIFAR-10 rows (stored PNG bytes, ClassLabel kept) as `shards` /
    one parquet shard(s) in the Hub layout, with row groups of `row_group` rows."""
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, rows, parts in (("train", train, shards), ("test", test, 1)):
        table = pq.read_table(cifar / "data" / f"{name}-00000-of-00001.parquet").slice(0, rows)
        per = -(-rows // parts)
        for i in range(parts):
            pq.write_table(table.slice(i * per, per), root / "data" / f"{name}-{i:05d}-of-{parts:05d}.parquet",
                           row_group_size=row_group)
    return root


def write_tar_shards(root, cifar, *, train: int, test: int, shards: int, info: bool = False, labels: bool = True):
    """The first `train` / `test` CIFAR-10 rows (stored JPEG bytes) as webdataset tar shards
    `<split>-000i.tar`, members `<split>/<row>.jpg` and `.cls` (none without `labels`); timm's
    `_info.json` when `info`."""
    import io
    import json
    import tarfile

    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    splits = {}
    for name, rows, parts in (("train", train, shards), ("test", test, 1)):
        table = pq.read_table(cifar / "data" / f"{name}-00000-of-00001.parquet").slice(0, rows).to_pylist()
        per, files, lengths = -(-rows // parts), [], []
        for i in range(parts):
            chunk, files = table[i * per:(i + 1) * per], files + [f"{name}-{i:04d}.tar"]
            with tarfile.open(root / files[-1], "w") as tar:
                for j, row in enumerate(chunk):
                    members = (("jpg", row["image"]["bytes"]), ("cls", str(row["label"]).encode()))
                    for ext, data in members[:2 if labels else 1]:
                        member = tarfile.TarInfo(f"{name}/{i * per + j:06d}.{ext}")
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
            lengths.append(len(chunk))
        splits[name] = {"name": name, "num_samples": rows, "filenames": files, "shard_lengths": lengths}
    if info:
        (root / "_info.json").write_text(json.dumps({"name": "cifar10", "splits": splits}))
    return root


# conventional module types that must not survive a conversion
CONVENTIONAL = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ReLU, torch.nn.GELU, torch.nn.SiLU, torch.nn.Hardswish,
                torch.nn.MaxPool2d, torch.nn.Sigmoid)


def leftovers(model) -> list[str]:
    """'path: type' of every conventional module a conversion left in `model`."""
    from timm_bcos import layers as L

    fixed = tuple(f"{path}." for path in getattr(getattr(model, "bcos", None), "fixed_terms", ()))
    out = []
    for name, m in model.named_modules():
        if name.startswith(fixed):
            continue  # inside an input-independent term (a position encoding): accounted as a fixed share
        if isinstance(m, L.BcosAttention):
            continue  # its qkv is a plain linear by design (q, k only shape the detached attention)
        if name.endswith(".qkv") and isinstance(m, torch.nn.Linear):
            continue
        if type(m) in CONVENTIONAL or (isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, L.BatchNormUncentered2d)):
            out.append(f"{name}: {type(m).__name__}")
    return out


def computed_once(tmp_path_factory, name: str, compute) -> Path:
    """The folder that `compute(folder)` filled, computed once per test run however many pytest-xdist
    workers ask (pytest-xdist's recipe): the first computes under a file lock, the others wait and read."""
    from filelock import FileLock

    if os.environ.get("PYTEST_XDIST_WORKER") is None:  # one process: its own folder
        folder = tmp_path_factory.mktemp(name)
        compute(folder)
        return folder
    root = tmp_path_factory.getbasetemp().parent  # shared by this run's workers, and only by them
    folder, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            compute(folder)
            done.touch()
    return folder
