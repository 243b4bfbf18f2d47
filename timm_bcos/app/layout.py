"""The explorer's Gradio layout and its launch on a local address."""
from __future__ import annotations

import os
from functools import partial

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from ..demo import SAMPLES  # noqa: E402
from . import callbacks as cb  # noqa: E402
from .engine import Explorer  # noqa: E402

MAX_UPLOAD = "100mb"  # larger uploads are refused by Gradio before they reach the model
INTRO = ("Upload, paste or photograph an image, or pick a sample. The model explains its top classes with "
         "its own dynamic linear map W(x) (B-cos networks, Böhle et al., CVPR 2022): the colour image shows "
         "the aligned weights where the contribution is positive, the map beside it the signed contributions, "
         "which add up to the logit minus the logit bias.")


def _controls(explorer: Explorer) -> dict:
    c = {}
    c["image"] = gr.Image(label="image", type="filepath", sources=["upload", "clipboard", "webcam"],
                          image_mode=None, elem_id="input-image", height=260)
    samples = sorted(str(p) for p in SAMPLES.glob("*.png"))
    gr.Examples(samples, inputs=c["image"], label="samples (CIFAR-10 test images)", examples_per_page=8,
                elem_id="samples")
    n = len(explorer.class_names)
    c["topk"] = gr.Slider(1, min(10, n), value=min(5, n), step=1, label="top-k classes")
    c["smooth"] = gr.Slider(0, 15, value=0, step=1, label="smoothing (opacity window, pixels)")
    c["percentile"] = gr.Slider(90, 100, value=99.5, step=0.1, label="colour scale (percentile)")
    with gr.Accordion("Delta: why class A rather than class B (Fig. 9)", open=False):
        choices = [(name, i) for i, name in enumerate(explorer.class_names)]
        c["a"] = gr.Dropdown(choices, value=0, label="class A")
        c["b"] = gr.Dropdown(choices, value=min(1, n - 1), label="class B")
        c["delta"] = gr.Button("explain A - B", elem_id="delta-button")
    with gr.Accordion("Neuron: what a unit of a B-cos layer responds to (Figs. 8, 10)", open=False):
        c["layer"] = gr.Dropdown(explorer.layers, value=explorer.layers[-1] if explorer.layers else None,
                                 label="layer")
        c["channel"] = gr.Number(-1, precision=0, label="channel (-1: most activated)")
        c["neuron"] = gr.Button("explain unit", elem_id="neuron-button")
    return c


def _results() -> dict:
    r = {}
    r["message"] = gr.Markdown(elem_id="message")
    with gr.Row():
        r["seen"] = gr.Image(label="what the model saw", interactive=False, elem_id="seen", height=260,
                               format="png",
                               buttons=["download", "fullscreen"])
        r["scores"] = gr.Label(label="predictions (sigmoid scores)", elem_id="predictions")
    r["target"] = gr.Radio([], label="explain class", elem_id="target")
    with gr.Row():
        r["explanation"] = gr.Image(label="explanation", interactive=False, elem_id="explanation", height=300,
                                    format="png", buttons=["download", "fullscreen"])
        r["contributions"] = gr.Image(label="contributions (blue -, red +)", interactive=False,
                                      elem_id="contributions", height=300, format="png",
                                      buttons=["download", "fullscreen"])
    r["numbers"] = gr.Markdown(elem_id="numbers")
    r["grid"] = gr.Button("PNG grid of this explanation", elem_id="grid-button")
    r["file"] = gr.File(label="download", elem_id="grid-file", visible=False)
    return r


def build_app(explorer: Explorer) -> gr.Blocks:
    """The page; its API endpoint `/analyse` takes an image and returns everything the page shows."""
    # delete_cache: uploads and result pictures older than an hour go, hourly
    with gr.Blocks(title="B-cos explorer", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(f"## B-cos explorer: {explorer.name}\n{INTRO}")
        state = gr.State(dict(cb.EMPTY))
        with gr.Row():
            with gr.Column(scale=1):
                c = _controls(explorer)
            with gr.Column(scale=2):
                r = _results()
        pics = [r["explanation"], r["contributions"], r["numbers"]]
        display = [c["smooth"], c["percentile"]]
        analysis = [r["message"], r["seen"], r["scores"], r["target"], *pics, state]
        analyse = partial(cb.analyse, explorer)
        inputs = [c["image"], c["topk"], *display]
        # preprocess=False: the callback reads the uploaded file itself, so any file gets a clear message
        c["image"].change(analyse, inputs, analysis, api_name="analyse", preprocess=False)
        c["topk"].release(analyse, inputs, analysis, api_name="analyse_topk", preprocess=False,
                          api_visibility="private")
        r["target"].input(partial(cb.pick_class, explorer), [r["target"], state, *display], [*pics, state],
                          api_name="pick_class")
        for i, s in enumerate(display):
            s.release(partial(cb.rerender, explorer), [state, *display], pics, api_name=f"rerender_{i}",
                      api_visibility="private")
        c["delta"].click(partial(cb.explain_delta, explorer), [state, c["a"], c["b"], *display],
                         [r["message"], *pics, state], api_name="delta")
        c["neuron"].click(partial(cb.explain_neuron, explorer), [state, c["layer"], c["channel"], *display],
                          [r["message"], *pics, state], api_name="neuron")
        r["grid"].click(partial(cb.png_grid, explorer), [state, c["smooth"]], r["file"], api_name="grid")
    return app


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """Serve the page on host:port (local only by default); requests queue and are answered in turn."""
    app = build_app(explorer)
    app.queue(default_concurrency_limit=1)
    return app.launch(server_name=host, server_port=port, allowed_paths=[str(SAMPLES)],
                      max_file_size=MAX_UPLOAD, footer_links=["api"], **kwargs)
