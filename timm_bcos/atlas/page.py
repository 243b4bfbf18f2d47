"""The atlas on disk: a PNG per kept image and explanation, a strip per neuron, index.json, and a static
index.html that opens from disk with no network (no scripts, no fonts, no outside requests)."""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .examples import Example
from .scan import AtlasError

FORMAT = "timm_bcos.atlas/1"

SHOWN_PX = 112  # height of each crop on the page and in the strips: CIFAR's 32 px crops shown at 3.5x
WHITE = np.array([255, 255, 255], dtype=np.float32)


def on_white(rgba: np.ndarray) -> np.ndarray:
    """An RGBA explanation composited on white, as the explorer and the PNG grids show it."""
    a = rgba[..., 3:].astype(np.float32) / 255
    return (rgba[..., :3] * a + WHITE * (1 - a)).round().astype(np.uint8)


def _scaled(array: np.ndarray, height: int = SHOWN_PX) -> Image.Image:
    img = Image.fromarray(array)
    width = max(1, round(img.width * height / img.height))
    return img.resize((width, height), Image.NEAREST if img.height < height else Image.BILINEAR)


def save_example(folder: Path, stem: str, example: Example, gap: int = 4) -> tuple[str, str, str]:
    """The crop and its explanation (at the input's resolution), and both side by side enlarged (the
    explorer's gallery), as PNGs under folder/crops; their paths relative to folder."""
    crops = folder / "crops"
    crops.mkdir(exist_ok=True)
    image, expl, pair = f"crops/{stem}.png", f"crops/{stem}_explanation.png", f"crops/{stem}_pair.png"
    Image.fromarray(example.image).save(folder / image)  # at the model's resolution: the page scales them
    Image.fromarray(on_white(example.explanation)).save(folder / expl)
    left, right = _scaled(example.image), _scaled(on_white(example.explanation))
    both = Image.new("RGB", (left.width + gap + right.width, SHOWN_PX), "white")
    both.paste(left, (0, 0))
    both.paste(right, (left.width + gap, 0))
    both.save(folder / pair)
    return image, expl, pair


def save_neuron_strip(path: Path, pairs: list[tuple[Path, Path]], gap: int = 4) -> None:
    """One PNG per neuron: its top images (upper row) above their explanations (lower row), from the
    saved crops (image file, explanation file) in rank order."""
    tops = [_scaled(np.asarray(Image.open(image).convert("RGB"))) for image, _ in pairs]
    bottoms = [_scaled(np.asarray(Image.open(expl).convert("RGB"))) for _, expl in pairs]
    width = sum(t.width for t in tops) + gap * (len(tops) - 1)
    strip = Image.new("RGB", (max(1, width), 2 * SHOWN_PX + gap), "white")
    x = 0
    for top, bottom in zip(tops, bottoms):
        strip.paste(top, (x, 0))
        strip.paste(bottom, (x, SHOWN_PX + gap))
        x += top.width + gap
    path.parent.mkdir(exist_ok=True)
    strip.save(path)


def explorer_image(view: np.ndarray, cfg: dict) -> np.ndarray:
    """The model's view [H, W, 3] padded (edge pixels repeated) so that timm's eval transform, which the
    explorer applies to what it opens (resize to floor(size / crop_pct), centre crop), gives the view
    back unchanged: a click in the Atlas tab explains the image the atlas explained. Only for the
    default centre crop of a square input; otherwise the view as it is."""
    h, w = view.shape[:2]
    crop_pct = cfg.get("crop_pct") or 0.875  # timm's default
    if cfg.get("crop_mode", "center") != "center" or h != w or crop_pct >= 1:
        return view
    side = math.floor(h / crop_pct)
    top = int(round((side - h) / 2.0))  # where torchvision's CenterCrop starts
    return np.pad(view, ((top, side - h - top), (top, side - w - top), (0, 0)), mode="edge")


def save_input(folder: Path, index: int, view: np.ndarray, cfg: dict) -> str:
    """The whole image as the model saw it, as the explorer opens it (`explorer_image`), once per index."""
    rel = f"images/{index}.png"
    if not (folder / rel).exists():
        (folder / "images").mkdir(exist_ok=True)
        Image.fromarray(explorer_image(view, cfg)).save(folder / rel)
    return rel


PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.neuron{border-top:1px solid #ccc;padding:.8em 0}.neuron h2{font-size:1.05em;margin:.2em 0}
.examples{display:flex;flex-wrap:wrap;gap:6px}.ex{margin:0;text-align:center;font-size:.75em}
.ex img{height:112px;image-rendering:pixelated;display:block}
.mix{display:flex;height:14px;width:420px;border:1px solid #999;margin:.3em 0}.mix span{display:block;height:100%}
.legend span{display:inline-block;margin-right:.8em;font-size:.8em}.sw{width:.8em;height:.8em;display:inline-block}
.meta{color:#555;font-size:.85em}"""


def _colour(cls: int) -> str:
    return PALETTE[cls % len(PALETTE)] if cls >= 0 else "#ddd"


def _mix_bar(mix: dict, of: int, names: list[str]) -> str:
    parts = [f'<span style="width:{100 * n / of:.1f}%;background:{_colour(int(c))}" '
             f'title="{html.escape(names[int(c)] if 0 <= int(c) < len(names) else str(c))}: {n}/{of}"></span>'
             for c, n in mix.items()]
    return f'<div class="mix">{"".join(parts)}</div>'


def _name(names: list[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else "-"


def neuron_title(n: dict) -> str:
    """"channel 17: 93% ship", or "channel 17" for a neuron without a class mix."""
    if n["specificity"] is None:
        return f"channel {n['channel']}"
    return f"channel {n['channel']}: {100 * n['specificity']:.0f}% {n['top_class_name']}"


def _neuron_html(n: dict, names: list[str], label_names: list[str]) -> str:
    e = html.escape
    figures = [
        f'<figure class="ex"><a href="{e(ex["image"])}"><img src="{e(ex["crop"])}" alt="image {ex["index"]}">'
        f'<img src="{e(ex["explanation"])}" alt="explanation of image {ex["index"]}"></a>'
        f'<figcaption>#{ex["rank"]} {ex["activation"]:.3g}<br>label {e(_name(label_names, ex["label"]))}'
        f'<br>pred {e(_name(names, ex["prediction"]))}</figcaption></figure>' for ex in n["examples"]]
    bars = ""
    if n["mix_source"]:  # the mix is counted in the model's classes, or in the labels where it has no head
        bars = (f'<div class="meta">by {n["mix_source"]}:</div>'
                + _mix_bar(n["mix"], n["mix_of"], names if n["mix_source"] == "prediction" else label_names))
    if n["label_mix"] and n["mix_source"] == "prediction":
        bars += f'<div class="meta">by label:</div>{_mix_bar(n["label_mix"], n["mix_of"], label_names)}'
    counted = f" by {n['mix_source']}" if n["mix_source"] else " (no class mix: no labels, no classifier)"
    return (f'<section class="neuron" id="channel-{n["channel"]}"><h2>{e(neuron_title(n))}</h2>'
            f'<div class="meta">{n["mix_of"]} most activating images{counted}; '
            f'max activation {n["max_activation"]:.4g}; <a href="{e(n["strip"])}">PNG</a></div>'
            f'{bars}<div class="examples">{"".join(figures)}</div></section>')


def read_atlas(folder: str | Path) -> dict:
    """The index of an atlas folder, with "folder" set to its absolute path."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise AtlasError(f"{folder} is not an atlas folder (no index.json); build one with python -m timm_bcos atlas")
    index = json.loads(path.read_text())
    if index.get("format") != FORMAT:
        raise AtlasError(f"{path}: format {index.get('format')!r}, expected {FORMAT!r}")
    return {**index, "folder": str(Path(folder).resolve())}


def write_page(folder: Path, index: dict) -> None:
    """index.json and index.html of an atlas folder."""
    (folder / "index.json").write_text(json.dumps(index, indent=1))
    names = index["class_names"]
    e = html.escape
    present = sorted({int(c) for n in index["neurons"] if n["mix_source"] == "prediction" for c in n["mix"]})
    legend = "".join(f'<span><i class="sw" style="background:{_colour(i)}"></i> {e(names[i])}</span>'
                     for i in present[:len(PALETTE)] if 0 <= i < len(names)) if len(present) <= len(PALETTE) else ""
    head = (f'<h1>Atlas of {e(index["layer"])} in {e(index["model"])}</h1>'
            f'<p class="meta">{index["images_scanned"]} images of {e(index["dataset"])} ({e(index["split"])}); '
            f'{len(index["neurons"])} of {index["channels"]} channels, ordered by {e(index["sort"])}. '
            f'Each neuron: its {index["top"]} most activating images, cropped to its receptive field, above the '
            f'explanation of the neuron at its most activated position (B-cos, Figs. 8 and 10 of the paper); '
            f'the bar is the class mix of its {index["mix"]} most activating images. '
            f'Built by <code>{e(index["command"])}</code>.</p><div class="legend">{legend}</div>')
    body = "".join(_neuron_html(n, names, index["label_names"]) for n in index["neurons"])
    (folder / "index.html").write_text(
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Atlas: {e(index["layer"])}</title>'
        f'<style>{STYLE}</style></head><body>{head}{body}</body></html>')
