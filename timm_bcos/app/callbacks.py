"""The callbacks of the explorer page: they wire engine and views together and return what the page shows.

One upload runs one forward pass and explains the top-k classes at once (`analyse`); clicking
another class or moving a display slider only re-renders the cached explanation. Every
callback turns bad input into a message on the page and leaves the server serving.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402

from . import views  # noqa: E402
from .engine import Explorer  # noqa: E402
from .images import ImageInputError, load_image  # noqa: E402

EMPTY = {"x": None, "topk": None, "current": None}


def _path_of(payload: Any) -> str:
    """The server-side file of an image payload (a dict from the page or gradio_client, or a path)."""
    if isinstance(payload, dict):
        payload = payload.get("path")
    if not payload:
        raise ImageInputError("no image given; upload, paste or take a picture, or pick a sample")
    return str(payload)


def _render(state: dict, smooth: float, percentile: float, explorer: Explorer) -> tuple:
    """Explanation picture, contribution map and numbers of the state's current target."""
    expl, j, label = state["current"]
    return (views.explanation_picture(expl, j, int(smooth), float(percentile)),
            views.contribution_picture(expl, j, float(percentile)),
            views.numbers(expl, j, explorer.logit_bias, label))


def _failed(message: str) -> tuple:
    """Outputs of `analyse` after bad input: the message, everything else cleared."""
    return (f"**Cannot use this input.** {message}", None, None,
            gr.update(choices=[], value=None), None, None, "", dict(EMPTY))


def analyse(explorer: Explorer, payload, topk, smooth, percentile) -> tuple:
    """Load, prepare by the model's data config, explain the top-k classes; show the first."""
    try:
        prepared = explorer.prepare(load_image(_path_of(payload)))
        expl = explorer.explain_topk(prepared.x, int(topk))
    except (ImageInputError, ValueError) as e:
        return _failed(str(e))
    names = [explorer.class_names[int(t)] for t in expl.targets[0]]
    state = {"x": prepared.x, "topk": expl, "current": (expl, 0, names[0])}
    h, w = prepared.seen.shape[:2]
    message = f"The model saw a {w}x{h} image (below); explained its top {len(names)} classes."
    return (message, views.enlarge(prepared.seen), views.scores(expl, explorer.class_names),
            gr.update(choices=[(n, j) for j, n in enumerate(names)], value=0),
            *_render(state, smooth, percentile, explorer), state)


def pick_class(explorer: Explorer, j, state, smooth, percentile) -> tuple:
    """Another of the top-k classes: re-rendered from the cached explanation, no model call."""
    if not state or state.get("topk") is None or j is None:
        return gr.skip(), gr.skip(), gr.skip(), state
    expl = state["topk"]
    j = int(j)
    state = {**state, "current": (expl, j, explorer.class_names[int(expl.targets[0, j])])}
    return (*_render(state, smooth, percentile, explorer), state)


def rerender(explorer: Explorer, state, smooth, percentile) -> tuple:
    if not state or state.get("current") is None:
        return gr.skip(), gr.skip(), gr.skip()
    return _render(state, smooth, percentile, explorer)


def explain_delta(explorer: Explorer, state, a, b, smooth, percentile) -> tuple:
    """Why class a rather than class b (Fig. 9)."""
    if not state or state.get("x") is None:
        return "**Load an image first.**", gr.skip(), gr.skip(), gr.skip(), state
    try:
        expl = explorer.explain_delta(state["x"], int(a), int(b))
    except (ValueError, TypeError) as e:
        return f"**Cannot explain this pair.** {e}", gr.skip(), gr.skip(), gr.skip(), state
    label = f"{explorer.class_names[int(a)]} rather than {explorer.class_names[int(b)]}"
    state = {**state, "current": (expl, 0, label)}
    return (f"Delta explanation: {label}.", *_render(state, smooth, percentile, explorer), state)


def explain_neuron(explorer: Explorer, state, layer, channel, smooth, percentile) -> tuple:
    """A unit of a B-cos layer; channel -1 is the most activated one (Figs. 8, 10)."""
    if not state or state.get("x") is None:
        return "**Load an image first.**", gr.skip(), gr.skip(), gr.skip(), state
    target = None if channel is None or int(channel) < 0 else int(channel)
    try:
        expl = explorer.explain_neuron(state["x"], layer, target)
    except (ValueError, TypeError) as e:
        return f"**Cannot explain this unit.** {e}", gr.skip(), gr.skip(), gr.skip(), state
    label = f"{layer} channel {int(expl.targets[0, 0])}"
    state = {**state, "current": (expl, 0, label)}
    return (f"Neuron explanation: {label}.", *_render(state, smooth, percentile, explorer), state)


def png_grid(explorer: Explorer, state, smooth):
    """The current explanation as the package's PNG grid (image | explanation | contributions), shown for download."""
    from ..explain.render import save_explanation_grid

    if not state or state.get("current") is None:
        return gr.update(value=None, visible=False)
    expl = state["current"][0]
    folder = Path(tempfile.mkdtemp(dir=_grid_folder()))
    path = save_explanation_grid(folder / "explanation.png", state["x"], expl,
                                 class_names=explorer.class_names, smooth=int(smooth))
    return gr.update(value=str(path), visible=True)


def _grid_folder(max_age_s: float = 3600.0) -> Path:
    """One folder per process for the grids; grids older than `max_age_s` are removed as new ones come."""
    root = Path(tempfile.gettempdir()) / f"timm_bcos_app_{os.getpid()}"
    root.mkdir(exist_ok=True)
    for old in root.iterdir():
        if time.time() - old.stat().st_mtime > max_age_s:
            shutil.rmtree(old, ignore_errors=True)
    return root
