"""The weights a finished run publishes: EMA, best or last, in the Hugging Face Hub layout (model.safetensors,
config.json, a model card with the measured accuracy) under OUTPUT/export."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from .config import TrainConfig
from .state import TrainState


def export(config: TrainConfig, model, ema, state: TrainState, metrics: dict, info, output: Path) -> Path:
    """Write --export's weights (ema falls back to best, best to last) into `output`/export; returns the folder."""
    from ..hub import save_pretrained

    which = config.export
    if which == "ema" and ema is None:
        which = "best"
    if which == "best" and not (output / "best.safetensors").is_file():
        which = "last"
    if which == "ema":
        weights = ema.module.state_dict()
        accuracy = {"top1": metrics.get("ema_top1"), "top5": metrics.get("ema_top5")}
    elif which == "best":
        from safetensors.torch import load_file

        weights = load_file(output / "best.safetensors")
        accuracy = {"top1": state.best_top1}
    else:
        weights = model.state_dict()
        accuracy = {"top1": metrics.get("top1"), "top5": metrics.get("top5")}
    model.load_state_dict(weights)
    accuracy = {k: round(v, 2) for k, v in accuracy.items() if v is not None and not math.isnan(v)}
    model = model.cpu().to(memory_format=torch.contiguous_format)  # --channels-last weights: safetensors wants contiguous
    folder = save_pretrained(model, output / "export", model_args=dict(config.model_kwargs),
                             label_names=info.label_names, metrics=accuracy or None,
                             dataset=Path(config.dataset).name, dataset_split=config.val_split or None,
                             repo_id=f"ORG/{config.model}-{Path(config.dataset).name}")
    print(f"exported the {which} weights to {folder} (accuracy on {config.val_split or 'no split'}: "
          f"{accuracy or 'not measured'})", flush=True)
    return Path(folder)
