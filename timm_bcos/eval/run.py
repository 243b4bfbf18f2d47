"""An evaluation run over several models (what train_scripts/evaluate.py does): top-1/top-5 accuracy,
localisation of the own explanations against masks or boxes, and the grid pointing game (paper Sec. 4)
for every attribution method, written as OUT/results.md, OUT/results.json and box plots.

`EvalConfig` holds every option; evaluate.py's command line is derived from its fields."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.options import missing_required, option

DEFAULT_METHODS = ["own", "grad", "ixg", "ig", "deeplift", "gradcam"]


class EvalError(ValueError):
    """Options that do not go together, an unknown model or method, or data that cannot be used."""


@dataclass
class EvalConfig:
    """`EvalConfig(models=["bcos_cifar10_w050_bnu"], dataset="uoft-cs/cifar10", split="test", pretrained=True)`."""

    models: list | None = option(None, "timm names or local-dir:/hf-hub: folders", nargs="+", required=True)
    names: list | None = option(None, "display names, one per model", nargs="+")
    pretrained: bool = option(False, "load the models' pretrained weights")
    dataset: str | None = option(None, "Hub data set id, local folder, or webdataset tar shards "
                                 "(wds:FOLDER or 'wds:PATH/{split}-{0000..0099}.tar', always streamed)", required=True)
    split: str = option("validation", "the split evaluated (%(default)s)")
    max_samples: int | None = option(None, "evaluate on the first N images of the split", parse=int)
    streaming: bool = option(False, "read the split's parquet shards on demand (Hub id or local folder): no download "
                             "ahead, no Arrow cache")
    image_column: str | None = option(None, "default: found automatically (image, img, ...)")
    label_column: str | None = option(None, "default: found automatically (label, labels, ...)")
    mask_column: str | None = option(None, "B-cos models: energy pointing game and IoU of the own explanation of each "
                                     "image's label against this mask column (white: where the evidence is)")
    boxes_column: str | None = option(None, "as --mask-column, with boxes [[x0, y0, x1, y1], ...] in pixels")
    box_dilation: int = option(0, "grow each box by this many pixels (%(default)s)")
    iou_threshold: float = option(0.5, "IoU: pixels with at least this share of the maximum positive contribution "
                                  "(%(default)s)")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda where present, else cpu)")
    workers: int = option(2, "data loader workers (%(default)s)", "-j")
    grid: list = option(help="grid sizes n (n x n); none: skip", parse=int, nargs="*", factory=lambda: [2, 3])
    methods: list = option(help="attribution methods (%(default)s)", nargs="+", factory=lambda: list(DEFAULT_METHODS))
    num_grids: list = option(help="grids per size: one number, or one per --grid size (%(default)s)", parse=int,
                             nargs="+", factory=lambda: [100])
    pool: int | None = option(None, "draw each cell from the POOL most confident images of its class (default: all)",
                              parse=int)
    smooth: int | None = option(None, "smoothing window: default 3 for images up to 64 px, 15 above (the paper's)",
                                parse=int)
    examples: int = option(8, "B-cos models: write OUT/examples_<name>.png explaining this many test images for their "
                           "class (like the paper's Fig. 4); 0: none")
    batch_size: int = option(64, "images per batch (%(default)s)")
    seed: int = option(0, "seed of the grids (%(default)s)")
    threads: int | None = option(None, "torch CPU threads", parse=int)
    probe: list = option(help="backbone quality without the head: knn (weighted 20-NN on cosine similarity) and/or "
                         "linear (logistic regression, L-BFGS), fitted on the frozen pooled features of "
                         "--probe-train-split, scored on --split", nargs="*", choices=["knn", "linear"], factory=list)
    probe_train_split: str = option("train", "the split the probes are fitted on (%(default)s; slicing works)")
    probe_max_samples: int | None = option(None, "fit the probes on the first N images of --probe-train-split",
                                           parse=int)
    knn_k: int = option(20, "neighbours of the k-NN probe (%(default)s)")
    metrics: list = option(help="Quantus metrics of each --methods' maps (the metrics extra): pixel_flipping, "
                           "random_logit, mprt, sparseness; on the first --metrics-images images of the split, for "
                           "the class the model predicts, with 95%% bootstrap intervals", nargs="*", factory=list)
    metrics_images: int = option(64, "images the --metrics are measured on (%(default)s)")
    out: str = option("reports/eval", "output folder (%(default)s)")

    def __post_init__(self) -> None:
        missing = missing_required(type(self), vars(self))
        if missing:
            raise EvalError(f"{missing[0]} is required")


def atomic_write(path: Path, text: str) -> None:
    from ..utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(text)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_").lower()


def write_examples(model, images, candidates, count, class_names, path: Path) -> None:
    """The most confidently and correctly classified image of each class, explained for its class."""
    from .attribution import model_device
    from ..explain.render import save_explanation_grid

    picked = [(idx[0], c) for c, idx in sorted(candidates.items()) if idx][:count]
    if not picked:
        return
    x = images[[i for i, _ in picked]]
    device = model_device(model)
    expl = model.explain(x.to(device), target=torch.tensor([c for _, c in picked], device=device)).to("cpu")
    save_explanation_grid(path, x, expl, class_names=class_names)


def localise(config, model, data, device) -> dict:
    """EPG and IoU of the model's own explanations against the split's masks or boxes."""
    from .localisation import localisation_scores
    from .report import summarise
    from ..guidance import AnnotatedImageDataset, collate_annotated

    annotated = AnnotatedImageDataset(data.data, data.info, data.transform, mask_column=config.mask_column,
                                      boxes_column=config.boxes_column, dilation=config.box_dilation)
    loader = torch.utils.data.DataLoader(annotated, batch_size=config.batch_size, num_workers=config.workers,
                                         collate_fn=collate_annotated)
    scores = localisation_scores(model, loader, device=device, threshold=config.iou_threshold)
    return {k: summarise(v) for k, v in scores.items()}


def open_split(config, cfg: dict, require_labels: bool = True):
    """The split at the model's eval size, decoded lazily: (data set, loader, info). `config` names the
    data (dataset, split, streaming, max_samples, image/label_column, batch_size, workers)."""
    from ..data.datasets import DataError, IndexedSamples, collate_indexed, load_eval_dataset
    from ..data.streaming import load_eval_stream

    load = load_eval_stream if config.streaming or config.dataset.startswith("wds:") else load_eval_dataset
    try:
        data, info = load(config.dataset, config.split, input_size=cfg["input_size"], crop_pct=cfg.get("crop_pct", 1.0),
                          interpolation=cfg.get("interpolation", "bilinear"), max_samples=config.max_samples,
                          image_column=config.image_column, label_column=config.label_column,
                          require_labels=require_labels)
    except DataError as e:
        raise EvalError(str(e)) from None
    loader = torch.utils.data.DataLoader(IndexedSamples(data), batch_size=config.batch_size, num_workers=config.workers,
                                         collate_fn=collate_indexed)
    return data, loader, info


def check_config(config: EvalConfig) -> dict[int, int]:
    """EvalError with a clear message for inconsistent options; returns {grid size: number of grids}."""
    from ..cli.common import unknown_model_message
    from .attribution import ATTRIBUTION_METHODS

    if config.names and len(config.names) != len(config.models):
        raise EvalError(f"{len(config.names)} --names for {len(config.models)} --models")
    unknown = [m for m in config.methods if m not in ATTRIBUTION_METHODS]
    if unknown:
        raise EvalError(f"unknown methods {unknown}; expected some of {sorted(ATTRIBUTION_METHODS)}")
    for spec in config.models:
        message = unknown_model_message(spec, cutoff=0.6)
        if message:
            raise EvalError(message)
    from .quantus_metrics import METRICS

    unknown = [m for m in config.metrics if m not in METRICS]
    if unknown:
        raise EvalError(f"unknown --metrics {unknown}; expected some of {sorted(METRICS)}")
    if config.knn_k < 1:
        raise EvalError(f"--knn-k must be at least 1, got {config.knn_k}")
    if (config.streaming or config.dataset.startswith("wds:")) and (config.mask_column or config.boxes_column):
        raise EvalError("--mask-column / --boxes-column read the map-style data set: drop --streaming "
                        "(a wds: data set is always streamed)")
    if len(config.num_grids) not in (1, len(config.grid)):
        raise EvalError(f"--num-grids takes one number or one per --grid size ({len(config.grid)})")
    per_size = config.num_grids * len(config.grid) if len(config.num_grids) == 1 else config.num_grids
    return dict(zip(config.grid, per_size))


def play_pointing_game(config, name, model, images, candidates, num_grids, pointing) -> None:
    """The grid pointing game of one model for every --grid size, into pointing[n][name]."""
    from .pointing_game import build_grids, grid_pointing_game
    from .attribution import METHOD_LABELS

    methods = [m for m in config.methods if m != "own" or hasattr(model, "explain")]
    smooth = config.smooth if config.smooth is not None else (3 if images.shape[-1] <= 64 else 15)
    for n in config.grid:
        try:
            grids = build_grids(images, candidates, n, num_grids[n], pool=config.pool, seed=config.seed)
        except ValueError as e:
            print(f"{name}: no {n}x{n} pointing game: {e}", flush=True)
            continue
        t0 = time.perf_counter()
        pointing[n][name] = grid_pointing_game(model, grids, methods, smooth=smooth, batch_size=config.batch_size)
        means = ", ".join(f"{METHOD_LABELS.get(m, m)} {float(s.mean()):.3f}" for m, s in pointing[n][name].items())
        print(f"{name} {n}x{n} pointing game ({len(grids.images)} grids, smoothing {smooth}, "
              f"{time.perf_counter() - t0:.0f}s): {means}", flush=True)


def evaluate_model(config, spec, name, device, num_grids, results) -> None:
    """Accuracy, localisation and the pointing game of one model, into `results`."""
    import timm

    from ..data.datasets import LazyImages
    from .accuracy import accuracy_and_confidence
    from .attribution import Normalised

    hub_folder = spec.startswith(("local-dir:", "hf-hub:"))  # such a spec names weights: always load them
    model = timm.create_model(spec, pretrained=config.pretrained or hub_folder).eval().to(device)
    cfg = model.pretrained_cfg
    data, loader, info = open_split(config, cfg)
    if not getattr(model, "num_classes", 1):  # a feature extractor (a headless aligned backbone): probes only
        if not config.probe:
            raise EvalError(f"{spec} has no classifier (num_classes=0): evaluate its features with --probe knn linear")
        results["probe"][name] = run_probes(config, model, cfg, loader, device)
        return
    images = LazyImages(data, cfg["input_size"])  # grids and examples decode only the images they use
    t0 = time.perf_counter()
    scores, candidates = accuracy_and_confidence(Normalised(model).eval(), loader, device=device)
    results["accuracy"][name] = {"model": spec, **scores}
    print(f"{name}: top-1 {scores['top1']:.2f}%, top-5 {scores['top5']:.2f}% on {scores['n']} images "
          f"({time.perf_counter() - t0:.1f}s on {device})", flush=True)
    if config.probe:
        results["probe"][name] = run_probes(config, model, cfg, loader, device)
    if (config.mask_column or config.boxes_column) and hasattr(model, "explain"):
        try:
            loc = results["localisation"][name] = localise(config, model, data, device)
        except ValueError as e:
            raise EvalError(str(e)) from None
        print(f"{name}: energy pointing game {loc['epg']['mean']:.3f}, IoU {loc['iou']['mean']:.3f} "
              f"({loc['epg']['n']} images)", flush=True)
    if config.metrics:
        results["metrics"][name] = measure_metrics(config, model, images, device)
    if not config.grid:
        return
    if config.examples and hasattr(model, "explain"):
        write_examples(model, images, candidates, config.examples, info.label_names,
                       Path(config.out) / f"examples_{slug(name)}.png")
    play_pointing_game(config, name, model, images, candidates, num_grids, results["pointing"])


def measure_metrics(config, model, images, device) -> dict:
    """{method: {metric: {"mean", "ci95", "n", "better"}}} on the split's first --metrics-images images, for the
    classes the model predicts (Quantus, timm_bcos.eval.quantus_metrics)."""
    from .attribution import METHOD_LABELS, Normalised
    from .quantus_metrics import quantus_scores

    x = images[list(range(min(config.metrics_images, len(images))))].to(device)
    with torch.no_grad():
        targets = Normalised(model).eval()(x).argmax(1)
    out = {}
    for method in (m for m in config.methods if m != "own" or hasattr(model, "explain")):
        t0 = time.perf_counter()
        out[method] = quantus_scores(model, x, targets, method=method, metrics=config.metrics)
        print(f"{METHOD_LABELS.get(method, method)} metrics ({len(x)} images, {time.perf_counter() - t0:.0f}s): "
              + ", ".join(f"{k} {v['mean']:.3f}" for k, v in out[method].items()), flush=True)
    return out


def run_probes(config, model, cfg, test_loader, device) -> dict:
    """k-NN and linear-probe top-1 of the frozen features (fitted on --probe-train-split)."""
    from dataclasses import replace

    from .probe import extract_features, knn_accuracy, linear_probe_accuracy

    t0 = time.perf_counter()
    _, train_loader, _ = open_split(replace(config, split=config.probe_train_split,
                                            max_samples=config.probe_max_samples), cfg)
    train, train_labels = extract_features(model, train_loader, device)
    test, test_labels = extract_features(model, test_loader, device)
    scores = {"n_train": len(train_labels), "n": len(test_labels), "dim": train.shape[1]}
    if "knn" in config.probe:
        scores["knn"] = knn_accuracy(train, train_labels, test, test_labels, k=config.knn_k)
    if "linear" in config.probe:
        scores["linear"] = linear_probe_accuracy(train, train_labels, test, test_labels)
    print(f"probes ({len(train_labels)} train / {len(test_labels)} test images, {train.shape[1]} features, "
          f"{time.perf_counter() - t0:.0f}s): " + ", ".join(f"{k} {scores[k]:.2f}%" for k in config.probe), flush=True)
    return scores


def write_reports(config, results, command: str) -> None:
    """OUT/results.md, OUT/results.json and the box plots."""
    from .report import box_plot, markdown_table, summarise
    from .attribution import METHOD_LABELS

    out = Path(config.out)
    lines = [f"# Evaluation on {config.dataset} ({config.split})", "", "## Accuracy", "",
             "| model | weights | top-1 | top-5 | images |", "|---|---|---:|---:|---:|"]
    for name, acc in results["accuracy"].items():
        lines.append(f"| {name} | `{acc['model']}` | {acc['top1']:.2f} | {acc['top5']:.2f} | {acc['n']} |")
    if results.get("probe"):
        lines += ["", f"## Probes of the frozen features (fitted on {config.probe_train_split})", "",
                  "| model | k-NN top-1 | linear top-1 | features | train / test images |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {name} | {p.get('knn', float('nan')):.2f} | {p.get('linear', float('nan')):.2f} | {p['dim']} | "
                  f"{p['n_train']} / {p['n']} |" for name, p in results["probe"].items()]
    if results["localisation"]:
        lines += ["", f"## Localisation of the own explanation (label class) in `{config.mask_column or config.boxes_column}`",
                  "", "| model | energy pointing game | IoU | images |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {v['epg']['mean']:.3f} | {v['iou']['mean']:.3f} | {v['epg']['n']} |"
                  for name, v in results["localisation"].items()]
    lines += _metrics_lines(results["metrics"], METHOD_LABELS)
    for n, per_model in results["pointing"].items():
        if not per_model:
            continue
        lines += ["", f"## Grid pointing game, {n}x{n} (uniform attribution scores {1 / n / n:.3f})", "",
                  markdown_table(per_model, METHOD_LABELS)]
        box_plot(per_model, out / f"pointing_game_{n}x{n}.png", title=f"{n}x{n} grid pointing game",
                 labels=METHOD_LABELS, chance=1 / n / n)
    if command:
        lines += ["", f"Command: `{command}`"]
    atomic_write(out / "results.md", "\n".join(lines) + "\n")
    summary = {"accuracy": results["accuracy"], "probe": results["probe"], "localisation": results["localisation"],
               "metrics": results["metrics"],
               "pointing_game": {f"{n}x{n}": {name: {m: summarise(s) for m, s in per.items()}
                                              for name, per in res.items()} for n, res in results["pointing"].items()}}
    atomic_write(out / "results.json", json.dumps(summary, indent=1))
    print(f"wrote {out / 'results.md'}", flush=True)


def _metrics_lines(metrics: dict, labels: dict) -> list[str]:
    """results.md's section of Quantus metrics: mean [95% interval] per model and method."""
    lines = []
    for name, per_method in metrics.items():
        first = next(iter(per_method.values()))
        names = list(first)
        lines += ["", f"## Explanation metrics (Quantus), {name}: {first[names[0]]['n']} images, their predicted class",
                  "", "| method | " + " | ".join(f"{m} ({first[m]['better']} is better)" for m in names) + " |",
                  "|---|" + "---:|" * len(names)]
        for method, scores in per_method.items():
            cells = (f"{scores[m]['mean']:.3f} [{scores[m]['ci95'][0]:.3f}, {scores[m]['ci95'][1]:.3f}]" for m in names)
            lines.append(f"| {labels.get(method, method)} | " + " | ".join(cells) + " |")
    return lines


def evaluate_models(config: EvalConfig, command: str = "") -> dict:
    """Evaluate every model of `config` and write the reports; returns the results. `command` is quoted in
    results.md (none by default)."""
    from ..cli.common import resolve_device

    if config.threads:
        torch.set_num_threads(config.threads)
    num_grids = check_config(config)
    device = resolve_device(config.device)
    results = {"accuracy": {}, "probe": {}, "localisation": {}, "metrics": {}, "pointing": {n: {} for n in config.grid}}
    for spec, name in zip(config.models, config.names or config.models):
        evaluate_model(config, spec, name, device, num_grids, results)
    write_reports(config, results, command)
    return results
