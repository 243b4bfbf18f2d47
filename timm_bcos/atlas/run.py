"""An atlas of one layer (what `python -m timm_bcos atlas` runs): which images drive each neuron most,
with their explanations (paper Figs. 8 and 10), written as a static page, PNGs and a JSON index.

`AtlasConfig` holds every option; the command line is derived from its fields."""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from ..utils.options import command_line, missing_required, option
from .scan import AtlasError, scan_layer
from .topk import ChannelTopK


@dataclass
class AtlasConfig:
    """`AtlasConfig(model="bcos_cifar10_w050_bnu", pretrained=True, layer="features.7.0", dataset=..., out=...)`."""

    model: str | None = option(None, "a bcos_* name, hf-hub:ORG/REPO or local-dir:PATH", required=True)
    pretrained: bool = option(False, "load the model's pretrained weights (always for hf-hub: and local-dir:)")
    checkpoint: str | None = option(None, "a .safetensors (or trusted .pth) state dict for the model")
    layer: str | None = option(None, "the layer whose channels are the neurons (a module name, e.g. features.7.0)",
                               required=True)
    dataset: str | None = option(None, "Hub data set id, local folder (labels optional), or webdataset tar shards "
                                 "(wds:FOLDER, always streamed)", required=True)
    split: str = option("validation", "the split scanned (default: %(default)s; slicing works, e.g. 'test[:2000]')")
    max_samples: int | None = option(None, "scan the first N images of the split", parse=int)
    streaming: bool = option(False, "read the split's parquet shards on demand (no download ahead)")
    image_column: str | None = option(None, "default: found automatically (image, img, ...)")
    label_column: str | None = option(None, "default: found automatically; none is needed")
    neurons: list = option(help="channels to show: all, or numbers and ranges (3 17 40-47) (%(default)s)", nargs="+",
                           factory=lambda: ["all"])
    top: int = option(7, "images shown and explained per neuron (%(default)s, as the paper's Fig. 10)")
    mix: int = option(30, "the class mix counts each neuron's MIX most activating images (%(default)s)")
    max_neurons: int | None = option(None, "show only the first N neurons in page order (default: all chosen)",
                                     parse=int)
    sort: str = option("specificity", "page order: specificity (most class-specific first) or channel",
                       choices=["specificity", "channel"])
    smooth: int = option(0, "opacity smoothing window of the explanations (pixels)")
    batch_size: int = option(64, "images per batch (%(default)s)")
    workers: int = option(2, "data loader workers (%(default)s)", "-j")
    device: str | None = option(None, "cpu, cuda, cuda:1, ... (default: cuda where present, else cpu)")
    threads: int | None = option(None, "torch CPU threads", parse=int)
    out: str | None = option(None, "output folder: index.html, index.json, neurons/*.png (strips), and the crops/ "
                             "and images/ the page shows", required=True)

    def __post_init__(self) -> None:
        missing = missing_required(type(self), vars(self))
        if missing:
            raise AtlasError(f"{missing[0]} is required")
        counts = {"--top": self.top, "--mix": self.mix, "--batch-size": self.batch_size,
                  "--max-neurons": 1 if self.max_neurons is None else self.max_neurons}
        for name, value in counts.items():
            if value < 1:
                raise AtlasError(f"{name} must be at least 1, got {value}")
        if self.workers < 0:
            raise AtlasError(f"--workers must be 0 or more, got {self.workers}")


def chosen_channels(spec: list, channels: int, layer: str) -> list[int]:
    """`--neurons` as channel numbers: "all", numbers, "A-B" ranges; out-of-range ones are an error."""
    picked: list[int] = []
    for item in (str(s) for s in spec):
        if item == "all":
            picked.extend(range(channels))
            continue
        try:
            lo, _, hi = item.partition("-")
            picked.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise AtlasError(f"--neurons takes all, channel numbers or ranges like 40-47; got {item!r}") from None
    bad = sorted({c for c in picked if not 0 <= c < channels})
    if bad:
        raise AtlasError(f"channel {bad[0]} is out of range: layer {layer!r} has {channels} channels (0-{channels - 1})")
    return list(dict.fromkeys(picked))


def summarise_neuron(tracker: ChannelTopK, channel: int, mix: int, class_names: list[str]) -> dict:
    """The class mix of a neuron's `mix` most activating images: by the model's prediction (no labeller
    needed), by the label for a model without head, and by label too where the data has labels. A
    headless model on unlabeled data has no class mix (specificity None)."""
    predictions, labels = tracker.columns["prediction"][channel, :mix], tracker.columns["label"][channel, :mix]
    source = "prediction" if (predictions >= 0).all() else "label" if (labels >= 0).all() else None
    counts = Counter((predictions if source == "prediction" else labels).tolist()) if source else Counter()
    top_class, top_count = counts.most_common(1)[0] if counts else (-1, 0)
    return {"channel": channel, "mix_of": len(predictions), "mix_source": source, "top_class": int(top_class),
            "top_class_name": class_names[top_class] if 0 <= top_class < len(class_names) else "",
            "specificity": top_count / len(predictions) if source else None,
            "mix": {int(c): n for c, n in counts.most_common()},
            "label_mix": {int(c): n for c, n in Counter(labels.tolist()).most_common()} if (labels >= 0).all() else None,
            "max_activation": float(tracker.values[channel, 0])}


