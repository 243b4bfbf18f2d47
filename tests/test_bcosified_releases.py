"""The released B-cosified CNNs (Arya et al., NeurIPS 2024) against the reference code itself.

The reference (../shared/oracles/bcosification) shadows the `bcos` package, so its models are built
in a subprocess (tests/oracles/bcosification_dump.py) with seeded random weights in place of the
release's and dumped in float64: the conventional source weights, the B-cosified state dict, an
input, logits and the explanation of each sample's top class.

- a release checkpoint (Lightning last.ckpt layout) loads into `bcos_*_bcosified.<tag>` through
  timm's own pretrained path and gives the reference's logits and explanations;
- our `bcosify` recipe, applied to the same conventional weights, gives the reference's B-cosified
  model (before any fine-tuning).
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file

import timm_bcos  # noqa: F401
from helpers import rel_err
from timm_bcos import convert
from timm_bcos.weights.bcosification import BCOSIFIED_RELEASES, convert_bcosified_state_dict

REPO = Path(__file__).resolve().parents[1]
ORACLE = Path(os.environ.get("BCOSIFICATION_ORACLE", REPO.parent / "shared" / "oracles" / "bcosification"))
pytestmark = pytest.mark.skipif(not ORACLE.is_dir(), reason=f"needs the B-cosification reference at {ORACLE}")

VIT = "bcosifyv2_bcos_simple_vit_ti_patch16_224_0.001_gapReorder"
VITC = "bcosifyv2_bcos_vitc_ti_patch1_14_0.001_gapReorder"
# experiment -> input size (small: float64 on 2 cores); resnet_50 and resnet_50_V1 share an architecture,
# and so do the ViT sizes (ti stands for s, b, l)
CASES = {"resnet_18": 64, "resnet_50_V1": 32, "densenet_121": 32, VIT: 224, VITC: 224}
# relative error allowed: the CNNs agree to rounding; in the random-init ViTs, rounding differences
# (softmax attention, 11-12 blocks at B=2) grow to ~1e-8, as in tests/test_bcos_v2_parity.py
TOLERANCE = {VIT: 1e-6, VITC: 1e-6}
RELEASE = {r.experiment: r for r in BCOSIFIED_RELEASES}
# the conventional timm model that each experiment B-cosifies (torchvision's keys are timm's here)
SOURCE = {"resnet_18": "resnet18", "resnet_50_V1": "resnet50", "densenet_121": "densenet121"}


_DUMPS: dict = {}  # experiment -> dump, shared by the tests of this worker (each dump costs 5-25 s)


@pytest.fixture(scope="module", params=list(CASES))
def dump(request, tmp_path_factory):
    experiment = request.param
    if experiment not in _DUMPS:
        out = tmp_path_factory.mktemp("bcosification") / "dump.safetensors"
        batch = 1 if experiment in (VIT, VITC) else 2
        subprocess.run([sys.executable, str(REPO / "tests" / "oracles" / "bcosification_dump.py"), experiment,
                        str(out), "--oracle", str(ORACLE), "--size", str(CASES[experiment]), "--batch", str(batch)],
                       check=True, capture_output=True, cwd=REPO)
        tensors = load_file(str(out))
        group = lambda prefix: {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}  # noqa: E731
        _DUMPS[experiment] = experiment, tensors, group("state_dict."), group("source.")
    return _DUMPS[experiment]


def _assert_matches_reference(model, tensors, tol=1e-9):
    model = model.double().eval()
    x, target = tensors["input.x"], tensors["target"]
    bias = model.logit_layer.logit_bias
    with torch.no_grad():
        logits = model(x)
    # logits without the bias: with it, float64 cannot tell two random-init models apart
    assert rel_err(logits - bias, tensors["logits"] - bias) <= tol
    expl = model.explain(x, target=target)
    # W(x) over [x, 1-x], the reference's normalisation written as the linear map it is on encodings
    assert rel_err(expl.weights[:, 0], tensors["expl.grad_x6_linear_norm"]) <= 10 * tol
    assert rel_err(expl.contributions[:, 0], tensors["expl.contrib_x6_linear_norm"]) <= 10 * tol


def test_release_checkpoint_loads_through_timm_and_equals_the_reference(dump, tmp_path):
    experiment, tensors, state, _ = dump
    release = RELEASE[experiment]
    ckpt = tmp_path / "last.ckpt"  # the release layout: Lightning's {"state_dict": {"model.model.<key>": ...}}
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 89}, ckpt)
    loaded = timm.create_model(f"{release.model}.{release.tag}", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(ckpt)))
    expected = convert_bcosified_state_dict(state)
    assert set(loaded.state_dict()) == set(expected)
    assert all(torch.equal(v, expected[k].to(v.dtype)) for k, v in loaded.state_dict().items())
    # in float64 (timm builds in float32, which rounds the reference's float64 norm statistics)
    model = timm.create_model(release.model).double()
    model.load_state_dict(expected)  # strict
    _assert_matches_reference(model, tensors, TOLERANCE.get(experiment, 1e-9))


@pytest.mark.parametrize("dump", list(SOURCE), indirect=True)  # the ViTs' standard_* source keys have no loader yet
def test_bcosify_recipe_equals_the_reference_bcosification(dump):
    """Same conventional weights in, the same B-cosified model out (stem [W, -W]/2 on the normalised
    six channels, biases dropped, uncentered norms, ReLU kept, AvgPool, 1x1 head, logit bias)."""
    experiment, tensors, state, source = dump
    conventional = timm.create_model(SOURCE[experiment], num_classes=1000).double()
    conventional.load_state_dict(source)
    ours = convert(conventional, "bcosify", carry_weights=True).double()
    expected = convert_bcosified_state_dict(state)
    got = ours.state_dict()
    assert set(got) == set(expected)
    # an uncentered norm never reads its running mean (the reference keeps the conventional one, we zero it)
    compared = [k for k in got if expected[k].is_floating_point() and not k.endswith("running_mean")]
    assert max(rel_err(got[k], expected[k]) for k in compared) <= 1e-12
    _assert_matches_reference(ours, tensors)


def test_a_checkpoint_of_something_else_is_refused_clearly():
    with pytest.raises(ValueError, match="not a B-cosification checkpoint.*linear.weight"):
        convert_bcosified_state_dict({"state_dict": {"model.conv1.weight": torch.zeros(1)}})


@pytest.mark.parametrize("dump", ["resnet_18", VIT], indirect=True)
def test_a_new_head_keeps_its_own_logit_bias(dump, tmp_path):
    """num_classes=10 on a 1000-class release checkpoint, or on a folder saved from it: the new
    head gets -log(9), the rest of the weights load."""
    from timm_bcos.hub import save_pretrained

    experiment, _, state, _ = dump
    release = RELEASE[experiment]
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()}}, ckpt)
    full = timm.create_model(f"{release.model}.{release.tag}", pretrained=True, pretrained_cfg_overlay=dict(file=str(ckpt)))
    save_pretrained(full, tmp_path / "saved")
    for source in (dict(model_name=f"{release.model}.{release.tag}", pretrained_cfg_overlay=dict(file=str(ckpt))),
                   dict(model_name=f"local-dir:{tmp_path / 'saved'}")):
        model = timm.create_model(**source, pretrained=True, num_classes=10)
        assert model.logit_layer.logit_bias.item() == pytest.approx(-math.log(9))
        stem = model.pretrained_cfg["first_conv"] + ".weight"
        assert torch.equal(model.state_dict()[stem], full.state_dict()[stem])


def test_a_tag_without_weights_names_itself_and_how_to_load_it():
    with pytest.raises(RuntimeError, match=r"bcos_resnet50_bcosified\.bcosify_tv_in1k .*resnet_50_V1.*file=PATH"):
        timm.create_model("bcos_resnet50_bcosified.bcosify_tv_in1k", pretrained=True)
