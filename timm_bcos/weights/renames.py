"""Key renames from the B-cos v2 reference's state dicts (`bcos.models.pretrained.<name>`) to the
`bcos_*` layout. Logit bias and temperature are not in those state dicts (they live in the
reference's model config), nor is the ViTs' fixed position table (the reference computes it
on the fly); both are added here.
"""
from __future__ import annotations

import math
import re
from typing import Callable

import torch

from ..layers import sincos_pos_embed
from .catalogue import BCOS_V2_MODELS

REFERENCE_IMG_SIZE = 224  # the reference's ViTs see 224x224 crops: with the patch stride, this fixes the token grid

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


_VIT_RENAMES = (
    (r"transformer\.encoder_(\d+)\.attn\.norm\.", r"blocks.\1.norm1."),
    (r"transformer\.encoder_(\d+)\.attn\.to_qkv\.", r"blocks.\1.attn.qkv."),
    (r"transformer\.encoder_(\d+)\.attn\.to_out\.", r"blocks.\1.attn.proj."),
    (r"transformer\.encoder_(\d+)\.ff\.net\.norm\.", r"blocks.\1.norm2."),
    (r"transformer\.encoder_(\d+)\.ff\.net\.linear1\.", r"blocks.\1.mlp.fc1."),
    (r"transformer\.encoder_(\d+)\.ff\.net\.linear2\.", r"blocks.\1.mlp.fc2."),
    (r"linear_head\.norm\.", "fc_norm."),
    (r"linear_head\.linear\.", "head."),
    (r"to_patch_embedding\.conv_stem\.", "patch_embed.proj."),
    (r"to_patch_embedding\.linear\.", "to_patch_embedding."),
)


def _rename_vit(key: str) -> str:
    key = key[2:] if key.startswith("0.") else key  # the reference wraps its ViTs: Sequential(vit, logit layer)
    for pattern, repl in _VIT_RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _patch_stride(state: dict[str, torch.Tensor], projection: torch.Tensor, stem: list[str]) -> int:
    """The stride of the reference's patch embedding, read off the weights: a patch projection of p*p*6
    inputs strides p; a conv stem strides 2 at each conv that grows the channels (bcos/models/vit.py)."""
    if not stem:
        return int(round((projection.shape[1] / 6) ** 0.5))
    convs = [state[k] for k in stem if state[k].dim() == 4]
    return 2 ** sum(int(w.shape[0] > w.shape[1]) for w in convs)


def _vit_patch_projection(state: dict[str, torch.Tensor], grid_size: tuple[int, int] | None) -> None:
    """The reference's patch projection is a B-cos linear on (p1 p2 c)-flattened patches; ours is the
    equivalent B-cos conv (kernel = stride = patch) or, after a conv stem, a 1x1 conv. The fixed
    position table is made for `grid_size` (default: the grid of the reference's 224x224 input)."""
    w = state.pop("to_patch_embedding.weight")
    stem = sorted((k for k in state if k.startswith("patch_embed.proj.") and k.endswith("weight")),
                  key=lambda k: int(k.split(".")[2]))
    stride = _patch_stride(state, w, stem)
    if stem:
        state[f"patch_embed.proj.{int(stem[-1].split('.')[2]) + 2}.weight"] = w[:, :, None, None]
    else:
        state["patch_embed.proj.weight"] = w.reshape(w.shape[0], stride, stride, 6).permute(0, 3, 1, 2).contiguous()
    if grid_size is None:
        grid_size = (REFERENCE_IMG_SIZE // stride,) * 2
    state["pos_embed"] = sincos_pos_embed(*grid_size, w.shape[0]).to(w.dtype)


_FAMILY_RENAMES: dict[str, Callable[[str], str]] = {
    "vgg": _rename_vgg,
    "convnext": _rename_convnext,
    "simple_vit": _rename_vit,
    "vitc": _rename_vit,
}


def reference_family(name: str) -> str:
    """The reference family whose key layout a model has, from its timm_bcos name (or architecture,
    or class name): a key of the renames, or "" for the families whose keys need none (ResNet, DenseNet)."""
    return next((family for family in _FAMILY_RENAMES if family in name.lower()), "")


def convert_bcos_v2_state_dict(
    state_dict: dict[str, torch.Tensor],
    bcos_name: str,
    *,
    num_classes: int | None = None,
    logit_bias: float | None = None,
    logit_temperature: float = 1.0,
    grid_size: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Rename a state dict of `bcos.models.pretrained.<bcos_name>` to the `bcos_*` layout and add
    the logit layer buffers (and a ViT's position table, for `grid_size` or the reference's grid).

    num_classes: inferred from the classifier when None; the logit bias defaults to
    -log(num_classes - 1), the reference's default.
    """
    if bcos_name not in BCOS_V2_MODELS:
        raise ValueError(f"unknown B-cos v2 model {bcos_name!r}; known: {sorted(BCOS_V2_MODELS)}")
    state = rename_reference_keys(state_dict, BCOS_V2_MODELS[bcos_name], grid_size)
    return add_logit_layer(state, num_classes, logit_bias, logit_temperature)


def rename_reference_keys(state_dict: dict[str, torch.Tensor], model_name: str,
                          grid_size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
    """A reference state dict in the layout of the model named `model_name` (see `reference_family`)."""
    rename = _FAMILY_RENAMES.get(reference_family(model_name), lambda k: k)
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = rename(key.replace(".linear.weight", ".weight"))
        if new_key.endswith("gamma") and value.dim() == 3:  # layer_scale [C, 1, 1] -> gamma [C]
            value = value.reshape(-1)
        out[new_key] = value
    if "to_patch_embedding.weight" in out:
        _vit_patch_projection(out, grid_size)
    return out


def add_logit_layer(state: dict[str, torch.Tensor], num_classes: int | None = None, logit_bias: float | None = None,
                    logit_temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """`state` with the logit layer's buffers, which the reference keeps in its model config."""
    if num_classes is None:
        classifier = [v for k, v in state.items() if k.endswith(("fc.weight", "classifier.weight", "head.weight"))]
        if not classifier:
            raise ValueError("cannot infer num_classes of this checkpoint: no classifier weight "
                             "(fc, classifier or head) found")
        num_classes = classifier[-1].shape[0]
    if logit_bias is None:
        logit_bias = -math.log(num_classes - 1)
    return {**state,
            "logit_layer.logit_bias": torch.tensor(float(logit_bias), dtype=torch.float64),
            "logit_layer.logit_temperature": torch.tensor(float(logit_temperature), dtype=torch.float64)}
