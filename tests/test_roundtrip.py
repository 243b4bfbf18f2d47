"""Save -> reload: registered and converted B-cos models through both savers (timm_bcos.hub.save_pretrained,
timm's save_for_hf) and both loaders (local-dir:, hf-hub: from a pre-filled cache, offline), and
train.py --bcosify-from end to end (convert, train, export, reload, explain)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import timm
import torch
from timm.models import save_for_hf
from timm.models._hub import save_config_for_hf

import timm_bcos
from timm_bcos.hub import save_pretrained

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
COMMIT = "0123456789abcdef0123456789abcdef01234567"

# the smallest member of each registered family (the larger ones share their code; every
# registered model's config is round-tripped in test_every_registered_config_rebuilds)
SMALL_REGISTERED = {
    "bcos_resnet18": 64, "bcos_resnet34_v1": 64, "bcos_densenet121": 64, "bcos_convnext_tiny_bnu": 64,
    "bcos_inception_v3_v1": 75, "bcos_simple_vit_ti_patch16_224": 224, "bcos_vitc_ti_patch1_14": 224,
    "bcos_cifar10": 32, "bcos_cifar10_w050_bnu": 32,
}
# conventional timm models of five families (plus our CIFAR network), converted with a recipe
CONVERTED = {
    "test_resnet": dict(recipe="v2"), "test_efficientnet": dict(recipe="v2", b=2.5),
    "test_convnext": dict(recipe="v2_bnu"), "test_vit": dict(recipe="v2"),
    "mobilenetv3_small_050": dict(recipe="v1"), "cifar_convnet": dict(recipe="bcosify", width=0.125),
    "test_efficientnet_gn": dict(recipe="bcosify", learn_b=True),  # the learned B values come back
}


def _hub_cache(folder: Path, cache: Path, repo: str) -> None:
    """The layout hf_hub_download leaves behind: snapshots/<commit>/ and refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / COMMIT)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(COMMIT)


def _save(model, folder: Path, saver: str) -> None:
    if saver == "ours":
        save_pretrained(model, folder)
    else:
        save_for_hf(model, str(folder), safe_serialization=True)


def _load(folder: Path, loader: str, tmp_path: Path, monkeypatch):
    if loader == "local-dir":
        return timm.create_model(f"local-dir:{folder}", pretrained=True)
    cache = tmp_path / "hf_cache"
    _hub_cache(folder, cache, "timm-bcos-test/model")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: the cache only
    return timm.create_model("hf-hub:timm-bcos-test/model", pretrained=True, cache_dir=str(cache))


