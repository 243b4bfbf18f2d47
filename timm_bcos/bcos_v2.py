"""The B-cos v2 reference's checkpoint layout (`pip install bcos`, release v0.0.1-weights).

`convert_bcos_v2_state_dict` maps a state dict of a `bcos.models.pretrained.<name>`
model onto the corresponding `bcos_*` model. Logit bias and temperature are not
in those state dicts (they live in the reference's model config); they are
added here.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

# bcos.models.pretrained entrypoint -> timm_bcos model name
BCOS_V2_MODELS: dict[str, str] = {
    "resnet18": "bcos_resnet18",
    "resnet34": "bcos_resnet34",
    "resnet50": "bcos_resnet50",
    "resnet101": "bcos_resnet101",
    "resnet152": "bcos_resnet152",
    "resnext50_32x4d": "bcos_resnext50_32x4d",
    "resnet50_long": "bcos_resnet50",
    "resnet152_long": "bcos_resnet152",
    "densenet121": "bcos_densenet121",
    "densenet161": "bcos_densenet161",
    "densenet169": "bcos_densenet169",
    "densenet201": "bcos_densenet201",
    "densenet121_long": "bcos_densenet121",
    "vgg11_bnu": "bcos_vgg11_bnu",
    "convnext_tiny": "bcos_convnext_tiny",
    "convnext_base": "bcos_convnext_base",
    "convnext_tiny_bnu": "bcos_convnext_tiny_bnu",
    "convnext_base_bnu": "bcos_convnext_base_bnu",
}

_VGG11_CFG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def _vgg_feature_index_map(cfg=_VGG11_CFG) -> dict[int, int]:
    """Reference VGG-BNU features are (conv, bn) per layer; timm's vgg*_bn are (conv, bn, act)."""
    mapping, ref, ours = {}, 0, 0
    for v in cfg:
        if v == "M":
            ref, ours = ref + 1, ours + 1
            continue
        mapping[ref], mapping[ref + 1] = ours, ours + 1
        ref, ours = ref + 2, ours + 3
    return mapping


def _rename_vgg(key: str) -> str:
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if m:
        return f"features.{_vgg_feature_index_map()[int(m.group(1))]}.{m.group(2)}"
    for ref, ours in (("classifier.0.", "pre_logits.fc1."), ("classifier.1.", "pre_logits.fc2."),
                      ("classifier.2.", "head.fc.")):
        if key.startswith(ref):
            return ours + key[len(ref):]
    return key


_CONVNEXT_BLOCK = {"block.0": "conv_dw", "block.1": "norm", "block.2": "mlp.fc1", "block.3": "mlp.fc2",
                   "layer_scale": "gamma"}


def _rename_convnext(key: str) -> str:
    for ref, ours in (("features.0.", "stem.0."), ("features.1.", "stem.1."),
                      ("classifier.0.", "head.norm."), ("classifier.1.", "head.fc.")):
        if key.startswith(ref):
            return ours + key[len(ref):]
    m = re.match(r"features\.(\d+)\.(.*)", key)
    if not m:
        return key
    idx, rest = int(m.group(1)), m.group(2)
    if idx % 2 == 1:  # features.3/5/7: the downsampling (norm, conv) in front of stages 1-3
        return f"stages.{(idx - 1) // 2}.downsample.{rest}"
    block, _, tail = rest.partition(".")
    for ref, ours in _CONVNEXT_BLOCK.items():
        if tail == ref or tail.startswith(ref + "."):
            tail = ours + tail[len(ref):]
            break
    return f"stages.{(idx - 2) // 2}.blocks.{block}.{tail}"


_FAMILY_RENAMES: dict[str, Callable[[str], str]] = {
    "vgg": _rename_vgg,
    "convnext": _rename_convnext,
}


def convert_bcos_v2_state_dict(
    state_dict: dict[str, torch.Tensor],
    bcos_name: str,
    *,
    num_classes: int | None = None,
    logit_bias: float | None = None,
    logit_temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Rename a reference state dict to the `bcos_*` layout and add the logit layer buffers.

    num_classes: inferred from the classifier when None; the logit bias defaults to
    -log(num_classes - 1), the reference's default.
    """
    if bcos_name not in BCOS_V2_MODELS:
        raise ValueError(f"unknown B-cos v2 model {bcos_name!r}; known: {sorted(BCOS_V2_MODELS)}")
    rename = next((fn for family, fn in _FAMILY_RENAMES.items() if bcos_name.startswith(family)), lambda k: k)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key.replace(".linear.weight", ".weight"))
        if new_key.endswith("gamma") and value.dim() == 3:  # layer_scale [C, 1, 1] -> gamma [C]
            value = value.reshape(-1)
        out[new_key] = value
    if num_classes is None:
        classifier = [v for k, v in out.items() if k.endswith(("fc.weight", "classifier.weight"))]
        if not classifier:
            raise ValueError(f"cannot infer num_classes for {bcos_name!r}: no classifier weight found")
        num_classes = classifier[-1].shape[0]
    if logit_bias is None:
        logit_bias = -math.log(num_classes - 1)
    out["logit_layer.logit_bias"] = torch.tensor(float(logit_bias), dtype=torch.float64)
    out["logit_layer.logit_temperature"] = torch.tensor(float(logit_temperature), dtype=torch.float64)
    return out
