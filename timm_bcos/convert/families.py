"""What a model family adds to the generic conversion: its v2 head layout and its own rules.

A family's file (e.g. `timm_bcos/models/bcos_inception.py`) registers them when timm_bcos is
imported. The head belongs to the model class; the rules are keyed by the family's own block
types and apply wherever those blocks appear: the family's bcos_* entrypoint,
`timm_bcos.convert(timm.create_model(...))`, a model wrapped in another module or built with
`features_only=True`, or a saved config rebuilt by `bcos_converted`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Union

from torch import nn

from .runtime import HeadSpec
from .walker import Rule


# A family's head: a fixed layout, or one chosen per model: (model, carry_weights) -> HeadSpec | None
HeadChoice = Union[HeadSpec, None, Callable[[nn.Module, bool], Union[HeadSpec, None]]]


@dataclass(frozen=True)
class Family:
    head: HeadChoice = None         # the v2 head layout pool(classifier(before(x))); None: keep the family's head
    rules: Mapping[type, Rule] = field(default_factory=dict)  # keyed by the family's block types

    def head_for(self, model: nn.Module, carry_weights: bool) -> HeadSpec | None:
        """The head layout for this model; with carry_weights, one that keeps B=1 equal to the model."""
        return self.head(model, carry_weights) if callable(self.head) else self.head


_FAMILIES: dict[type, Family] = {}
_NONE = Family()


def register_family(model_class: type, *, head: HeadChoice = None,
                    rules: Mapping[type, Rule] | None = None) -> None:
    """Convert every `model_class` (and subclass) with `head` and `rules` on top of the generic table."""
    if model_class in _FAMILIES:
        raise ValueError(f"{model_class.__qualname__} is registered twice; a one-off conversion can pass "
                         f"convert(model, head=..., rules=...) instead")
    rules = dict(rules or {})
    taken = {t.__qualname__ for t in rules if t in block_rules()}
    if taken:
        raise ValueError(f"{model_class.__qualname__}: another family already has rules for {sorted(taken)}")
    _FAMILIES[model_class] = Family(head, rules)


def block_rules() -> dict[type, Rule]:
    """Every family's own rules, each keyed by that family's block types."""
    merged: dict[type, Rule] = {}
    for family in _FAMILIES.values():
        merged.update(family.rules)
    return merged


def family_of(model: nn.Module) -> Family:
    """The registered family of `model`'s class, nearest in its class hierarchy; an empty one if none."""
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    return _NONE
