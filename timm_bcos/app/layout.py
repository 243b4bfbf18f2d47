"""The explorer's Gradio layout and its launch on a local address."""
from __future__ import annotations

import ctypes
import os
import threading
import time
from functools import partial

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from ..cli.demo import SAMPLES  # noqa: E402
from . import callbacks as cb  # noqa: E402
from .atlas_tab import build_atlas_tab  # noqa: E402
from .engine import Explorer  # noqa: E402

MAX_UPLOAD = "100mb"  # larger uploads are refused by Gradio before they reach the model
# Bounds under load: each event's callback runs one request at a time (the model is shared: engine.py
# locks it; the 2-core CPU gains nothing from more), at most MAX_QUEUE requests wait (more are refused
# with "Queue is full"), and at most MAX_SESSIONS sessions keep their state (the explained image: weights
# and contributions of the top 5, ~0.2 MB at 32x32, ~9 MB at 224x224); the least recently used goes first.
MAX_QUEUE = 64
MAX_SESSIONS = 256
TRIM_EVERY_S = 10.0  # see _bound_the_heap
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
        c["a"] = gr.Dropdown(choices, value=0, label="class A", elem_id="delta-a")  # then the image's top two
        c["b"] = gr.Dropdown(choices, value=min(1, n - 1), label="class B", elem_id="delta-b")
        c["delta"] = gr.Button("explain A - B", elem_id="delta-button")
    with gr.Accordion("Neuron: what a unit of a B-cos layer responds to (Figs. 8, 10)", open=False):
        c["layer"] = gr.Dropdown(explorer.layers, value=explorer.layers[-1] if explorer.layers else None,
                                 label="layer")
        c["channel"] = gr.Number(-1, precision=0, label="channel (-1: most activated)", elem_id="neuron-channel")
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


def build_app(explorer: Explorer, atlases: dict | None = None) -> gr.Blocks:
    """The page; its API endpoint `/analyse` takes an image and returns everything the page shows.
    `atlases` ({label: index}, atlas_tab.load_atlases) fill the Atlas tab; their layers join the
    explorer's neuron layers."""
    explorer.add_layers([index["layer"] for index in (atlases or {}).values()])
    # delete_cache: uploads and result pictures older than an hour go, hourly
    age = int(cb.ANSWER_MAX_AGE_S)
    with gr.Blocks(title="B-cos explorer", analytics_enabled=False, delete_cache=(3600, age)) as app:
        gr.Markdown(f"## B-cos explorer: {explorer.name}\n{INTRO}")
        state = gr.State(dict(cb.EMPTY))
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("Explain", id="explain", elem_id="explain-tab"):
                with gr.Row():
                    with gr.Column(scale=1):
                        c = _controls(explorer)
                    with gr.Column(scale=2):
                        r = _results()
            build_atlas_tab(atlases or {}, c, tabs)
        pics = [r["explanation"], r["contributions"], r["numbers"]]
        display = [c["smooth"], c["percentile"]]
        analysis = [r["message"], r["seen"], r["scores"], r["target"], *pics, state]
        # every picture is served from a file of its request's own (callbacks.py, "Answer files")
        analyse = cb.with_picture_files(partial(cb.analyse, explorer), _names(analysis))
        inputs = [c["image"], c["topk"], *display]
        # preprocess=False: the callback reads the uploaded file itself, so any file gets a clear message
        c["image"].change(analyse, inputs, analysis, api_name="analyse", preprocess=False).then(
            cb.delta_pair, [state], [c["a"], c["b"]], api_visibility="private")
        c["topk"].release(analyse, inputs, analysis, api_name="analyse_topk", preprocess=False,
                          api_visibility="private")  # the same image: Delta keeps the classes the user chose
        r["target"].input(cb.with_picture_files(partial(cb.pick_class, explorer), _names([*pics, state])),
                          [r["target"], state, *display], [*pics, state], api_name="pick_class")
        for i, s in enumerate(display):
            s.release(cb.with_picture_files(partial(cb.rerender, explorer), _names(pics)), [state, *display], pics,
                      api_name=f"rerender_{i}", api_visibility="private")
        mode = [r["message"], *pics, state]
        c["delta"].click(cb.with_picture_files(partial(cb.explain_delta, explorer), _names(mode)),
                         [state, c["a"], c["b"], *display], mode, api_name="delta")
        c["neuron"].click(cb.with_picture_files(partial(cb.explain_neuron, explorer), _names(mode)),
                          [state, c["layer"], c["channel"], *display], mode, api_name="neuron")
        r["grid"].click(partial(cb.png_grid, explorer), [state, c["smooth"]], r["file"], api_name="grid")
    return app


def _names(outputs: list) -> list[str | None]:
    """File names of the pictures among `outputs`: their element ids ("seen", "explanation", ...)."""
    return [o.elem_id if isinstance(o, gr.Image) else None for o in outputs]


_heap_bounded = threading.Event()
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _bound_the_heap(arenas: int = 2, every_s: float = TRIM_EVERY_S) -> None:
    """Keep the server's resident size at what it uses (glibc only; elsewhere nothing is done).

    Gradio answers on up to 40 worker threads; glibc gives threads heaps of their own (up to 8 per
    core) and keeps what they free for reuse. Under load (benchmarks/app_load.py, 8 clients) the
    resident size climbed 10.5% in 60 s and was still climbing, with no objects kept: while it grew
    31 MB tracemalloc saw <1 MB more Python objects, and malloc_trim gave ~100 MB back. With at most
    `arenas` heaps (set before the worker threads exist) and freed memory handed back every
    `every_s` seconds it grows 5-6% in the first ~45 s of load and then stays flat (90 s measured).
    """
    if _heap_bounded.is_set():
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return
    _heap_bounded.set()
    mallopt(M_ARENA_MAX, arenas)

    def loop() -> None:
        while True:
            time.sleep(every_s)
            trim(0)

    threading.Thread(target=loop, name="malloc-trim", daemon=True).start()


def launch(explorer: Explorer, host: str = "127.0.0.1", port: int = 7860, atlases: dict | None = None, **kwargs):
    """Serve the page on host:port (local only by default); requests queue and are answered in turn."""
    app = build_app(explorer, atlases)
    _bound_the_heap()
    app.queue(default_concurrency_limit=1, max_size=MAX_QUEUE)
    kwargs.setdefault("state_session_capacity", MAX_SESSIONS)
    folders = [index["folder"] for index in (atlases or {}).values()]  # the atlases' pictures are served as they are
    return app.launch(server_name=host, server_port=port, allowed_paths=[str(SAMPLES), *folders],
                      max_file_size=MAX_UPLOAD, footer_links=["api"], **kwargs)
