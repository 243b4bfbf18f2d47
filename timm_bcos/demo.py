"""The README's main job.

Until the CIFAR-10 model trained here ships (issue 7), this builds the paper's
CIFAR-10 B-cos network through timm with RANDOM weights, explains a few CIFAR-10
test images (from ../shared/datasets/cifar10 when present, else random images),
checks the explanations' completeness, and writes a PNG grid.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import torch

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHARED_TEST = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10" / "data" / "test-00000-of-00001.parquet"


def _sample_images(n: int, seed: int) -> tuple[torch.Tensor, str]:
    try:
        import numpy as np
        import pyarrow.parquet as pq
        from PIL import Image

        table = pq.read_table(SHARED_TEST).slice(0, n).to_pylist()
        imgs = []
        for row in table:
            img = row.get("img") or row.get("image")
            data = img["bytes"] if isinstance(img, dict) else img
            arr = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
            imgs.append(torch.from_numpy(arr).permute(2, 0, 1))
        return torch.stack(imgs), f"CIFAR-10 test images from {SHARED_TEST.parent.parent}"
    except Exception:  # no shared data set here: random images keep the demo self-contained
        return torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed)), "random images"


def run_demo(args: argparse.Namespace) -> int:
    import timm

    import timm_bcos  # noqa: F401
    from timm_bcos.explain.render import save_explanation_grid

    torch.manual_seed(args.seed)
    model = timm.create_model("bcos_cifar10", width=0.5).eval()
    images, source = _sample_images(4, args.seed)
    expl = model.explain(images, topk=2)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_explanation_grid(out, images, expl, class_names=CIFAR_CLASSES)
    print(f"model: bcos_cifar10 (width 0.5, RANDOM weights: the trained model ships with issue 7); inputs: {source}")
    probs = torch.sigmoid(expl.logits.double())
    for i in range(len(images)):
        top = ", ".join(f"{CIFAR_CLASSES[t]} {probs[i, t]:.3f}" for t in expl.targets[i].tolist())
        total = expl.contributions[i, 0].sum().item()
        print(f"image {i}: top-2 {top} | logit-bias {expl.explained[i, 0].item():+.4e} = "
              f"sum of contributions {total:+.4e}")
    print(f"wrote {out}")
    return 0
