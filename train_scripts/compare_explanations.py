#!/usr/bin/env python
"""Side by side: several B-cos models explain the same images for their label class.

  python train_scripts/compare_explanations.py --models local-dir:runs/a/export local-dir:runs/b/export \\
      --names unguided guided --dataset runs/decoy_cifar10 --split test_decoy --count 8 --out cmp.png

One row per image: the input, then per model its explanation (paper's colour rendering)
and its signed contribution map, titled with the model's probability of the label.
"""
from __future__ import annotations

import argparse
import sys

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--names", nargs="+")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--count", type=int, default=8, help="images, the first COUNT of the split")
    p.add_argument("--out", required=True, help="PNG file")
    args = p.parse_args(argv)
    names = args.names or args.models
    if len(names) != len(args.models):
        raise SystemExit(f"error: {len(names)} --names for {len(args.models)} --models")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import timm

    import timm_bcos  # noqa: F401
    from timm_bcos.utils.atomic import atomic_path
    from timm_bcos.data import load_image_tensors
    from timm_bcos.explain.render import contribution_limits

    models = [timm.create_model(m, pretrained=m.startswith(("local-dir:", "hf-hub:"))).eval() for m in args.models]
    cfg = models[0].pretrained_cfg
    x, labels, info, _ = load_image_tensors(args.dataset, args.split, input_size=cfg["input_size"],
                                            max_samples=args.count)
    expls = [m.explain(x, target=labels) for m in models]
    fig, axes = plt.subplots(len(x), 1 + 2 * len(models), figsize=(2.0 * (1 + 2 * len(models)), 2.1 * len(x)),
                             squeeze=False)
    for i in range(len(x)):
        label = info.label_names[labels[i]] if info.label_names else int(labels[i])
        axes[i, 0].imshow(x[i].permute(1, 2, 0).numpy())
        axes[i, 0].set_title(f"label: {label}", fontsize=8)
        for j, (name, e) in enumerate(zip(names, expls)):
            prob = torch.sigmoid(e.logits[i, labels[i]].double()).item()
            axes[i, 1 + 2 * j].imshow(torch.ones(*x.shape[-2:], 3).numpy())
            axes[i, 1 + 2 * j].imshow(e.rgba()[i, 0])
            axes[i, 1 + 2 * j].set_title(f"{name} ({prob:.2f})", fontsize=8)
            lim = float(contribution_limits(e.contributions)[i, 0])
            axes[i, 2 + 2 * j].imshow(e.contributions[i, 0].numpy(), cmap="bwr", vmin=-lim, vmax=lim)
            axes[i, 2 + 2 * j].set_title(f"{name}: contributions", fontsize=8)
        for ax in axes[i]:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
