"""Convert a released B-cos v2 checkpoint (.pth) to a timm_bcos model folder (safetensors + config + card).

    python hub/convert_bcos_v2.py resnet_50-ead259efe4.pth --name resnet50 --out out/bcos_resnet50.bcos_v2_in1k

The .pth is read with torch.load(weights_only=True): tensors only, nothing else unpickled.
--name is the `bcos.models.pretrained` entrypoint the file belongs to (see --list).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import timm
import torch

import timm_bcos  # noqa: F401
from timm_bcos.hub import save_pretrained
from timm_bcos.weights import BCOS_V2_MODELS, RELEASES, convert_bcos_v2_state_dict


def convert_file(pth: Path, bcos_name: str, out: Path, repo_id: str | None = None) -> Path:
    try:
        state = torch.load(pth, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {pth} not found") from None
    except Exception as e:  # corrupted / not a state dict / pickled objects
        raise SystemExit(f"error: cannot read {pth} as a tensor-only state dict: {e}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SystemExit(f"error: {pth} does not hold a plain state dict of tensors")
    model_name = BCOS_V2_MODELS[bcos_name]
    release = next((r for r in RELEASES if r.bcos_name == bcos_name), None)
    tag = release.tag if release else "untrained"
    model = timm.create_model(f"{model_name}.{tag}", pretrained=False)
    converted = convert_bcos_v2_state_dict(state, bcos_name)
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise SystemExit(f"error: {pth} does not fit {model_name} (bcos '{bcos_name}'): {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise SystemExit(
            f"error: {pth} does not fit {model_name} (bcos '{bcos_name}'): "
            f"missing {result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    metrics = {"top1": release.top1, "top5": release.top5} if release else None
    return save_pretrained(model, out, metrics=metrics, repo_id=repo_id, dataset="imagenet-1k",
                           dataset_split="validation")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pth", nargs="?", type=Path)
    parser.add_argument("--name", choices=sorted(BCOS_V2_MODELS), help="bcos.models.pretrained entrypoint")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--repo-id", default=None, help="Hub repo id written into the model card")
    parser.add_argument("--list", action="store_true", help="list the released checkpoints")
    args = parser.parse_args(argv)
    if args.list:
        for r in RELEASES:
            print(f"{r.bcos_name:20s} {r.file:40s} -> {r.model}.{r.tag}  top1 {r.top1}")
        return 0
    if not (args.pth and args.name and args.out):
        parser.error("pth, --name and --out are required (or --list)")
    print(f"wrote {convert_file(args.pth, args.name, args.out, args.repo_id)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
