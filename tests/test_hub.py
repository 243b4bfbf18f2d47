"""Saving in timm's Hub layout and loading back: local-dir:, an offline Hub cache, release .pth files."""
import json
import math
import os
import subprocess
import sys

import pytest
import timm
import torch
from huggingface_hub import ModelCard

import timm_bcos  # noqa: F401
from helpers import reference_model
from timm_bcos.hub import save_pretrained
from timm_bcos.weights import convert_bcos_v2_state_dict


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("bcos_cifar10", width=0.25, b=2.5).eval()
    with torch.no_grad():  # non-trivial weights and statistics
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    folder = save_pretrained(model, tmp_path / "bcos_cifar10_test", label_names=[f"c{i}" for i in range(10)],
                             metrics={"top1": 12.3}, dataset="cifar10", dataset_split="test", licence="mit")
    return model, folder


def test_folder_layout(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "bcos_cifar10"
    assert cfg["num_classes"] == 10
    assert {"num_classes": 10, "width": 0.25, "b": 2.5}.items() <= cfg["model_args"].items()
    assert cfg["pretrained_cfg"]["mean"] == [0.0, 0.0, 0.0] and cfg["pretrained_cfg"]["std"] == [1.0, 1.0, 1.0]
    assert cfg["label_names"][:2] == ["c0", "c1"]
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "timm" and card.data.license == "mit" and card.data.datasets == ["cifar10"]
    (result,) = card.data.eval_results
    assert (result.dataset_type, result.dataset_split, result.metric_type, result.metric_value) == \
        ("cifar10", "test", "top1", 12.3)
    assert "import timm, timm_bcos" in card.text
    # readable by others, as any export: 0755 folder, 0644 files (umask 022 here)
    assert folder.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_card_claims_no_data_set_it_was_not_given(tmp_path):
    """Metrics without their data set stay in the text; the card claims no model-index result."""
    folder = save_pretrained(timm.create_model("bcos_cifar10", width=0.125), tmp_path / "m", metrics={"top1": 50.0})
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and not card.data.datasets and "imagenet" not in card.content.lower()
    assert "top1: 50.0" in card.text and "data set not stated" in card.text


def test_imagenet_release_card_names_its_licence():
    from timm_bcos.hub import model_card

    card = ModelCard(model_card(timm.create_model("bcos_cifar10", width=0.125), "ORG/x", metrics={"top1": 1.0},
                                dataset="imagenet-1k", dataset_split="validation"))
    assert (card.data.license, card.data.license_name) == ("other", "imagenet-terms-of-access")
    assert card.data.license_link == "https://image-net.org/download" and "non-commercial" in card.text


def test_local_dir_round_trip(saved):
    model, folder = saved
    loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert type(loaded).__name__ == type(model).__name__
    x = torch.rand(4, 3, 32, 32)
    assert torch.equal(loaded(x), model(x))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert all(c.b == 2.5 for c in loaded.modules() if type(c).__name__ == "BcosConv2d")


def test_offline_hub_cache_round_trip(saved, tmp_path):
    """hf-hub:ORG/REPO from a pre-filled cache with HF_HUB_OFFLINE=1 (no network)."""
    model, folder = saved
    cache = tmp_path / "hf_cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = cache / "models--timm-bcos-test--bcos_cifar10_test" / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in folder.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (cache / "models--timm-bcos-test--bcos_cifar10_test" / "refs").mkdir()
    (cache / "models--timm-bcos-test--bcos_cifar10_test" / "refs" / "main").write_text(commit)
    x = torch.rand(2, 3, 32, 32)
    torch.save(x, tmp_path / "x.pt")
    script = (
        "import torch, timm, timm_bcos; "
        "m = timm.create_model('hf-hub:timm-bcos-test/bcos_cifar10_test', pretrained=True).eval(); "
        f"x = torch.load(r'{tmp_path / 'x.pt'}'); torch.save(m(x), r'{tmp_path / 'y.pt'}')"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home")}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    assert torch.equal(torch.load(tmp_path / "y.pt"), model.eval()(x))


def _reference_resnet18():
    ref = reference_model("resnet18")
    with torch.no_grad():
        for name, buf in ref.named_buffers():
            if name.endswith("running_var"):
                buf.uniform_(0.5, 2.0)
    return ref


def test_release_pth_is_converted_on_load(tmp_path):
    """A downloaded release file works through timm's own pretrained machinery."""
    ref = _reference_resnet18()
    path = tmp_path / "resnet_18-68b4160fff.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    expected = convert_bcos_v2_state_dict(ref.state_dict(), "resnet18")
    assert set(model.state_dict()) == set(expected)
    for k, v in expected.items():
        assert torch.equal(model.state_dict()[k], v.to(model.state_dict()[k].dtype)), k
    assert math.isclose(model.logit_layer.logit_bias.item(), -math.log(999))


def test_pretrained_with_other_num_classes_keeps_the_backbone(tmp_path):
    ref = _reference_resnet18()
    path = tmp_path / "resnet_18.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert torch.equal(model.conv1.weight, ref.conv1.linear.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, ref.layer4[1].bn2.running_var)
    assert model.fc.weight.shape[0] == 10
    assert math.isclose(model.logit_layer.logit_bias.item(), -math.log(9), rel_tol=1e-9)


def test_truncated_safetensors_names_the_file(saved):
    _, folder = saved
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(RuntimeError, match=r"could not load pretrained weights for bcos_cifar10 from "
                                           r"file '.*model\.safetensors'.*deserializ"):
        timm.create_model(f"local-dir:{folder}", pretrained=True)


def test_missing_file_and_untrained_tag_say_so(tmp_path):
    with pytest.raises(RuntimeError, match=r"bcos_resnet18 from file '.*nothere\.pth'"):
        timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "nothere.pth")))
    with pytest.raises(RuntimeError, match=r"bcos_cifar10\.untrained from nowhere: this tag has no weights"):
        timm.create_model("bcos_cifar10.untrained", pretrained=True)


