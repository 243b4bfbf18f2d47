"""`python -m timm_bcos explain ...`: explain images with any bcos_* model and write a PNG grid."""
from __future__ import annotations

import argparse

import torch

from .common import load_model_from_args, resolve_device


def _load_images(paths: list[str], transform):
    from PIL import Image, UnidentifiedImageError

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    tensors = []
    iterator = tqdm(paths, desc="loading", unit="img") if tqdm is not None and len(paths) > 8 else paths
    for p in iterator:
        try:
            with Image.open(p) as img:
                tensors.append(transform(img.convert("RGB")))
        except FileNotFoundError:
            raise SystemExit(f"error: image not found: {p}") from None
        except (UnidentifiedImageError, OSError) as e:
            raise SystemExit(f"error: cannot read image {p}: {e}") from None
    return torch.stack(tensors)


def explain_main(args: argparse.Namespace) -> int:
    import timm

    from ..explain.render import save_explanation_grid

    device = resolve_device(args.device)
    model = load_model_from_args(args).to(device)
    cfg = timm.data.resolve_data_config({}, model=model)
    transform = timm.data.create_transform(**cfg)
    images = _load_images(args.images, transform)
    target = None
    if args.target is not None:
        target = torch.tensor(args.target, device=device)
        if len(args.target) == 1:
            target = int(args.target[0])
    expl = model.explain(images.to(device), target=target,
                         topk=args.topk if args.target is None else None).to("cpu")
    names = None
    info = getattr(model, "pretrained_cfg", {}) or {}
    label_names = info.get("label_names")
    if label_names:
        names = list(label_names)
    out = save_explanation_grid(args.out, images, expl, class_names=names, smooth=args.smooth)
    probs = torch.sigmoid(expl.logits.double())
    for path, tgt, pr in zip(args.images, expl.targets.tolist(), probs):
        shown = ", ".join(f"{names[t] if names else t} ({pr[t]:.3f})" for t in tgt)
        print(f"{path}: {shown}")
    print(f"wrote {out}")
    return 0


def add_explain_parser(sub) -> None:
    p = sub.add_parser("explain", help="explain images with a B-cos model and write a PNG grid")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--model", required=True, help="a bcos_* model name, hf-hub:ORG/REPO or local-dir:PATH")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--pretrained", action="store_true", help="load the model's pretrained weights")
    src.add_argument("--checkpoint", help="a .safetensors (or trusted .pth) state dict for the model")
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--target", type=int, nargs="+", help="class index (one, or one per image)")
    p.add_argument("--topk", type=int, default=1, help="explain the K most likely classes (default 1)")
    p.add_argument("--smooth", type=int, default=0, help="opacity smoothing window (pixels)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda where present, else cpu)")
    p.set_defaults(func=explain_main)
