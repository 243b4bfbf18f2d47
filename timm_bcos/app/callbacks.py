"""The callbacks of the explorer page: they wire engine and views together and return what the page shows.

One upload runs one forward pass and explains the top-k classes at once (`analyse`); clicking
another class or moving a display slider only re-renders the cached explanation. Every
callback turns bad input into a message on the page and leaves the server serving.

The callbacks return pictures as arrays; the page serves them as files, each request's in a
folder of its own (`with_picture_files`, `png_grid`; see "Answer files" below for why).
"""
from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from gradio.utils import get_upload_folder  # noqa: E402
from PIL import Image  # noqa: E402

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


def delta_pair(state) -> tuple:
    """The Delta controls' classes A and B after an upload: the image's two top classes (Fig. 9 contrasts the
    prediction with its runner-up); left as they are while no image is explained."""
    topk = (state or {}).get("topk")
    if topk is None or topk.logits.shape[1] < 2:
        return gr.skip(), gr.skip()
    first, second = (int(t) for t in topk.logits[0].topk(2).indices)  # whatever top-k was explained
    return first, second


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
    path = save_explanation_grid(_request_folder() / "explanation.png", state["x"], expl,
                                 class_names=explorer.class_names, smooth=int(smooth))
    return gr.update(value=str(path), visible=True)


# ----------------------------------------------------------------------------- answer files
# Every answer's files (pictures, PNG grid) are written here, into a new folder of the request's
# own inside Gradio's cache, complete before the callback returns and never written again; Gradio
# serves files in its cache as they are. Why not let Gradio save the returned arrays: it names a
# saved picture by its content and rewrites that file in place whenever a request returns the same
# picture again, so while one client downloads its answer a concurrent request for the same image
# truncates and rewrites the file under it (a short or broken image; h11's "Too little data for
# declared Content-Length" in the server log). And a name shared between requests (one folder, a
# fixed file name) would let one request's answer be replaced by another's before it is fetched:
# benchmarks/app_load.py checks every answer's pictures against its own input under 32 clients.
#
# Bounded: folders go into one bucket per minute; a bucket whose newest entry is older than
# ANSWER_MAX_AGE_S (Gradio's own delete_cache age, layout.py) is removed when a later request comes,
# so each request looks at a few dozen buckets, not at every old answer. A bucket's mtime is the
# creation time of its newest folder, so nothing removed can belong to an answer younger than that
# age: an answer still in flight (callback returned, files not yet fetched) keeps its files.
ANSWER_MAX_AGE_S = 3600.0
ANSWERS = "timm_bcos_answers"  # the folder inside Gradio's cache (GRADIO_TEMP_DIR, default /tmp/gradio)


def _answers_folder(max_age_s: float = ANSWER_MAX_AGE_S) -> Path:
    """The folder of all answers' files (shared by processes); entries older than `max_age_s` are removed."""
    root = Path(get_upload_folder()) / ANSWERS
    root.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for entry in os.scandir(root):
        try:
            old = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
            if old and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif old:
                os.unlink(entry.path)
        except FileNotFoundError:
            continue  # removed meanwhile by a concurrent request: nothing to do
    return root


_grid_folder = _answers_folder  # its earlier name (tests/test_app.py)


def _request_folder() -> Path:
    """A new empty folder, this request's alone, in the current minute's bucket."""
    root = _answers_folder()
    bucket = root / time.strftime("%Y%m%d-%H%M", time.gmtime())
    for _ in range(3):
        bucket.mkdir(exist_ok=True)
        try:
            return Path(tempfile.mkdtemp(dir=bucket))  # a unique name: no other request ever writes here
        except FileNotFoundError:  # the bucket was just removed (a clock step back): make it again
            continue
    return Path(tempfile.mkdtemp(dir=root))


def with_picture_files(fn: Callable[..., Any], names: Sequence[str | None]) -> Callable[..., Any]:
    """`fn` for the page: each picture (an array) among its outputs becomes a PNG file of this request's
    own folder, named by `names` (the output's position); other outputs pass through unchanged."""
    @functools.wraps(fn)
    def served(*args):
        outputs = fn(*args)
        if not any(isinstance(v, np.ndarray) for v in outputs):
            return outputs
        folder = _request_folder()
        files = []
        for i, value in enumerate(outputs):
            if isinstance(value, np.ndarray):
                path = folder / f"{names[i] or f'picture_{i}'}.png"
                Image.fromarray(value).save(path, format="PNG")
                value = str(path)
            files.append(value)
        return tuple(files)

    return served
