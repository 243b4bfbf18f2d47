"""--checkpoint goes through timm's checkpoint reader: DDP prefixes, EMA weights and the B-cos v2
reference's .pth load; damaged files and checkpoints of another model are one clear line."""
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

import timm_bcos  # noqa: F401
from helpers import reference_model
from timm_bcos.__main__ import main
from timm_bcos.cli.common import load_checkpoint
from timm_bcos.weights import convert_bcos_v2_state_dict

SAMPLE = str(next((Path(timm_bcos.__file__).parent / "samples").glob("*.png")))


def _model():
    torch.manual_seed(0)
    return timm.create_model("bcos_cifar10", width=0.125)


def _explain(tmp_path, checkpoint):
    return main(["explain", SAMPLE, "--model", "bcos_cifar10", "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "grid.png")])


def test_ddp_prefix_and_ema_weights_load(tmp_path):
    src = _model().state_dict()
    path = tmp_path / "ckpt.pth"
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in src.items()}
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.items()},
                "state_dict_ema": {f"module.{k}": v for k, v in ema.items()}}, path)
    model = timm.create_model("bcos_cifar10", width=0.125)
    load_checkpoint(model, path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())


def test_reference_pth_is_converted(tmp_path):
    ref = reference_model("resnet18")
    path = tmp_path / "resnet_18.pth"
    torch.save(ref.state_dict(), path)
    model = timm.create_model("bcos_resnet18")
    load_checkpoint(model, path)
    expected = convert_bcos_v2_state_dict(ref.state_dict(), "resnet18")
    assert all(torch.equal(model.state_dict()[k], v.to(model.state_dict()[k].dtype)) for k, v in expected.items())


def test_truncated_safetensors_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(_model().state_dict(), str(path))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(SystemExit) as e:
        _explain(tmp_path, path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(f"error: {path}: not a readable safetensors file")


def test_checkpoint_of_another_model_is_one_line(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file(timm.create_model("bcos_cifar10", width=0.25).state_dict(), str(path))
    with pytest.raises(SystemExit) as e:
        _explain(tmp_path, path)
    message = str(e.value)
    assert "\n" not in message and "does not fit bcos_cifar10: " in message and "shape mismatches" in message


def test_missing_matplotlib_says_what_to_install(tmp_path, monkeypatch):
    """demo / explain with the core install only: one line naming the extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(SystemExit) as e:
        main(["explain", SAMPLE, "--model", "bcos_cifar10", "--out", str(tmp_path / "grid.png")])
    assert str(e.value) == ("error: writing the explanation grid needs matplotlib: "
                            "pip install 'timm_bcos[eval]' (or pip install matplotlib)")
