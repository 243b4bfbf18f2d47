"""The CIFAR-10 B-cos model trained here and shipped in the package, and the demo built on it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"
RECORD = ROOT / "reports" / "cifar10_shipped_sample.json"
# each model (name.tag) shipped with weights in the package, and the test-split count recorded when it was shipped
RECORDS = {"bcos_cifar10_w050_bnu.cpu30e_cifar10": RECORD,
           "bcos_cifar10_w050_bcosified.bcosify_cpu10e_cifar10": ROOT / "reports" / "cifar10_bcosified_sample.json",
           "bcos_cifar10_w050_bcosified.aloe_cpu6e_cifar10": ROOT / "reports" / "cifar10_aligned_sample.json",
           "bcos_cifar10_w050_bcosified.aloe_sgd10e_cifar10": ROOT / "reports" / "cifar10_aligned_sgd_sample.json"}


def shipped_model(name: str = "bcos_cifar10_w050_bnu"):
    import timm

    import timm_bcos  # noqa: F401

    return timm.create_model(name, pretrained=True).eval()


@pytest.mark.parametrize("name, tag, recipe", [("bcos_cifar10_w050_bnu", "cpu30e_cifar10", "v1"),
                                               ("bcos_cifar10_w050_bcosified", "bcosify_cpu10e_cifar10", "bcosify"),
                                               ("bcos_cifar10_w050_bcosified", "aloe_cpu6e_cifar10", "bcosify"),
                                               ("bcos_cifar10_w050_bcosified", "aloe_sgd10e_cifar10", "bcosify")])
def test_shipped_model_loads_offline_as_its_tag_with_its_labels(name, tag, recipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import timm

    model = shipped_model(f"{name}.{tag}")
    assert model.pretrained_cfg["tag"] == tag and RECORDS[f"{name}.{tag}"].exists()
    assert model.bcos.recipe.name == recipe
    assert model.pretrained_cfg["label_names"][3] == "cat"
    random_init = timm.create_model(name).state_dict()
    trained = model.state_dict()
    assert all(not torch.equal(random_init[k], trained[k]) for k in trained if k.endswith("weight"))


# the first SAMPLE test images, each model's prediction on each (`predicted`: one digit per image, recorded
# from the packaged weights by `python tests/test_shipped.py`, to be run again only when new weights ship)
SAMPLE = 2000


def _predictions(images) -> dict[str, torch.Tensor]:
    out = {}
    for name in sorted(RECORDS):
        model = shipped_model(name)
        with torch.no_grad():
            out[name] = torch.cat([model(images[i:i + 250]).argmax(1) for i in range(0, len(images), 250)])
    return out


def _sample(tmp_path):
    from timm_bcos.data import load_image_tensors

    records = {name: json.loads(path.read_text()) for name, path in RECORDS.items()}
    assert len({r["split"] for r in records.values()}) == 1, "one split for all: decoded once"
    split = next(iter(records.values()))["split"]
    images, labels, _, _ = load_image_tensors(str(CIFAR), f"{split}[:{SAMPLE}]", cache_dir=str(tmp_path / "hf"))
    return records, images, labels


@pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not here")
def test_shipped_models_give_their_recorded_predictions_on_the_test_split(tmp_path):
    """Every shipped model on the first 2,000 test images, decoded once for all of them: image for image, the
    recorded predictions (`predicted`, recorded from the shipped weights on 2026-12-07). A change to the
    weights, the preprocessing or the layers' arithmetic that moves more than 2 of them fails. The recorded
    sample must also agree with the published full-split top-1 (a binomial band of about 4.5 sigma)."""
    records, images, labels = _sample(tmp_path)
    for name, pred in _predictions(images).items():
        record = records[name]
        assert record["model"].split(".")[0] == name.split(".")[0]
        assert record["top1"] == round(100.0 * record["correct"] / record["n"], 2)
        recorded = torch.tensor([int(c) for c in record["predicted"]])
        assert len(recorded) == len(labels) == SAMPLE
        # same weights, same images: a borderline image may flip across CPUs' float summation orders, not more
        assert int((pred != recorded).sum()) <= 2, (name, int((pred != recorded).sum()))
        sample_top1 = 100.0 * float((recorded == labels).float().mean())
        assert abs(sample_top1 - record["top1"]) <= 3.5, (name, sample_top1, record["top1"])


def test_demo_explains_the_samples_with_the_shipped_model(tmp_path, capsys):
    from timm_bcos.__main__ import main

    out = tmp_path / "demo.png"
    assert main(["demo", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert printed.count("sum of contributions") == 8 and "bcos_cifar10_w050_bnu" in printed
    correct = int(printed.split(" correct;")[0].split()[-1].split("/")[0])
    assert correct >= 6, printed  # the shipped model gets most of its sample images right
    # completeness printed for every image: logit - bias equals the sum of contributions
    for line in printed.splitlines():
        if "sum of contributions" in line:
            lhs = float(line.split("logit-bias ")[1].split(" =")[0])
            rhs = float(line.split("sum of contributions ")[1])
            assert abs(lhs - rhs) <= 1e-3 * max(1.0, abs(lhs))


if __name__ == "__main__":  # rewrite the records' `predicted` (after shipping new weights)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        _, images, _ = _sample(Path(tmp))
        for name, pred in _predictions(images).items():
            record = json.loads(RECORDS[name].read_text())
            record["predicted"] = "".join(map(str, pred.tolist()))
            RECORDS[name].write_text(json.dumps(record, indent=1) + "\n")