def load_atlas_model(config: AtlasConfig) -> torch.nn.Module:
    """The model of --model / --pretrained / --checkpoint in eval mode on --device; a B-cos model only."""
    import timm

    from ..cli.common import load_checkpoint, resolve_device, unknown_model_message

    message = unknown_model_message(config.model, "bcos_*")
    if message:
        raise AtlasError(message)
    hub_folder = config.model.startswith(("local-dir:", "hf-hub:"))
    try:
        model = timm.create_model(config.model, pretrained=config.pretrained or hub_folder)
        if config.checkpoint:
            load_checkpoint(model, config.checkpoint)
    except (RuntimeError, OSError, ValueError) as e:  # missing or unfitting weights
        raise AtlasError(f"cannot load {config.model}: {e}") from None
    if not hasattr(model, "explain"):
        raise AtlasError(f"{config.model} is not a B-cos model (it has no explain()); expected a bcos_* model "
                         f"or one converted with timm_bcos.convert")
    return model.eval().to(resolve_device(config.device))


def class_names_of(model, info) -> tuple[list[str], list[str]]:
    """(names of the model's classes, names of the data's labels): each from its own source, so that a
    model shown a data set with other classes names neither with the other's list."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    n = int(getattr(model, "num_classes", 0) or 0)
    classes = list(names) if names and len(names) == n else None
    labels = list(info.label_names) if info.label_names else None
    if labels is None and classes is not None and info.num_classes == n:
        labels = classes  # the data's integer labels are the model's classes
    return classes or [str(i) for i in range(n)], labels or [str(i) for i in range(info.num_classes)]


def explain_neurons(config, model, data, tracker, neurons: list[dict], folder: Path, mean, std) -> None:
    """Pass 2: explain each neuron's top images at their positions, save them, and add them to `neurons`.
    Images are read in data-set order, so a streamed split reads each of its shards once."""
    from ..data.datasets import LazyImages
    from .examples import explain_examples
    from .page import save_example, save_input
    from .scan import progress

    images = LazyImages(data, model.pretrained_cfg["input_size"])
    slots = [(n, r) for n in neurons for r in range(min(config.top, tracker.values.shape[1]))]
    slots.sort(key=lambda slot: int(tracker.index[slot[0]["channel"], slot[1]]))
    step = config.batch_size
    for start in progress(range(0, len(slots), step), -(-len(slots) // step), "explaining"):
        batch = slots[start:start + step]
        idx = torch.stack([tracker.index[n["channel"], r] for n, r in batch])
        x = images[idx]
        examples = explain_examples(model, config.layer, x, torch.tensor([n["channel"] for n, _ in batch]),
                                    torch.stack([tracker.positions[n["channel"], r] for n, r in batch]),
                                    mean=mean, std=std, smooth=config.smooth)
        pixels = (x.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        for (n, r), ex, i, view in zip(batch, examples, idx.tolist(), pixels):
            c = n["channel"]
            crop, expl, pair = save_example(folder, f"c{c}_{r + 1}", ex)
            n.setdefault("examples", []).append({
                "rank": r + 1, "index": i, "activation": float(tracker.values[c, r]), "explained": ex.explained,
                "position": tracker.positions[c, r].tolist(), "label": int(tracker.columns["label"][c, r]),
                "prediction": int(tracker.columns["prediction"][c, r]), "box": list(ex.box), "crop": crop,
                "explanation": expl, "pair": pair, "image": save_input(folder, i, view, model.pretrained_cfg)})


def write_strips(folder: Path, neurons: list[dict]) -> None:
    """Each neuron's examples in rank order, and its PNG strip (read back from the saved crops)."""
    from .page import save_neuron_strip

    for n in neurons:
        n["examples"].sort(key=lambda e: e["rank"])
        n["strip"] = f"neurons/channel_{n['channel']}.png"
        save_neuron_strip(folder / n["strip"], [(folder / e["crop"], folder / e["explanation"]) for e in n["examples"]])


def build_atlas(config: AtlasConfig) -> dict:
    """Scan, explain, write: returns the index (as written to OUT/index.json). The folder is written
    beside OUT and swapped in when complete, so OUT is never half-written."""
    from ..eval.attribution import Normalised
    from ..eval.run import EvalError, open_split
    from ..utils.atomic import atomic_folder
    from .page import FORMAT, write_page

    out = Path(config.out)
    if out.exists() and not (out / "index.json").is_file():
        raise AtlasError(f"{out} exists and is not an atlas folder (no index.json); give a new or an atlas folder")
    if config.threads:
        torch.set_num_threads(config.threads)
    model = load_atlas_model(config)
    norm = Normalised(model)
    try:
        data, loader, info = open_split(config, model.pretrained_cfg, require_labels=False)
    except EvalError as e:
        raise AtlasError(str(e)) from None
    t0 = time.perf_counter()
    tracker = scan_layer(model, config.layer, loader, max(config.top, config.mix), mean=norm.mean, std=norm.std,
                         total=len(loader), check_channels=lambda c: chosen_channels(config.neurons, c, config.layer))
    names, label_names = class_names_of(model, info)
    neurons = [summarise_neuron(tracker, c, config.mix, names)
               for c in chosen_channels(config.neurons, tracker.channels, config.layer)]
    if config.sort == "specificity":  # (no class mix: by activation)
        neurons.sort(key=lambda n: (-(n["specificity"] or 0), -n["max_activation"]))
    neurons = neurons[:config.max_neurons]
    with atomic_folder(out) as work:
        explain_neurons(config, model, data, tracker, neurons, work, norm.mean, norm.std)
        write_strips(work, neurons)
        index = {"format": FORMAT, "model": config.model, "layer": config.layer, "channels": tracker.channels,
                 "dataset": config.dataset, "split": config.split, "images_scanned": tracker.seen, "top": config.top,
                 "mix": config.mix, "sort": config.sort, "class_names": names, "label_names": label_names,
                 "seconds": round(time.perf_counter() - t0, 1), "command": command_line(config, "python -m timm_bcos atlas"),
                 "neurons": neurons}
        write_page(work, index)
    return index
