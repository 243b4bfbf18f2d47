"""`convert()`: a conventional (timm) model in, a B-cos model out.

The walker applies the generic rule table, with the model family's own rules and the
caller's on top; families whose head must change shape (v2: 1x1 B-cos classifier before
global pooling) register a `HeadSpec`. Anything without a rule raises `ConversionError`
naming its type and path. The converted model gets the runtime (`timm_bcos.convert.runtime`).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import replace
from typing import Any, Mapping

from torch import nn

from ..layers import learn_b
from .origin import record_origin
from .recipes import Recipe, resolve_recipe
from .runtime import BcosModelMixin, BcosState, HeadSpec, attach_runtime
from . import paths
from .certify import certify_composites
from .families import block_rules, family_of
from .table import GENERIC_RULES
from .walker import ConversionError, Context, Rule, convert_modules, find_rule


def _context(model: nn.Module, recipe: Recipe, spec: HeadSpec | None, carry_weights: bool) -> Context:
    first = paths.first_conv_path(model)
    if first is None:
        raise ConversionError(f"{type(model).__name__} has no Conv2d to carry the input encoding")
    return Context(
        recipe=recipe,
        carry_weights=carry_weights,
        first_conv=first,
        classifier=paths.classifier_path(model, spec),
        classifier_as_conv=spec is not None,
        stem_convs=paths.stem_conv_paths(model, first),
        first_conv_in=model.get_submodule(first).in_channels,
        image_modules=paths.image_modules(model, first),
    )


def _with_input_norm(r: Recipe, model: nn.Module) -> Recipe:
    """A recipe that normalises the input takes the mean/std the base model's weights expect
    (its pretrained cfg), unless it names them; the resolved values go into the saved config."""
    if not r.normalize_input or (r.input_mean is not None and r.input_std is not None):
        return r
    cfg = getattr(model, "pretrained_cfg", None) or {}
    mean, std = r.input_mean or cfg.get("mean"), r.input_std or cfg.get("std")
    if mean is None or std is None:
        raise ConversionError(f"recipe {r.name!r} normalises the input with the mean/std the base model "
                              f"expects, but {type(model).__name__} has no pretrained_cfg mean/std: "
                              "pass input_mean=(...), input_std=(...)")
    return r.with_overrides(input_mean=tuple(mean), input_std=tuple(std))


def _refuse_uncertified(ctx: Context) -> None:
    """A model on the meta device cannot run a probe: its unknown composites are refused unchecked."""
    types = {t: p for p, t in reversed(ctx.uncertified)}
    listed = "\n".join(f"  {t.__module__}.{t.__qualname__} (at '{p}')" for t, p in types.items())
    raise ConversionError(
        "composite modules without a B-cos rule, which a model without data (meta device) cannot certify on a "
        f"probe; their own forward may compute something that is not dynamic linear:\n{listed}\nIf a forward only "
        "combines its children linearly (sums, concatenations, reshapes, detached gates), pass rules={Type: "
        "recurse, ...} (from timm_bcos.convert import recurse) to convert() and certify the result with "
        "timm_bcos.verify(model, images)")


def _convert_new(module: nn.Module, ctx, rules) -> nn.Module:
    """A module added after conversion (a new classifier), converted by the model's rules."""
    module = convert_modules(module, ctx, rules)
    if ctx.recipe.learn_b:
        learn_b(module)
    return module


def convert(
    model: nn.Module,
    recipe: str | Recipe = "v2",
    *,
    carry_weights: bool = False,
    head: HeadSpec | None | str = "auto",
    rules: Mapping[type, Rule] | None = None,
    num_classes: int | None = None,
    **overrides: Any,
) -> BcosModelMixin:
    """Turn `model` into a B-cos model in place and return it.

    recipe: "v2", "v2_bnu", "v1", "bcosify" or a `Recipe`; `overrides` replace recipe fields
        (b=2.5, max_out=2, logit_bias=..., norms={"batch": "none"}, ...).
    carry_weights: copy the conventional weights over (B-cosification);
        otherwise the B-cos layers keep their own initialisation.
    head: a `HeadSpec`, "auto" (the registered one for the model's family) or None
        (keep the family's own head: pool, then a B-cos linear classifier).
    rules: extra {module type: rule} entries, checked before the families' and the generic table.
    """
    if not (head == "auto" or head is None or isinstance(head, HeadSpec)):
        raise TypeError(f"convert(head=...) takes 'auto', None or a HeadSpec, got {head!r}")
    r = resolve_recipe(recipe, **overrides)
    family = family_of(model)
    default = family.head_for(model, carry_weights=False)  # what a rebuild from the config gets
    spec = family.head_for(model, carry_weights) if head == "auto" else head
    if not r.head_before_pool:
        spec = None
    if find_rule(model, rules or {}) is not None:
        raise ConversionError("convert() takes a whole model; use its rules on submodules directly")
    table = GENERIC_RULES.with_rules(block_rules()).with_rules(rules)  # blocks convert wherever they sit
    r = _with_input_norm(r, model)
    ctx = replace(_context(model, r, spec, carry_weights), rules=table)
    convert_modules(model, ctx, table)
    on_meta = any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))
    if ctx.uncertified and on_meta:
        _refuse_uncertified(ctx)
    if r.learn_b:
        learn_b(model)
    if num_classes is None:
        num_classes = getattr(model, "num_classes", 0)
    record_origin(model, r, spec, default)  # so that a saved config rebuilds it
    reconvert = functools.partial(_convert_new, ctx=replace(ctx, carry_weights=False), rules=table)
    fixed_terms = paths.fixed_term_paths(model, ctx)  # explain() reports their shares beside the contributions
    model = attach_runtime(model, BcosState(r, spec, reconvert, fixed_terms), num_classes)
    if ctx.uncertified:  # composites the list does not know: certified on a probe, or refused by name
        model.bcos.probed = tuple(certify_composites(model, ctx.uncertified))
    return model