def _round_trips(model, size: int, tmp_path: Path, monkeypatch, check_saved=None) -> None:
    """`model` through both savers and both loaders: each loaded model has its weights and gives its float64
    explanations (contributions and the explained value, logit minus bias), identically. `check_saved(folder)`
    looks at each saver's folder. The original's explanation is computed once for the four."""
    loaded = {}
    for saver in ("ours", "timm"):
        folder = tmp_path / saver
        _save(model, folder, saver)
        if check_saved is not None:
            check_saved(folder)
        for loader in ("local-dir", "hf-hub"):
            loaded[saver, loader] = _load(folder, loader, tmp_path / f"{saver}_{loader}", monkeypatch)
    ours = model.state_dict()
    for how, other in loaded.items():
        assert type(other) is type(model), how
        theirs = other.state_dict()
        assert ours.keys() == theirs.keys(), how
        for k, v in ours.items():
            assert theirs[k].dtype == v.dtype and torch.equal(theirs[k], v), (how, k)
        assert tuple(other.pretrained_cfg["mean"]) == (0.0,) * 3 and tuple(other.pretrained_cfg["std"]) == (1.0,) * 3
    x = torch.rand(2, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = model.double().eval().explain(x, target=[1, 2])
    assert a.contributions.abs().sum() > 0
    for how, other in loaded.items():
        b = other.double().eval().explain(x, target=[1, 2])
        assert torch.equal(a.contributions, b.contributions) and torch.equal(a.explained, b.explained), how


def _perturbed(model):
    """Non-default weights and statistics, so that a reload with fresh init could not match."""
    torch.manual_seed(1)
    with torch.no_grad():
        for t in [*model.parameters(), *(b for n, b in model.named_buffers() if n.endswith("running_var"))]:
            t.mul_(1 + 0.1 * torch.rand_like(t))
    return model.eval()


# one block per stage (the saved config carries the argument; the blocks' code is the same at any depth)
FEWER_BLOCKS = {"bcos_resnet34_v1": dict(layers=(1, 1, 1, 1)), "bcos_convnext_tiny_bnu": dict(depths=(1, 1, 1, 1))}


@pytest.mark.parametrize("name", list(SMALL_REGISTERED))
def test_registered_round_trip(name, tmp_path, monkeypatch):
    model = _perturbed(timm.create_model(name, num_classes=5, **FEWER_BLOCKS.get(name, {})))
    _round_trips(model, SMALL_REGISTERED[name], tmp_path, monkeypatch)


@pytest.mark.parametrize("base", list(CONVERTED))
def test_converted_round_trip(base, tmp_path, monkeypatch):
    kwargs = dict(CONVERTED[base])
    recipe = kwargs.pop("recipe")
    width = {"width": kwargs.pop("width")} if "width" in kwargs else {}
    model = _perturbed(timm_bcos.convert(timm.create_model(base, num_classes=3, **width), recipe, **kwargs))

    def check_saved(folder):
        config = json.loads((folder / "config.json").read_text())
        assert config["architecture"] == "bcos_converted"
        assert {"base_model": base, "recipe": recipe, **kwargs}.items() <= config["model_args"].items()

    size = timm.get_pretrained_cfg_value(base, "input_size")[-1]  # test_vit resamples its embedding at other sizes
    _round_trips(model, size, tmp_path, monkeypatch, check_saved)


@pytest.mark.parametrize("name", timm.list_models("bcos_*"))
def test_every_registered_config_rebuilds(name, tmp_path):
    """Every registered model's saved config (timm's save_for_hf) rebuilds the same architecture
    (on the meta device: shapes and arguments, no weights)."""
    model = timm.create_model(name, num_classes=7, device="meta")
    (tmp_path / "m").mkdir()
    save_config_for_hf(model, tmp_path / "m" / "config.json")
    rebuilt = timm.create_model(f"local-dir:{tmp_path / 'm'}", pretrained=False, device="meta")
    assert type(rebuilt) is type(model)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_fresh_process_needs_the_import(tmp_path):
    """What a process that never imported timm_bcos sees, and the config's marker that says what to do."""
    model = timm.create_model("bcos_cifar10", width=0.125)
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "import timm_bcos" in config["timm_bcos"]["usage"]
    # one fresh interpreter: the load before `import timm_bcos` is refused, the same load after it works
    load = f"timm.create_model(r'local-dir:{tmp_path / 'm'}', pretrained=True)"
    script = (f"import timm\ntry:\n    {load}\n    print('loaded without the import')\n"
              f"except RuntimeError as e:\n    print('refused:', e)\nimport timm_bcos\n{load}\nprint('loaded')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: Unknown model (bcos_cifar10)" in proc.stdout and proc.stdout.endswith("loaded\n"), proc.stdout


@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not here")
def test_train_bcosify_from_end_to_end(tmp_path):
    """train.py --bcosify-from: convert a conventional model (with the paper's learned B), train a few
    steps, export, reload, explain."""
    conventional = timm.create_model("cifar_convnet", width=0.125)
    save_for_hf(conventional, str(tmp_path / "conv"), safe_serialization=True)
    out = tmp_path / "run"
    from test_train import run_train  # train.py's main in this process (one process, no loader workers)

    run_train(tmp_path, "--bcosify-from", f"local-dir:{tmp_path / 'conv'}", "--model", "bcos_converted",
              "--dataset", str(CIFAR), "--train-split", "train[:64]", "--val-split", "test[:32]", "--crop", "pad",
              "--batch-size", "32", "--epochs", "1", "--output", str(out), "--export", "last",
              "--recipe-kwargs", '{"learn_b": true}')
    loaded = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True).eval()
    config = json.loads((out / "export" / "config.json").read_text())
    assert config["model_args"]["base_model"] == "cifar_convnet" and config["model_args"]["width"] == 0.125
    from safetensors.torch import load_file

    exported = load_file(out / "export" / "model.safetensors")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in exported.items())
    # trained: the B-cos weights moved away from the carried conventional ones
    carried = timm_bcos.convert(conventional, "bcosify", carry_weights=True).state_dict()
    assert not torch.equal(carried["features.1.0.weight"], exported["features.1.0.weight"])
    learned = {k: v for k, v in exported.items() if k.endswith(".b")}  # a B per B-cos layer, trained from 2
    assert len(learned) >= 9 and all(v.dim() == 0 for v in learned.values())
    assert config["model_args"]["learn_b"] is True and any(v.item() != 2.0 for v in learned.values())
    expl = loaded.double().explain(torch.rand(2, 3, 32, 32, dtype=torch.float64))
    assert torch.allclose(expl.contributions.sum((-2, -1)), expl.explained, rtol=1e-9, atol=1e-12)
