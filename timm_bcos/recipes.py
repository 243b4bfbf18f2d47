"""Recipes: the choices that turn a conventional network into a B-cos network."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# How each kind of conventional norm is replaced:
#   "bn_uncentered": BatchNormUncentered2d   "uncentered": uncentered version of the same norm
#   "centered": detachable centered version  "none": removed (Identity)
NORM_CHOICES = ("bn_uncentered", "uncentered", "centered", "none")


@dataclass(frozen=True)
class Recipe:
    name: str
    b: float = 2.0
    max_out: int = 1
    norms: dict = field(default_factory=lambda: {
        "batch": "bn_uncentered", "layer": "centered", "layer2d": "centered", "group": "centered",
    })
    norm_bias: bool = False          # keep the norms' additive bias (breaks completeness)
    head_before_pool: bool = True    # v2: 1x1 B-cos classifier on the map, then global average pool
    logit_bias: float | None = None  # None: -log(num_classes - 1)
    logit_temperature: float = 1.0
    max_pool_to_avg: bool = True     # paper Sec. 3.3 removes MaxPool; v2 uses AvgPool in its place
    v1_output_scale: float | None = None  # scale_factor of v1's per-layer output divisor, None: off

    def __post_init__(self) -> None:
        if self.b < 1:
            raise ValueError(f"recipe {self.name!r}: b must be >= 1, got {self.b}")
        if self.max_out < 1:
            raise ValueError(f"recipe {self.name!r}: max_out must be >= 1, got {self.max_out}")
        for kind, choice in self.norms.items():
            if choice not in NORM_CHOICES:
                raise ValueError(f"recipe {self.name!r}: norm {kind!r} -> {choice!r}, expected one of {NORM_CHOICES}")

    def with_overrides(self, **overrides: Any) -> "Recipe":
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown recipe fields {unknown}; known: {sorted(known)}")
        if "norms" in overrides:
            overrides["norms"] = {**self.norms, **overrides["norms"]}
        return replace(self, **overrides)


RECIPES: dict[str, Recipe] = {
    # B-cos v2 (Boehle et al., TPAMI 2024): uncentered BN without bias, B=2, no MaxOut
    "v2": Recipe("v2"),
    # v2 ConvNeXt "bnu" variants: every norm becomes an uncentered batch norm
    "v2_bnu": Recipe("v2_bnu", norms={"batch": "bn_uncentered", "layer": "centered",
                                       "layer2d": "bn_uncentered", "group": "bn_uncentered"}),
    # the CVPR 2022 paper (Sec. 3.3): two MaxOut units, no norms, no activations, no MaxPool;
    # its code divides every layer by sqrt(k*k*C_in)/100 so plain stacks keep their signal
    "v1": Recipe("v1", max_out=2, norms={"batch": "none", "layer": "none", "layer2d": "none", "group": "none"},
                 v1_output_scale=100.0),
}


def resolve_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    return recipe.with_overrides(**overrides) if overrides else recipe
