"""Save and publish B-cos models in the layout timm reads (`local-dir:` / `hf-hub:`).

A folder holds `model.safetensors`, `config.json` (architecture, num_classes,
label names, the pretrained cfg with its evaluation transform, model args) and a
`README.md` model card. Load it back with `timm.create_model("local-dir:PATH")`
or, once uploaded, `timm.create_model("hf-hub:ORG/REPO")` (after `import timm_bcos`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from torch import nn

from .convert.runtime import bcos_state
from .utils.atomic import atomic_folder

CARD_BODY = """# {repo_name}

A B-cos network ({architecture}) for [timm](https://github.com/huggingface/pytorch-image-models),
packaged by timm_bcos. B-cos networks are dynamic linear: in explanation mode every output
is W(x) x, and W(x) is the model's own faithful explanation.

```python
import timm, timm_bcos   # importing timm_bcos registers the bcos_* architectures with timm
model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()
cfg = timm.data.resolve_data_config({{}}, model=model)     # plain [0, 1] RGB: mean 0, std 1
expl = model.explain(timm.data.create_transform(**cfg)(img).unsqueeze(0))
```

{results}
{details}

## Papers
- Böhle, Fritz, Schiele. *B-cos Networks: Alignment is All We Need for Interpretability.* CVPR 2022.
- Böhle, Singh, Fritz, Schiele. *B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers.* TPAMI 2024.

## Licence
{licence_text}
"""

# timm has no plugin hook: a process must import timm_bcos before timm.create_model can find a
# bcos_* architecture (otherwise timm says "Unknown model (bcos_...)"). config.json says so.
REGISTRATION_MARKER = {
    "usage": "pip install timm_bcos, then `import timm_bcos` before timm.create_model: it registers "
             "the bcos_* architectures with timm",
}

IMAGENET_LICENCE = ("The weights were trained on ImageNet-1k; they are for research and other "
                    "non-commercial use, following the ImageNet terms of access.")
UNSTATED_LICENCE = "The exporter stated no licence for these weights; see the terms of the training data."


def model_card(model: nn.Module, repo_id: str, *, metrics: dict[str, float] | None = None,
               dataset: str | None = None, dataset_split: str | None = None, licence: str = "other",
               licence_text: str | None = None, details: str = "") -> str:
    """A huggingface_hub ModelCard (as text). Metrics are claimed in the card's model-index only
    together with the data set (and split) they were measured on."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    repo_name = repo_id.split("/")[-1]
    metrics = {k: v for k, v in (metrics or {}).items() if v is not None}
    results = [EvalResult(task_type="image-classification", dataset_type=dataset, dataset_name=dataset,
                          dataset_split=dataset_split, metric_type=k, metric_value=v)
               for k, v in metrics.items()] if dataset else None
    named = {}
    if licence == "other" and dataset == "imagenet-1k":  # the reference's terms: ImageNet's, non-commercial
        named = dict(license_name="imagenet-terms-of-access", license_link="https://image-net.org/download")
    data = ModelCardData(library_name="timm", license=licence, model_name=repo_name, **named,
                         datasets=[dataset] if dataset else None, eval_results=results,
                         tags=["image-classification", "timm", "timm_bcos", "b-cos", "interpretability"])
    where = f" on {dataset}" + (f" ({dataset_split})" if dataset_split else "") if dataset else " (data set not stated)"
    lines = "".join(f"- {k}: {v}\n" for k, v in metrics.items())
    body = CARD_BODY.format(
        repo_name=repo_name, architecture=cfg.get("architecture", type(model).__name__), repo_id=repo_id,
        results=f"## Results{where}\n{lines}" if metrics else "", details=details,
        licence_text=licence_text or (IMAGENET_LICENCE if dataset == "imagenet-1k" else
                                      f"{licence}." if licence != "other" else UNSTATED_LICENCE),
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n{body}"))


def save_pretrained(
    model: nn.Module,
    folder: str | Path,
    *,
    model_args: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    metrics: dict[str, float] | None = None,
    repo_id: str | None = None,
    card: str | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    dataset: str | None = None,
    dataset_split: str | None = None,
    licence: str = "other",
    licence_text: str | None = None,
) -> Path:
    """Write `model` to `folder` (created or replaced whole, never half-written; files 0644).

    model_args default to the kwargs the model was created with (e.g. width, num_classes).
    metrics, dataset (and its split), licence: what the card states (see `model_card`).
    """
    from timm.models._hub import save_for_hf

    folder = Path(folder)
    state = bcos_state(model)
    args = dict(state.model_args) if state is not None else {}
    args.update(model_args or {})
    args.setdefault("num_classes", getattr(model, "num_classes", None))
    cfg_overlay = dict(pretrained_cfg_overlay or {})
    if label_names is not None:
        if len(label_names) != args["num_classes"]:
            raise ValueError(f"{len(label_names)} label names for a model with {args['num_classes']} classes")
        cfg_overlay["label_names"] = list(label_names)
    original_cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    try:
        with atomic_folder(folder) as tmp:
            model.pretrained_cfg = {**original_cfg, **cfg_overlay}
            for key in ("url", "file", "hf_hub_id", "source", "state_dict"):
                model.pretrained_cfg.pop(key, None)
            model_config: dict[str, Any] = {"timm_bcos": REGISTRATION_MARKER}
            if label_names is not None:
                model_config["label_names"] = list(label_names)
            save_for_hf(model, str(tmp), model_args={k: v for k, v in args.items() if v is not None},
                        model_config=model_config, safe_serialization=True)
            text = card or model_card(model, repo_id or f"ORG/{folder.name}", metrics=metrics, dataset=dataset,
                                      dataset_split=dataset_split, licence=licence, licence_text=licence_text)
            (tmp / "README.md").write_text(text)
    finally:
        model.pretrained_cfg = original_cfg
    return folder


def push_to_hub(folder: str | Path, repo_id: str, *, private: bool = False, token: str | None = None,
                commit_message: str = "Add B-cos model") -> str:
    """Upload a folder written by `save_pretrained` (create_repo + upload_folder)."""
    from huggingface_hub import create_repo, upload_folder

    folder = Path(folder)
    for required in ("model.safetensors", "config.json", "README.md"):
        if not (folder / required).is_file():
            raise FileNotFoundError(f"{folder} has no {required}; write it with timm_bcos.hub.save_pretrained")
    create_repo(repo_id, private=private, token=token, exist_ok=True)
    upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, commit_message=commit_message)
    return repo_id
