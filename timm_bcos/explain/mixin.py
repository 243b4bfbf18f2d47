"""The mixin every timm_bcos model carries.

`convert()` swaps a converted model's class for a subclass of its timm class
with this mixin in front, so timm's own methods (forward_features, feature
extraction, grad checkpointing) keep working while the head, the classifier
reset and the explanation hooks become B-cos aware.
"""
from __future__ import annotations

import itertools
import sys
from typing import Any

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import InputEncoding, LogitLayer, default_logit_bias, explanation_mode


class BcosModelMixin:
    """Adds the logit layer, the v2 head order and explanation helpers to a timm model."""

    bcos_head: Any

    @property
    def bcos_recipe(self):
        """The recipe this model was converted with."""
        return self._bcos_context.recipe

    # ------------------------------------------------------------------ explanation
    def explanation_mode(self):
        """Context manager: every detachable module in explanation mode (see `timm_bcos.explanation_mode`)."""
        return explanation_mode(self)

    def explain(self, x: Tensor, target=None, **kwargs: Any):
        """Batched explanation of `target` classes (or of neurons of `layer`); see `timm_bcos.explain.explain`."""
        from .explain import explain

        return explain(self, x, target, **kwargs)

    def input_encoding(self) -> InputEncoding:
        """The model's input-encoding module (explanations are taken w.r.t. its output)."""
        for m in self.modules():
            if isinstance(m, InputEncoding):
                return m
        raise RuntimeError(f"{type(self).__name__} has no InputEncoding module")

    # ------------------------------------------------------------------ input checks
    def forward_features(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        cfg = getattr(self, "pretrained_cfg", None) or {}
        min_size = cfg.get("min_input_size")
        if min_size is not None and not isinstance(x, torch.fx.Proxy):  # a traced graph is shape-agnostic
            check_min_input_size(x, tuple(min_size), cfg.get("architecture") or type(self).__name__)
        return super().forward_features(x, *args, **kwargs)

    # ------------------------------------------------------------------ head
    def _submodule(self, path: str) -> nn.Module:
        return self.get_submodule(path)

    def _pool(self, spec: Any, x: Tensor) -> Tensor:
        x = self._submodule(spec.pool)(x)
        for path in spec.after:
            x = self._submodule(path)(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        spec = self.bcos_head
        if spec is None:
            x = super().forward_head(x, pre_logits=pre_logits)
        else:
            for path in spec.before:
                x = self._submodule(path)(x)
            if pre_logits:
                return self._pool(spec, x)
            drop = float(getattr(self, spec.drop_rate_attr, 0.0) or 0.0) if spec.drop_rate_attr else 0.0
            if drop:
                x = F.dropout(x, p=drop, training=self.training)
            x = self._submodule(spec.classifier)(x)
            x = self._pool(spec, x)
        if pre_logits or not getattr(self, "num_classes", 0):
            return x
        return self.logit_layer(x)

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        """timm's reset, then the new classifier is converted and the logit bias follows num_classes.

        Like timm's own heads, what this creates takes the model's device and dtype and
        its train/eval mode, whatever the family's reset_classifier does.
        """
        from ..convert import convert_modules

        ref = next(self.parameters(), None)
        before = set(self.modules())  # the modules themselves, so no new one can reuse a freed id
        super().reset_classifier(num_classes, *args, **kwargs)
        ctx = self._bcos_context
        ctx.carry_weights = False
        convert_modules(self, ctx, self._bcos_rules)
        old = self.logit_layer.logit_bias
        self.logit_layer = _make_logit_layer(self.bcos_recipe, num_classes).to(device=old.device, dtype=old.dtype)
        for m in self.modules():
            if m not in before:
                m.train(self.training)
                if ref is not None and m is not self.logit_layer:
                    m.to(device=ref.device, dtype=ref.dtype)


def check_min_input_size(x: Tensor, min_size: tuple, name: str) -> None:
    """A clear error for images smaller than the model's `min_input_size`."""
    if x.dim() == 4 and (x.shape[-2] < min_size[-2] or x.shape[-1] < min_size[-1]):
        raise ValueError(f"{name} needs images of at least {min_size[-2]}x{min_size[-1]} pixels, "
                         f"got {x.shape[-2]}x{x.shape[-1]}")


def _make_logit_layer(recipe: Any, num_classes: int) -> LogitLayer:
    bias = recipe.logit_bias if recipe.logit_bias is not None else default_logit_bias(num_classes)
    return LogitLayer(bias, recipe.logit_temperature)


def _bcos_class(cls: type) -> type:
    """A cached subclass (BcosModelMixin, cls), importable from this module so models pickle."""
    if issubclass(cls, BcosModelMixin):
        return cls
    name = f"Bcos{cls.__name__}_{cls.__module__.replace('.', '_')}"
    module = sys.modules[__name__]
    new_cls = getattr(module, name, None)
    if new_cls is None:
        new_cls = type(name, (BcosModelMixin, cls), {"__module__": __name__, "__qualname__": name})
        setattr(module, name, new_cls)
    return new_cls


def attach_bcos_mixin(model: nn.Module, recipe: Any, head: Any, ctx: Any, rules: dict, num_classes: int) -> nn.Module:
    model.__class__ = _bcos_class(type(model))
    model.bcos_head = head
    model._bcos_context = ctx
    model._bcos_rules = rules
    ref = next(itertools.chain(model.parameters(), model.buffers()), None)
    model.logit_layer = _make_logit_layer(recipe, num_classes).to(ref.device if ref is not None else None)
    return model
