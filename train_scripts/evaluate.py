#!/usr/bin/env python
"""Evaluate timm models: top-1/top-5 accuracy and the grid pointing game (paper Sec. 4).

  python train_scripts/evaluate.py --dataset ../shared/datasets/cifar10 --split test \\
      --models bcos_cifar10_w050_bnu local-dir:runs/cifar10_convnet/export \\
      --names "B-cos B=2" conventional --pretrained --grid 2 3 --out reports/cifar10_eval

Models are timm names (with --pretrained for their released weights) or `local-dir:` /
`hf-hub:` folders such as train.py's OUTPUT/export. For each model, correctly and
confidently classified test images (sigmoid of the logit > 0.5) are tiled into n x n
grids of distinct classes (fixed seed), each cell's class is explained on the whole grid
by every method (the model's own contributions on B-cos models; Captum's Grad, Input x
Gradient, Integrated Gradients, DeepLIFT and GradCAM on every model), and the share of
positive attribution inside the right cell is scored. Writes OUT/results.md (tables),
OUT/results.json and OUT/pointing_game_{n}x{n}.png (box plots like the paper's Fig. 6).
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="timm names or local-dir:/hf-hub: folders")
    p.add_argument("--names", nargs="+", help="display names, one per model")
    p.add_argument("--pretrained", action="store_true", help="load the models' pretrained weights")
    p.add_argument("--dataset", required=True, help="Hub data set id, local folder, or webdataset tar shards "
                   "(wds:FOLDER or 'wds:PATH/{split}-{0000..0099}.tar', always streamed)")
    p.add_argument("--split", default="validation")
    p.add_argument("--max-samples", type=int, help="evaluate on the first N images of the split")
    p.add_argument("--streaming", action="store_true", help="read the split's parquet shards on demand (Hub id "
                   "or local folder): no download ahead, no Arrow cache")
    p.add_argument("--image-column", help="default: found automatically (image, img, ...)")
    p.add_argument("--label-column", help="default: found automatically (label, labels, ...)")
    p.add_argument("--mask-column", help="B-cos models: energy pointing game and IoU of the own explanation "
                   "of each image's label against this mask column (white: where the evidence is)")
    p.add_argument("--boxes-column", help="as --mask-column, with boxes [[x0, y0, x1, y1], ...] in pixels")
    p.add_argument("--box-dilation", type=int, default=0)
    p.add_argument("--iou-threshold", type=float, default=0.5,
                   help="IoU: pixels with at least this share of the maximum positive contribution (%(default)s)")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: cuda where present, else cpu)")
    p.add_argument("-j", "--workers", type=int, default=2, help="data loader workers (%(default)s)")
    p.add_argument("--grid", type=int, nargs="*", default=[2, 3], help="grid sizes n (n x n); none: skip")
    p.add_argument("--methods", nargs="+", default=["own", "grad", "ixg", "ig", "deeplift", "gradcam"])
    p.add_argument("--num-grids", type=int, nargs="+", default=[100],
                   help="grids per size: one number, or one per --grid size (%(default)s)")
    p.add_argument("--pool", type=int, default=None,
                   help="draw each cell from the POOL most confident images of its class (default: all)")
    p.add_argument("--smooth", type=int, default=None,
                   help="smoothing window: default 3 for images up to 64 px, 15 above (the paper's)")
    p.add_argument("--examples", type=int, default=8,
                   help="B-cos models: write OUT/examples_<name>.png explaining this many test images "
                        "for their class (like the paper's Fig. 4); 0: none")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", default="reports/eval", help="output folder (%(default)s)")
    return p


def atomic_write(path: Path, text: str) -> None:
    from timm_bcos.utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def write_examples(model, images, candidates, count, class_names, path: Path) -> None:
    """The most confidently and correctly classified image of each class, explained for its class."""
    from timm_bcos.eval.attribution import model_device
    from timm_bcos.explain.render import save_explanation_grid

    picked = [(idx[0], c) for c, idx in sorted(candidates.items()) if idx][:count]
    if not picked:
        return
    x = images[[i for i, _ in picked]]
    device = model_device(model)
    expl = model.explain(x.to(device), target=torch.tensor([c for _, c in picked], device=device)).to("cpu")
    save_explanation_grid(path, x, expl, class_names=class_names)


def localise(args, model, data, device) -> dict:
    """EPG and IoU of the model's own explanations against the split's masks or boxes."""
    from timm_bcos.eval import localisation_scores, summarise
    from timm_bcos.guidance import AnnotatedImageDataset, collate_annotated

    annotated = AnnotatedImageDataset(data.data, data.info, data.transform, mask_column=args.mask_column,
                                      boxes_column=args.boxes_column, dilation=args.box_dilation)
    loader = torch.utils.data.DataLoader(annotated, batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_annotated)
    scores = localisation_scores(model, loader, device=device, threshold=args.iou_threshold)
    return {k: summarise(v) for k, v in scores.items()}


def open_split(args, cfg: dict):
    """The split at the model's eval size, decoded lazily: (data set, loader, info)."""
    from timm_bcos.data import DataError, IndexedSamples, collate_indexed, load_eval_dataset
    from timm_bcos.data.streaming import load_eval_stream

    load = load_eval_stream if args.streaming or args.dataset.startswith("wds:") else load_eval_dataset
    try:
        data, info = load(args.dataset, args.split, input_size=cfg["input_size"], crop_pct=cfg.get("crop_pct", 1.0),
                          interpolation=cfg.get("interpolation", "bilinear"), max_samples=args.max_samples,
                          image_column=args.image_column, label_column=args.label_column)
    except DataError as e:
        raise SystemExit(f"error: {e}") from None
    loader = torch.utils.data.DataLoader(IndexedSamples(data), batch_size=args.batch_size, num_workers=args.workers,
                                         collate_fn=collate_indexed)
    return data, loader, info


