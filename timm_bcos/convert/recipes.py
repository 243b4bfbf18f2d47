"""Recipes: the choices that turn a conventional network into a B-cos network."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

# How each kind of conventional norm is replaced:
#   "bn_uncentered": BatchNormUncentered2d   "uncentered": uncentered version of the same norm
#   "centered": detachable centered version  "none": removed (Identity)
NORM_CHOICES = ("bn_uncentered", "uncentered", "centered", "none")
# What happens to activations:
#   "remove": every activation goes (paper Sec. 3.3, B-cos v2)
#   "bcosify": B-cosification (Arya et al. 2024, Sec. 3.2): piecewise-linear ones (ReLU, LeakyReLU,
#       PReLU) stay, they are dynamic linear already; self-gated ones x * g(x) (GELU, SiLU, ...)
#       become x * g(x) with g detached in explanation mode; the others are removed
ACTIVATION_CHOICES = ("remove", "bcosify")
# How the first conv's weights for the inverse channels [1-r, 1-g, 1-b] start (carry_weights):
#   "zero": [W, 0] (v2 fine-tuning)   "half_negated": [W, -W] / 2, which on the normalised encoding
#   [n, -n] equals the conventional conv W n (B-cosification, Sec. 3.2)
STEM_CHOICES = ("zero", "half_negated")


@dataclass(frozen=True)
class Recipe:
    """The choices of one conversion: B, MaxOut, norms, biases, head layout, activations, input encoding.

    `RECIPES` holds the named ones (`v2`, `v2_bnu`, `v1`, `bcosify`); `with_overrides(**fields)` (or keyword
    arguments to `convert` and the entrypoints) changes fields. Every field with its value per recipe:
    docs/reference/recipe-fields.md."""

    name: str
    b: float = 2.0                   # B of every B-cos layer (Eq. 9): the alignment pressure; B=1 is linear
    max_out: int = 1                 # MaxOut units per output channel (the paper's v1: 2)
    norms: dict = field(default_factory=lambda: {  # per kind of norm: one of NORM_CHOICES
        "batch": "bn_uncentered", "layer": "centered", "layer2d": "centered", "group": "centered",
    })
    norm_bias: bool = False          # keep the norms' additive bias (breaks completeness)
    head_before_pool: bool = True    # v2: 1x1 B-cos classifier on the map, then global average pool
    logit_bias: float | None = None  # None: -log(num_classes - 1)
    logit_temperature: float = 1.0   # the logits are divided by it before the logit bias is added
    max_pool_to_avg: bool = True     # paper Sec. 3.3 removes MaxPool; v2 uses AvgPool in its place
    v1_output_scale: float | None = None  # scale_factor of v1's per-layer output divisor, None: off
    weight_norm: bool = True         # unit-norm weight rows (Eq. 3); False: the weights keep their scale
    linear_bias: bool = False        # keep conv/linear biases (B=1 with them is the conventional model)
    activations: str = "remove"      # "remove": all go (v2); "bcosify": ReLU-like kept, x*g(x) gated, others go
    stem_init: str = "zero"          # first conv on [x, 1-x] from carried W: "zero" [W, 0], "half_negated" [W, -W]/2
    normalize_input: bool = False    # normalise the encoded input with the base model's mean/std
    input_mean: tuple | None = None  # that mean/std (3 channels); None: the base model's cfg at conversion
    input_std: tuple | None = None   # (see input_mean)
    learn_b: bool = False            # B a learned scalar per B-cos layer, starting at b (B-cosification's ablation)

    def __post_init__(self) -> None:
        for name in ("input_mean", "input_std"):  # a JSON config gives lists
            if getattr(self, name) is not None:
                object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if self.activations not in ACTIVATION_CHOICES:
            raise ValueError(f"recipe {self.name!r}: activations={self.activations!r}, expected one of "
                             f"{ACTIVATION_CHOICES}")
        if self.stem_init not in STEM_CHOICES:
            raise ValueError(f"recipe {self.name!r}: stem_init={self.stem_init!r}, expected one of {STEM_CHOICES}")
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
    # B-cosification (Arya, Rao, Boehle, Schiele, NeurIPS 2024): start from a pretrained conventional
    # model so that B=1 with its biases *is* that model (Sec. 3.1), then B=2 without biases (Sec. 3.2):
    # normalised [x, 1-x] input with the first conv at [W, -W]/2, weights keep their scale, ReLU kept,
    # GELU a detached gate, uncentered norms carrying their statistics, MaxPool -> AvgPool, the
    # classifier as a 1x1 B-cos conv before pooling, and the logit bias
    "bcosify": Recipe("bcosify", weight_norm=False, activations="bcosify", stem_init="half_negated",
                      normalize_input=True),
}


def resolve_recipe(recipe: str | Recipe, **overrides: Any) -> Recipe:
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise ValueError(f"unknown recipe {recipe!r}; available: {sorted(RECIPES)}")
        recipe = RECIPES[recipe]
    return recipe.with_overrides(**overrides) if overrides else recipe
