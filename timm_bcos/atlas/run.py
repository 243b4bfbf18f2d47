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
    split: str = option("validation", "the split scanned (%(default)s; slicing works)")
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
    out: str | None = option(None, "output folder: index.html, index.json, neurons/*.png", required=True)

    def __post_init__(self) -> None:
        missing = missing_required(type(self), vars(self))
        if missing:
            raise AtlasError(f"{missing[0]} is required")
        if min(self.top, self.mix, self.max_neurons or 1) < 1:
            raise AtlasError(f"--top, --mix and --max-neurons must be at least 1, got {self.top}, {self.mix} "
                             f"and {self.max_neurons}")


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
    needed; by the label for a model without head) and, where the data has them, by label."""
    source = "prediction" if (tracker.columns["prediction"][channel] >= 0).all() else "label"
    kept = torch.isfinite(tracker.values[channel, :mix])
    counts = Counter(tracker.columns[source][channel, :mix][kept].tolist())
    labels = tracker.columns["label"][channel, :mix][kept]
    top_class, top_count = counts.most_common(1)[0] if counts else (-1, 0)
    name = class_names[top_class] if 0 <= top_class < len(class_names) else str(top_class)
    return {"channel": channel, "mix_of": int(kept.sum()), "mix_source": source, "top_class": int(top_class),
            "top_class_name": name, "specificity": top_count / max(1, int(kept.sum())),
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
    model = timm.create_model(config.model, pretrained=config.pretrained or hub_folder)
    if config.checkpoint:
        load_checkpoint(model, config.checkpoint)
    if not hasattr(model, "explain"):
        raise AtlasError(f"{config.model} is not a B-cos model (it has no explain()); expected a bcos_* model "
                         f"or one converted with timm_bcos.convert")
    return model.eval().to(resolve_device(config.device))


def class_names_of(model, info) -> list[str]:
    names = (getattr(model, "pretrained_cfg", None) or {}).get("label_names")
    n = int(getattr(model, "num_classes", 0) or 0)
    if names and len(names) == n:
        return list(names)
    if info.label_names:
        return list(info.label_names)
    return [str(i) for i in range(max(n, info.num_classes))]


def explain_neurons(config, model, data, tracker, neurons: list[dict], folder: Path, mean, std) -> None:
    """Pass 2: explain each neuron's top images at their positions, save them, and add them to `neurons`."""
    from ..data.datasets import LazyImages
    from .examples import explain_examples
    from .page import save_example, save_input, save_neuron_strip
    from .scan import progress

    images = LazyImages(data, model.pretrained_cfg["input_size"])
    per_chunk = max(1, config.batch_size // config.top)  # neurons explained together in one batch
    for start in progress(range(0, len(neurons), per_chunk), -(-len(neurons) // per_chunk), "explaining"):
        chunk = neurons[start:start + per_chunk]
        slots = [(n, r) for n in chunk for r in range(min(config.top, n["mix_of"]))]
        idx = torch.stack([tracker.index[n["channel"], r] for n, r in slots])
        x = images[idx]
        examples = explain_examples(model, config.layer, x, torch.tensor([n["channel"] for n, _ in slots]),
                                    torch.stack([tracker.positions[n["channel"], r] for n, r in slots]),
                                    mean=mean, std=std, smooth=config.smooth, batch_size=config.batch_size)
        seen = (x.clamp(0, 1).permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()
        for (n, r), ex, i, img in zip(slots, examples, idx.tolist(), seen):
            c = n["channel"]
            crop, expl, pair = save_example(folder, f"c{c}_{r + 1}", ex)
            n.setdefault("examples", []).append({
                "rank": r + 1, "index": i, "activation": float(tracker.values[c, r]), "explained": ex.explained,
                "position": tracker.positions[c, r].tolist(), "label": int(tracker.columns["label"][c, r]),
                "prediction": int(tracker.columns["prediction"][c, r]), "box": list(ex.box), "crop": crop,
                "explanation": expl, "pair": pair, "image": save_input(folder, i, img)})
        for n in chunk:
            n["strip"] = f"neurons/channel_{n['channel']}.png"
            save_neuron_strip(folder / n["strip"], [e for (m, _), e in zip(slots, examples) if m is n])


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
                         total=len(loader))
    names = class_names_of(model, info)
    neurons = [summarise_neuron(tracker, c, config.mix, names)
               for c in chosen_channels(config.neurons, tracker.channels, config.layer)]
    if config.sort == "specificity":
        neurons.sort(key=lambda n: (-n["specificity"], -n["max_activation"]))
    neurons = neurons[:config.max_neurons]
    with atomic_folder(out) as work:
        explain_neurons(config, model, data, tracker, neurons, work, norm.mean, norm.std)
        index = {"format": FORMAT, "model": config.model, "layer": config.layer, "channels": tracker.channels,
                 "dataset": config.dataset, "split": config.split, "images_scanned": tracker.seen, "top": config.top,
                 "mix": config.mix, "sort": config.sort, "class_names": names,
                 "seconds": round(time.perf_counter() - t0, 1), "command": command_line(config, "python -m timm_bcos atlas"),
                 "neurons": neurons}
        write_page(work, index)
    return index