def check_args(args) -> dict[int, int]:
    """Exit with a clear message on inconsistent options; returns {grid size: number of grids}."""
    from timm_bcos.cli.common import unknown_model_message
    from timm_bcos.eval.attribution import ATTRIBUTION_METHODS

    if args.names and len(args.names) != len(args.models):
        raise SystemExit(f"error: {len(args.names)} --names for {len(args.models)} --models")
    unknown = [m for m in args.methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise SystemExit(f"error: unknown methods {unknown}; expected some of {sorted(ATTRIBUTION_METHODS)}")
    for spec in args.models:
        message = unknown_model_message(spec, cutoff=0.6)
        if message:
            raise SystemExit(f"error: {message}")
    if (args.streaming or args.dataset.startswith("wds:")) and (args.mask_column or args.boxes_column):
        raise SystemExit("error: --mask-column / --boxes-column read the map-style data set: drop --streaming "
                         "(a wds: data set is always streamed)")
    if len(args.num_grids) not in (1, len(args.grid)):
        raise SystemExit(f"error: --num-grids takes one number or one per --grid size ({len(args.grid)})")
    return dict(zip(args.grid, args.num_grids * len(args.grid) if len(args.num_grids) == 1 else args.num_grids))


def play_pointing_game(args, name, model, images, candidates, num_grids, pointing) -> None:
    """The grid pointing game of one model for every --grid size, into pointing[n][name]."""
    from timm_bcos.eval import build_grids, grid_pointing_game
    from timm_bcos.eval.attribution import METHOD_LABELS

    methods = [m for m in args.methods if m != "own" or hasattr(model, "explain")]
    smooth = args.smooth if args.smooth is not None else (3 if images.shape[-1] <= 64 else 15)
    for n in args.grid:
        try:
            grids = build_grids(images, candidates, n, num_grids[n], pool=args.pool, seed=args.seed)
        except ValueError as e:
            print(f"{name}: no {n}x{n} pointing game: {e}", flush=True)
            continue
        t0 = time.perf_counter()
        pointing[n][name] = grid_pointing_game(model, grids, methods, smooth=smooth, batch_size=args.batch_size)
        means = ", ".join(f"{METHOD_LABELS.get(m, m)} {float(s.mean()):.3f}" for m, s in pointing[n][name].items())
        print(f"{name} {n}x{n} pointing game ({len(grids.images)} grids, smoothing {smooth}, "
              f"{time.perf_counter() - t0:.0f}s): {means}", flush=True)


def evaluate_model(args, spec, name, device, num_grids, results) -> None:
    """Accuracy, localisation and the pointing game of one model, into `results`."""
    import timm

    from timm_bcos.data import LazyImages
    from timm_bcos.eval import accuracy_and_confidence
    from timm_bcos.eval.attribution import Normalised

    hub_folder = spec.startswith(("local-dir:", "hf-hub:"))  # such a spec names weights: always load them
    model = timm.create_model(spec, pretrained=args.pretrained or hub_folder).eval().to(device)
    cfg = model.pretrained_cfg
    data, loader, info = open_split(args, cfg)
    images = LazyImages(data, cfg["input_size"])  # grids and examples decode only the images they use
    t0 = time.perf_counter()
    scores, candidates = accuracy_and_confidence(Normalised(model).eval(), loader, device=device)
    results["accuracy"][name] = {"model": spec, **scores}
    print(f"{name}: top-1 {scores['top1']:.2f}%, top-5 {scores['top5']:.2f}% on {scores['n']} images "
          f"({time.perf_counter() - t0:.1f}s on {device})", flush=True)
    if (args.mask_column or args.boxes_column) and hasattr(model, "explain"):
        try:
            loc = results["localisation"][name] = localise(args, model, data, device)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        print(f"{name}: energy pointing game {loc['epg']['mean']:.3f}, IoU {loc['iou']['mean']:.3f} "
              f"({loc['epg']['n']} images)", flush=True)
    if not args.grid:
        return
    if args.examples and hasattr(model, "explain"):
        write_examples(model, images, candidates, args.examples, info.label_names,
                       Path(args.out) / f"examples_{slug(name)}.png")
    play_pointing_game(args, name, model, images, candidates, num_grids, results["pointing"])


def write_reports(args, results, argv) -> None:
    """OUT/results.md, OUT/results.json and the box plots."""
    from timm_bcos.eval import box_plot, markdown_table, summarise
    from timm_bcos.eval.attribution import METHOD_LABELS

    out = Path(args.out)
    lines = [f"# Evaluation on {args.dataset} ({args.split})", "", "## Accuracy", "",
             "| model | weights | top-1 | top-5 | images |", "|---|---|---:|---:|---:|"]
    for name, acc in results["accuracy"].items():
        lines.append(f"| {name} | `{acc['model']}` | {acc['top1']:.2f} | {acc['top5']:.2f} | {acc['n']} |")
    if results["localisation"]:
        lines += ["", f"## Localisation of the own explanation (label class) in `{args.mask_column or args.boxes_column}`",
                  "", "| model | energy pointing game | IoU | images |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {v['epg']['mean']:.3f} | {v['iou']['mean']:.3f} | {v['epg']['n']} |"
                  for name, v in results["localisation"].items()]
    for n, per_model in results["pointing"].items():
        if not per_model:
            continue
        lines += ["", f"## Grid pointing game, {n}x{n} (uniform attribution scores {1 / n / n:.3f})", "",
                  markdown_table(per_model, METHOD_LABELS)]
        box_plot(per_model, out / f"pointing_game_{n}x{n}.png", title=f"{n}x{n} grid pointing game",
                 labels=METHOD_LABELS, chance=1 / n / n)
    lines += ["", f"Command: `python train_scripts/evaluate.py {shlex.join(sys.argv[1:] if argv is None else argv)}`"]
    atomic_write(out / "results.md", "\n".join(lines) + "\n")
    summary = {"accuracy": results["accuracy"], "localisation": results["localisation"],
               "pointing_game": {f"{n}x{n}": {name: {m: summarise(s) for m, s in per.items()}
                                              for name, per in res.items()} for n, res in results["pointing"].items()}}
    atomic_write(out / "results.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'results.md'}", flush=True)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm_bcos  # noqa: F401
    from timm_bcos.cli.common import resolve_device

    num_grids = check_args(args)
    device = resolve_device(args.device)
    results = {"accuracy": {}, "localisation": {}, "pointing": {n: {} for n in args.grid}}
    for spec, name in zip(args.models, args.names or args.models):
        evaluate_model(args, spec, name, device, num_grids, results)
    write_reports(args, results, argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