def test_label_names_must_match_num_classes(tmp_path):
    model = timm.create_model("bcos_cifar10", width=0.25)
    with pytest.raises(ValueError, match="3 label names for a model with 10 classes"):
        save_pretrained(model, tmp_path / "m", label_names=["a", "b", "c"])
    assert not (tmp_path / "m").exists()


def _run_script(name, *args):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "hub" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod.main(list(args))
    finally:
        sys.path.remove(str(path.parent))


def test_publish_dry_run_writes_loadable_folders(tmp_path):
    ref = _reference_resnet18()
    weights = tmp_path / "weights"
    weights.mkdir()
    torch.save(ref.state_dict(), weights / "resnet_18-68b4160fff.pth")
    out = tmp_path / "out"
    assert _run_script("publish", "--weights-dir", str(weights), "--org", "me", "--dry-run",
                       "--out-dir", str(out), "--only", "resnet18") == 0
    folder = out / "bcos_resnet18.bcos_v2_in1k"
    card = (folder / "README.md").read_text()
    assert "hf-hub:me/bcos_resnet18.bcos_v2_in1k" in card and "value: 68.736" in card and "non-commercial" in card
    model = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert torch.equal(model.layer1[0].conv1.weight, ref.layer1[0].conv1.linear.weight)


def test_convert_script_rejects_other_architectures_and_pickles(tmp_path):
    torch.save(reference_model("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(SystemExit, match="does not fit bcos_resnet18.*unexpected"):
        _run_script("convert_bcos_v2", str(tmp_path / "r34.pth"), "--name", "resnet18", "--out", str(tmp_path / "o"))
    torch.save({"fn": print}, tmp_path / "pickled.pth")  # a pickled global, not a tensor
    with pytest.raises(SystemExit, match="cannot read .*pickled.pth as a tensor-only state dict"):
        _run_script("convert_bcos_v2", str(tmp_path / "pickled.pth"), "--name", "resnet18", "--out", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_architecture_names_source_and_keys(tmp_path):
    torch.save(reference_model("resnet34").state_dict(), tmp_path / "r34.pth")
    with pytest.raises(RuntimeError, match=r"(?s)bcos_resnet18 from file '.*r34\.pth'.*Unexpected key\(s\).*layer1\.2"):
        timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "r34.pth")))
