"""What a converted model records so that its saved config rebuilds it.

`convert()` names the generic entrypoint (`timm_bcos.models.bcos_converted`) as the model's
architecture and records the base architecture, its arguments and the recipe as timm's
model_args, so timm's `save_for_hf` and `timm_bcos.hub.save_pretrained` write a config
that `timm.create_model("local-dir:...")` / `"hf-hub:..."` rebuild from.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any

from torch import nn

from .recipes import RECIPES, Recipe

CONVERTED_ARCHITECTURE = "bcos_converted"


def recipe_args(recipe: Recipe) -> dict[str, Any]:
    """A named recipe plus the fields that differ from it, as JSON-able model args."""
    base = RECIPES.get(recipe.name, RECIPES["v2"])
    changed = {f.name: getattr(recipe, f.name) for f in fields(Recipe)
               if f.name != "name" and getattr(recipe, f.name) != getattr(base, f.name)}
    if "norms" in changed:  # overrides merge into the named recipe's norms: spell out every kind
        changed["norms"] = {**{k: "none" for k in base.norms}, **recipe.norms}
    return {"recipe": base.name, **changed}


def record_origin(model: nn.Module, recipe: Recipe, spec: Any, family_spec: Any) -> None:
    """Point the model's cfg at the generic entrypoint; B-cos input is plain [0, 1] RGB (mean 0, std 1)."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if not cfg.get("architecture"):
        return  # not made by timm.create_model: nothing to rebuild it from
    args = {**getattr(model, "_model_args", {}), "base_model": cfg["architecture"], **recipe_args(recipe)}
    if spec != family_spec:  # the head was chosen by the caller
        args["head"] = None if spec is None else asdict(spec)
    model._model_args = args
    model.pretrained_cfg = {**cfg, "architecture": CONVERTED_ARCHITECTURE, "mean": (0.0,) * 3, "std": (1.0,) * 3}
