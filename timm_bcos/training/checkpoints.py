"""Checkpoints of a run: written into a temporary folder with a manifest of their files and renamed into
place when complete (a kill never leaves half of one), found again on --resume (damaged ones passed
over, with a line each), and the weights files the run writes beside them."""
from __future__ import annotations

import json
import os
import shutil
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from .config import TrainConfig
from .errors import fail
from .faults import write_together

if TYPE_CHECKING:
    from .run import Run


def find_checkpoint(config: TrainConfig) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from, and a line for each newer one passed over as damaged (its files
    do not match the manifest written with it: truncated, missing); never a partial state."""
    if not config.resume:
        return None, []
    if config.resume != "latest":
        path = Path(config.resume)
        if not (path / "train_meta.json").is_file():
            fail(f"--resume {config.resume}: not a checkpoint folder of train.py (no train_meta.json)")
        problem = checkpoint_problem(path)
        if problem:
            fail(f"--resume {config.resume}: the checkpoint is damaged ({problem})")
        return path, []
    ckpts = sorted((Path(config.output) / "checkpoints").glob("step_*"), reverse=True)
    if not ckpts:
        print(f"no checkpoint in {config.output}/checkpoints; starting from scratch", flush=True)
        return None, []
    skipped = []
    for ckpt in ckpts:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append(f"checkpoint {ckpt} is damaged ({problem}); not resuming from it")
    fail(f"no complete checkpoint in {config.output}/checkpoints: " + "; ".join(skipped))


def checkpoint_problem(ckpt: Path) -> str | None:
    from .integrity import manifest_problem

    try:
        meta = json.loads((ckpt / "train_meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"train_meta.json unreadable: {type(e).__name__}"
    # checkpoints from before manifests have no "files": their folders were renamed into place whole
    return manifest_problem(ckpt, meta["files"]) if "files" in meta else None


def resume(run: Run) -> None:
    """Load --resume's checkpoint into the run (model, optimiser, EMA, data position, RNG), if there is one."""
    ckpt, skipped = find_checkpoint(run.config)
    for line in skipped:
        run.say(line, flush=True)
    if ckpt is None:
        return
    saved = json.loads((ckpt / "train_meta.json").read_text())
    differs = {k: (saved.get(k), v) for k, v in run.meta.items() if saved.get(k) != v}
    if differs:
        fail(f"checkpoint {ckpt} is from another run: " +
             ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differs.items()))
    try:
        run.accelerator.load_state(str(ckpt))
    except Exception as e:
        fail(f"cannot resume from {ckpt}: {type(e).__name__}: {e}")
    run.say(f"resumed from {ckpt}: epoch {run.state.epoch}, {run.state.batches_in_epoch} batches in, "
            f"step {run.state.update}", flush=True)


def save_checkpoint(run: Run) -> None:
    """accelerator.save_state into a temporary folder, its manifest, then renamed when complete (a kill never
    leaves half); a failed write stops every process with one clear error and leaves the last checkpoint."""
    from .integrity import folder_manifest

    accelerator, config, state = run.accelerator, run.config, run.state
    root = Path(config.output) / "checkpoints"
    name = f"step_{state.update:09d}"
    tmp = root / f".tmp_{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    needed = partial(checkpoint_bytes, run)  # worked out only for an error message
    write_together(accelerator, lambda: accelerator.save_state(str(tmp)), "a checkpoint", tmp, needed, cleanup=tmp)

    def finish_folder():
        files = folder_manifest(tmp, exclude=("train_meta.json",))
        (tmp / "train_meta.json").write_text(json.dumps({**run.meta, **state.state_dict(), "files": files}, indent=1))
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step_*"))[: -config.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)

    write_together(accelerator, finish_folder, "a checkpoint", tmp, needed, cleanup=tmp, main_only=True)


def checkpoint_bytes(run: Run) -> int:
    """About what a checkpoint takes: the newest complete one's files, else the model, EMA and optimiser tensors."""
    from .integrity import folder_manifest

    newest = sorted((Path(run.config.output) / "checkpoints").glob("step_*"))
    if newest and checkpoint_problem(newest[-1]) is None:
        return sum(folder_manifest(newest[-1]).values())
    states = [run.model.state_dict(), run.optimizer.state_dict()["state"]]
    if run.ema is not None:
        states.append(run.ema.state_dict())
    return tensor_bytes(states)


def weights_bytes(model: torch.nn.Module) -> int:
    return tensor_bytes(model.state_dict())


def tensor_bytes(obj) -> int:
    """Bytes of every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return sum(tensor_bytes(v) for v in values)


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """The model's state dict as one safetensors file, written whole or not at all."""
    from safetensors.torch import save_file

    from ..utils.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))
