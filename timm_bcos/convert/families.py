"""What a model family adds to the generic conversion: its v2 head layout and its own rules.

A family's file (e.g. `timm_bcos/models/bcos_inception.py`) registers them for its model
class when timm_bcos is imported, so `convert()` applies them to that family wherever the
model comes from: its bcos_* entrypoint, `timm_bcos.convert(timm.create_model(...))`, or a
saved config rebuilt by `bcos_converted`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from ..runtime import HeadSpec
from .walker import Rule


@dataclass(frozen=True)
class Family:
    head: HeadSpec | None = None    # the v2 head layout pool(classifier(before(x))); None: keep the family's head
    rules: Mapping[type, Rule] = field(default_factory=dict)  # checked before the generic table


_FAMILIES: dict[type, Family] = {}
_NONE = Family()


def register_family(model_class: type, *, head: HeadSpec | None = None,
                    rules: Mapping[type, Rule] | None = None) -> None:
    """Convert every `model_class` (and subclass) with `head` and `rules` on top of the generic table."""
    if model_class in _FAMILIES:
        raise ValueError(f"{model_class.__qualname__} is registered twice")
    _FAMILIES[model_class] = Family(head, dict(rules or {}))


def family_of(model: nn.Module) -> Family:
    """The registered family of `model`'s class, nearest in its class hierarchy; an empty one if none."""
    for cls in type(model).__mro__:
        if cls in _FAMILIES:
            return _FAMILIES[cls]
    return _NONE
