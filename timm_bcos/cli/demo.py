"""The README's main job: the CIFAR-10 B-cos model trained here explains the shipped sample images.

Loads `bcos_cifar10_w050_bnu` through `timm.create_model(..., pretrained=True)` (weights
inside the package, no network), explains the top-2 classes of the sample CIFAR-10 test
images in timm_bcos/samples/, prints predictions with the completeness check (logit minus
bias = sum of contributions), and writes a PNG grid (image | explanation | contribution map).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

MODEL = "bcos_cifar10_w050_bnu"
SAMPLES = Path(__file__).resolve().parents[1] / "samples"  # timm_bcos/samples


def load_samples(folder: Path = SAMPLES) -> tuple[torch.Tensor, list[str]]:
    """The sample images as [N, 3, 32, 32] in [0, 1] and their true classes (from the file names)."""
    import numpy as np
    from PIL import Image

    paths = sorted(folder.glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no sample images in {folder}")
    images = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
              for p in paths]
    return torch.stack(images), [p.stem.split("_")[-1] for p in paths]


def run_demo(args: argparse.Namespace) -> int:
    import timm

    import timm_bcos  # noqa: F401
    from timm_bcos.explain.render import save_explanation_grid

    model = timm.create_model(MODEL, pretrained=True).eval()
    classes = model.pretrained_cfg["label_names"]
    images, truth = load_samples()
    expl = model.explain(images, topk=2)
    out = Path(args.out)
    save_explanation_grid(out, images, expl, class_names=classes)
    print(f"model: {MODEL} (trained on CIFAR-10 here; reports/cifar10.md), {len(images)} CIFAR-10 test images")
    probs = torch.sigmoid(expl.logits.double())
    correct = 0
    for i in range(len(images)):
        top = [int(t) for t in expl.targets[i]]
        correct += classes[top[0]] == truth[i]
        guesses = ", ".join(f"{classes[t]} {probs[i, t]:.2f}" for t in top)
        print(f"  {truth[i]:>10}: top-2 {guesses} | logit-bias {expl.explained[i, 0].item():+.4f} = "
              f"sum of contributions {expl.contributions[i, 0].sum().item():+.4f}")
    print(f"{correct}/{len(images)} correct; wrote {out}")
    return 0
