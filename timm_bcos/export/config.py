"""preprocessing.json: what a runtime must do to an image before the exported graph sees it,
and what the graphs take and return (from the model's timm data config)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..version import __version__
from .graphs import CLASSIFIER_OUTPUTS, EXPLAIN_OUTPUTS


def preprocessing(data_config: dict) -> dict:
    """timm's eval transform in words a runtime can follow (timm.data.transforms_imagenet_eval)."""
    _, h, w = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 0.875
    crop_mode = data_config.get("crop_mode") or "center"
    scale = [math.floor(h / crop_pct), math.floor(w / crop_pct)]
    if crop_mode == "center" and scale[0] == scale[1]:
        resize = {"shorter_side": scale[0], "longer_side": "floor(shorter_side * longer / shorter)"}  # torchvision
    elif crop_mode == "border":
        resize = {"longer_side": max(scale), "pad_to": [h, w]}
    else:
        resize = {"size": scale}  # squash, or a non-square center crop: both edges resized
    return {
        "steps": ["decode to RGB", "resize", "center crop", "to float in [0, 1] (divide by 255)",
                  "subtract mean, divide by std (per channel)", "NCHW layout"],
        "resize": {**resize, "interpolation": data_config.get("interpolation", "bilinear")},
        "center_crop": [h, w],  # offsets round((size - crop) / 2), as torchvision's CenterCrop
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
        "mean": list(data_config.get("mean", (0.0, 0.0, 0.0))),
        "std": list(data_config.get("std", (1.0, 1.0, 1.0))),
        "timm_data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    }


def export_config(model: nn.Module, data_config: dict, name: str, *, files: dict[str, str], fmt: str,
                  explain: str | None, k: int, dtype: str, opset: int | None, batch: int | None) -> dict:
    _, h, w = data_config["input_size"]
    n = "N (any)" if batch is None else batch
    images = {"name": "images", "shape": [n, 3, h, w], "dtype": dtype, "layout": "NCHW, RGB"}
    graphs = {"classifier": {"file": files["classifier"], "inputs": [images], "outputs": CLASSIFIER_OUTPUTS}}
    if explain:
        inputs = [images] + ([{"name": "targets", "shape": [n, k], "dtype": "int64"}] if explain == "class" else [])
        graphs["explainer"] = {"file": files["explainer"], "explains": f"top-{k} classes" if explain == "topk"
                               else f"{k} given classes per image", "inputs": inputs, "outputs": EXPLAIN_OUTPUTS}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    config = {
        "model": name,
        "format": fmt,
        "graphs": graphs,
        "preprocessing": preprocessing(data_config),
        "logit_bias": float(model.logit_layer.logit_bias),
        "logit_temperature": float(model.logit_layer.logit_temperature),
        "num_classes": int(getattr(model, "num_classes", 0)),
        "versions": {"timm_bcos": __version__, "torch": torch.__version__,
                     **({"onnx_opset": opset} if opset else {})},
    }
    if cfg.get("label_names"):
        config["label_names"] = list(cfg["label_names"])
    return config
