"""Release .pth files: hash checked as the reference does (check_hash=True), and the error when
there is no network says how to use a file you have."""
import hashlib
import urllib.error

import pytest
import timm

import timm_bcos  # noqa: F401
from timm_bcos.weights import verify_release_file


def _named_by_hash(tmp_path, data: bytes, good: bool):
    prefix = hashlib.sha256(data).hexdigest()[:10]
    if not good:
        prefix = ("0" if prefix[0] != "0" else "1") + prefix[1:]
    path = tmp_path / f"resnet_18-{prefix}.pth"
    path.write_bytes(data)
    return path


def test_verify_release_file(tmp_path):
    verify_release_file(_named_by_hash(tmp_path, b"weights", good=True))
    with pytest.raises(RuntimeError, match=r"resnet_18-.*\.pth: its sha256 begins .* delete it and retry"):
        verify_release_file(_named_by_hash(tmp_path, b"weights", good=False))


def test_damaged_cached_release_is_refused(tmp_path, monkeypatch):
    """A damaged copy in timm's cache (where an interrupted download would leave it) is not loaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / "resnet_18-68b4160fff.pth").write_bytes(b"not the release file")
    with pytest.raises(RuntimeError, match=r"could not load pretrained weights for bcos_resnet18 .*"
                                           r"its sha256 begins .* the release file's begins 68b4160fff"):
        timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True)


def test_offline_error_says_how_to_use_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr("timm.models._hub.download_url_to_file", offline)
    with pytest.raises(RuntimeError, match=r"github.com/B-cos.*no network.*"
                                           r"pretrained_cfg_overlay=dict\(file='PATH'\)"):
        timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=True)
    assert not list(tmp_path.rglob("*.pth"))


def test_hub_org_switch_after_import():
    from timm_bcos.weights import set_hub_org

    try:
        set_hub_org("someone")
        cfg = timm.models.get_pretrained_cfg("bcos_resnet18.bcos_v2_in1k")
        assert cfg.hf_hub_id == "someone/bcos_resnet18.bcos_v2_in1k" and not cfg.url
        model = timm.create_model("bcos_resnet18.bcos_v2_in1k", pretrained=False)
        assert model.pretrained_cfg["hf_hub_id"] == "someone/bcos_resnet18.bcos_v2_in1k"
    finally:
        set_hub_org(None)
    cfg = timm.models.get_pretrained_cfg("bcos_resnet18.bcos_v2_in1k")
    assert cfg.hf_hub_id is None and cfg.url.endswith("/resnet_18-68b4160fff.pth")
