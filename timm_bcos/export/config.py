"""preprocessing.json: what a runtime must do to an image before the exported graph sees it,
and what the graphs take and return (from the model's timm data config)."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..version import __version__
from .graphs import CLASSIFIER_OUTPUTS, EXPLAIN_OUTPUTS


def preprocessing(data_config: dict) -> dict:
    """timm's eval transform (timm.data.transforms_imagenet_eval) as steps a runtime can follow:
    resize, crop (or pad), scale to [0, 1], normalise. Sizes are [height, width]."""
    _, h, w = data_config["input_size"]
    crop_pct = data_config.get("crop_pct") or 0.875
    crop_mode = data_config.get("crop_mode") or "center"
    mean = list(data_config.get("mean", (0.0, 0.0, 0.0)))
    crop = {"size": [h, w], "offsets": "round((resized - size) / 2) from the top and left"}
    if crop_mode == "border":
        crop["pad_first"] = {"fill": [round(255 * m) for m in mean],
                             "where": "a side shorter than size: (size - side) // 2 before, the rest after"}
    return {
        "steps": ["decode to RGB", "resize", "crop", "to float in [0, 1] (divide by 255)",
                  "subtract mean, divide by std (per channel)", "NCHW layout"],
        "resize": {**_resize_rule(crop_mode, [math.floor(h / crop_pct), math.floor(w / crop_pct)]),
                   "interpolation": data_config.get("interpolation", "bilinear")},
        "crop": crop,
        "mean": mean,
        "std": list(data_config.get("std", (1.0, 1.0, 1.0))),
        "timm_data_config": {k: list(v) if isinstance(v, tuple) else v for k, v in data_config.items()},
    }


def _resize_rule(crop_mode: str, scale: list[int]) -> dict:
    if crop_mode == "squash":
        return {"rule": "exact", "size": scale}
    if crop_mode == "center" and scale[0] == scale[1]:  # torchvision's Resize(int)
        return {"rule": "shorter_side", "size": scale[0], "longer_side": "floor(size * longer / shorter)"}
    keep = {"rule": "keep_ratio", "target": scale,  # timm's ResizeKeepRatio
            "size": "[round(height / ratio), round(width / ratio)], Python's round (half to even)"}
    if crop_mode == "border":  # the whole image inside the target, padded later
        return {**keep, "ratio": "max(height / target[0], width / target[1])"}
    return {**keep, "ratio": "min(height / target[0], width / target[1])"}  # the target covered, cropped later


def export_config(model: nn.Module, data_config: dict, name: str, *, files: dict[str, str], fmt: str,
                  explain: str | None, k: int, dtype: str, opset: int | None, batch: int | None) -> dict:
    _, h, w = data_config["input_size"]
    n = "N (any)" if batch is None else batch
    images = {"name": "images", "shape": [n, 3, h, w], "dtype": dtype, "layout": "NCHW, RGB"}
    graphs = {"classifier": {"file": files["classifier"], "inputs": [images], "outputs": CLASSIFIER_OUTPUTS}} \
        if "classifier" in files else {}
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
