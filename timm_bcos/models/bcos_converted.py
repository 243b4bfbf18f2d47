"""`bcos_converted`: rebuilds any model made by `timm_bcos.convert(timm.create_model(base), recipe)`.

`convert()` records the base architecture, its arguments and the recipe as the model's
timm model_args and names this entrypoint as its architecture, so a folder written by
timm's `save_for_hf` or `timm_bcos.hub.save_pretrained` loads back through
`timm.create_model("local-dir:...")` / `"hf-hub:..."` (after `import timm_bcos`).
"""
from __future__ import annotations

from typing import Any

from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model

from ..convert import HeadSpec
from ..convert.origin import CONVERTED_ARCHITECTURE
from ._builder import bcos_cfg, build_bcos

# what a fresh model takes from its base architecture's cfg (a saved config carries its own)
_BASE_CFG_KEYS = ("input_size", "pool_size", "crop_pct", "crop_mode", "interpolation", "first_conv", "classifier",
                  "min_input_size", "fixed_input_size", "test_input_size", "test_crop_pct")

default_cfgs = generate_default_cfgs({
    f"{CONVERTED_ARCHITECTURE}.untrained": bcos_cfg(first_conv="conv1", classifier="fc"),  # base resnet18
})


@register_model
def bcos_converted(pretrained: bool = False, base_model: str = "resnet18", recipe: str = "v2",
                   head: str | dict | None = "auto", **kwargs: Any):
    """A timm model converted with `recipe` (the generic counterpart of the bcos_* entrypoints).

    base_model: a timm architecture ("efficientnet_b0"); recipe: "v2", "v2_bnu" or "v1", with
    recipe fields as further kwargs (b=2.5, norms={...}); head: "auto", None (keep the family's
    head) or a `HeadSpec` as a dict.
    """
    public = dict(base_model=base_model, recipe=recipe, **({} if head == "auto" else {"head": head}))
    if isinstance(head, dict):
        head = HeadSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in head.items()})
    if kwargs.get("pretrained_cfg") is None:  # a fresh model: the base's input size, head names, ...
        base_cfg = get_pretrained_cfg(base_model)
        base = {k: v for k, v in (base_cfg.to_dict() if base_cfg else {}).items() if k in _BASE_CFG_KEYS}
        kwargs["pretrained_cfg_overlay"] = {**base, **(kwargs.get("pretrained_cfg_overlay") or {})}
    return build_bcos(CONVERTED_ARCHITECTURE, pretrained, conventional=base_model, recipe=recipe, head=head,
                      entrypoint_args=public, **kwargs)
