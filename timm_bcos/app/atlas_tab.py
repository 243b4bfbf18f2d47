"""The explorer's Atlas tab: browse the atlases written by `python -m timm_bcos atlas` (a layer's neurons,
each with its most activating images and their explanations); a click on an image opens it in the
Explain tab, with the neuron's layer and channel set for "explain unit"."""
from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from ..atlas.page import neuron_title, read_atlas  # noqa: E402

NO_ATLAS = ("No atlas loaded. Build one with `python -m timm_bcos atlas --model ... --layer ... --dataset ... "
            "--out DIR` and start the explorer with `--atlas DIR`.")


def load_atlases(folders: list[str]) -> dict[str, dict]:
    """{label: index} of atlas folders; the label is the layer (and the folder, where layers repeat)."""
    atlases: dict[str, dict] = {}
    for folder in folders:
        index = read_atlas(folder)
        label, k = index["layer"], 1
        while label in atlases:
            k += 1
            label = f"{index['layer']} ({Path(folder).name}{'' if k == 2 else f', {k}'})"
        atlases[label] = index
    return atlases


def atlas_file(index: dict, relative: str) -> str:
    """A file named by an atlas index, refused when the name leads out of the atlas folder."""
    folder = Path(index["folder"]).resolve()
    path = (folder / relative).resolve()
    if folder not in path.parents:
        raise ValueError(f"{relative!r} is outside the atlas folder {folder}")
    return str(path)


def neuron_choices(index: dict) -> list[tuple[str, int]]:
    return [(neuron_title(n), n["channel"]) for n in index["neurons"]]


def _neuron(index: dict, channel) -> dict | None:
    return next((n for n in index["neurons"] if n["channel"] == channel), None)


def neuron_view(atlases: dict, label: str | None, channel) -> tuple[str, list]:
    """The summary line and the gallery (image | explanation pairs, captioned) of one neuron."""
    index = atlases.get(label or "")
    n = _neuron(index, channel) if index else None
    if n is None:
        return (NO_ATLAS if not atlases else "Pick a neuron."), []
    names = index["class_names"] if n["mix_source"] == "prediction" else index.get("label_names") or []
    mix = ", ".join(f"{names[int(c)] if 0 <= int(c) < len(names) else c} {k}" for c, k in n["mix"].items())
    counted = (f"{100 * n['specificity']:.0f}% {n['top_class_name']} among its {n['mix_of']} most activating of "
               f"{index['images_scanned']} images ({n['mix_source']}s: {mix})" if n["mix_source"] else
               f"its {n['mix_of']} most activating of {index['images_scanned']} images (no class mix)")
    text = (f"**{index['layer']} channel {n['channel']}**: {counted}. "
            f"Click an image to explain it in the Explain tab.")
    items = [(atlas_file(index, e["pair"]), f"#{e['rank']} activation {e['activation']:.3g}") for e in n["examples"]]
    return text, items


def build_atlas_tab(atlases: dict, explain_controls: dict, tabs: gr.Tabs) -> None:
    """The tab's components and events; opening an image sets the Explain tab's image, layer and channel
    (the explorer offers every atlas layer for neuron explanations: `Explorer.add_layers`)."""
    first = next(iter(atlases), None)
    choices = neuron_choices(atlases[first]) if first else []
    start = choices[0][1] if choices else None
    with gr.Tab("Atlas", id="atlas", elem_id="atlas-tab"):
        layer = gr.Dropdown(list(atlases), value=first, label="atlas (layer)", elem_id="atlas-layer")
        neuron = gr.Dropdown(choices, value=start, label="neuron (most class-specific first)",
                             elem_id="atlas-neuron")
        text, items = neuron_view(atlases, first, start)
        summary = gr.Markdown(text, elem_id="atlas-summary")
        gallery = gr.Gallery(items, label="most activating images | their explanations", columns=4, format="png",
                             object_fit="contain", height="auto",
                             allow_preview=False, elem_id="atlas-gallery")

    def pick_layer(label):  # the view too: the new first neuron may have the old one's number
        options = neuron_choices(atlases[label]) if label in atlases else []
        first_channel = options[0][1] if options else None
        return (gr.update(choices=options, value=first_channel), *neuron_view(atlases, label, first_channel))

    def open_example(label, channel, evt: gr.SelectData):
        index = atlases.get(label or "")
        n = _neuron(index, channel) if index else None
        if n is None or not 0 <= evt.index < len(n["examples"]):
            return gr.skip(), gr.skip(), gr.skip(), gr.skip()
        image = atlas_file(index, n["examples"][evt.index]["image"])
        return image, gr.update(value=index["layer"]), channel, gr.Tabs(selected="explain")

    layer.change(pick_layer, layer, [neuron, summary, gallery], api_visibility="private")
    neuron.change(lambda label, c: neuron_view(atlases, label, c), [layer, neuron], [summary, gallery],
                  api_visibility="private")
    gallery.select(open_example, [layer, neuron], [explain_controls["image"], explain_controls["layer"],
                                                  explain_controls["channel"], tabs], api_visibility="private")
