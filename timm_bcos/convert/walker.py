"""The conversion walker: finds each module's rule and replaces the module by what the rule returns.

A rule is `rule(module, path, ctx)` returning a replacement module, `KEEP` (leave it) or
`RECURSE` (a container: convert its children). Rules are looked up along the module's
class hierarchy, then by a marker attribute; a leaf module without a rule raises
`ConversionError` naming its type and path, so nothing conventional is left behind silently.
"""
from __future__ import annotations

import contextlib
import importlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .recipes import Recipe
from .composites import is_certified


class ConversionError(TypeError):
    """A module that the conversion pass cannot turn into a B-cos module."""


@dataclass
class Context:
    """What the rules of one conversion know about the model being converted."""

    recipe: Recipe
    carry_weights: bool
    first_conv: str | None
    classifier: str | None
    classifier_as_conv: bool
    stem_convs: frozenset = frozenset()  # every conv that reads the raw image (gets the encoded input)
    fixed_terms: list = field(default_factory=list)  # input-independent additive terms (paths), see explain
    image_modules: frozenset = frozenset()  # leaf modules registered before the first conv (they read the image)
    first_conv_in: int = 3                  # input channels of the first conv
    encoded_upstream: dict = field(default_factory=dict)  # conv path -> pixel blocks of an encoded space-to-depth
    rules: Any = None  # the RuleTable of this conversion, for rules that convert a child themselves
    uncertified: list = field(default_factory=list)  # (path, type) of composites walked into without a rule


KEEP = object()     # sentinel: leave the module as it is
RECURSE = object()  # sentinel: a container, convert its children

Rule = Callable[[nn.Module, str, Context], Any]


def keep(m: nn.Module, path: str, ctx: Context):
    """A rule: leave the module as it is (it is dynamic linear already, or holds no computation)."""
    return KEEP


def recurse(m: nn.Module, path: str, ctx: Context):
    """A rule: the module only combines its children linearly; convert the children."""
    return RECURSE


@dataclass(frozen=True)
class RuleTable:
    """Rules by module type (the nearest class in the hierarchy wins), then by marker attribute."""

    types: Mapping[type, Rule]
    markers: Mapping[str, Rule] = field(default_factory=dict)  # attribute name -> rule, for untyped modules

    def with_rules(self, rules: Mapping[type, Rule] | None) -> RuleTable:
        """This table with `rules` checked first."""
        return RuleTable({**self.types, **(rules or {})}, self.markers) if rules else self

    def find(self, module: nn.Module) -> Rule | None:
        rule, owner = _find_rule_and_class(module, self.types)
        if rule is recurse and type(module).forward is not owner.forward:
            return None  # a container subclass with a forward of its own is a composite like any other
        if rule is None:
            rule = next((r for attr, r in self.markers.items() if hasattr(module, attr)), None)
        return rule


def find_rule(module: nn.Module, rules: Mapping[type, Rule]) -> Rule | None:
    return _find_rule_and_class(module, rules)[0]


def _find_rule_and_class(module: nn.Module, rules: Mapping[type, Rule]) -> tuple[Rule | None, type | None]:
    for cls in type(module).__mro__:
        if cls in rules:
            return rules[cls], cls
    return None, None


def import_class(dotted: str) -> type:
    """The class named `dotted` ("timm.layers.mlp.SwiGLU"); one that does not import raises."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ImportError(f"timm_bcos converts {dotted}, which this timm does not have") from e


def classes_by_name(names: Mapping[str, Rule], missing_ok: bool = False) -> dict[type, Rule]:
    """{dotted class name: rule} -> {class: rule}; a name that does not import raises (is skipped
    with `missing_ok`), and so does a class named twice (one under two import paths)."""
    out: dict[type, Rule] = {}
    for dotted, rule in names.items():
        try:
            cls = import_class(dotted)
        except ImportError:
            if missing_ok:
                continue
            raise
        if cls in out:
            raise ValueError(f"{dotted} is named twice in one rule table")
        out[cls] = rule
    return out


def _on_device_of(module: nn.Module):
    """A `torch.device` context of the module's first own tensor, or a no-op when it has none."""
    t = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device(t.device) if t is not None else contextlib.nullcontext()


def convert_modules(module: nn.Module, ctx: Context, rules: RuleTable, prefix: str = "") -> nn.Module:
    """Replace every child of `module` in place by its B-cos counterpart."""
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        rule = rules.find(child)
        if rule is None:
            if next(child.children(), None) is None:
                raise ConversionError(
                    f"no B-cos rule for {type(child).__module__}.{type(child).__qualname__} at '{path}'; "
                    "pass rules={Type: rule} to convert() to add one"
                )
            if not is_certified(child):
                ctx.uncertified.append((path, type(child)))  # convert() refuses them once the walk is done
            rule = recurse
        with _on_device_of(child):  # a replacement lives where the module it replaces lived (meta included)
            new = rule(child, path, ctx)
        if new is RECURSE:
            convert_modules(child, ctx, rules, prefix=f"{path}.")
        elif new is not KEEP and new is not child:
            setattr(module, name, new)
    return module
