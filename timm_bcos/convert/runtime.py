"""The model runtime: what every converted model carries.

`convert()` swaps a converted model's class for a subclass of its timm class with
`BcosModelMixin` in front, so timm's own methods (forward_features, feature extraction,
grad checkpointing) keep working while the head, the classifier reset, the input-size
check and `explain` become B-cos aware. Beside its modules (the logit layer among them,
`model.logit_layer`, saved with the weights) the model carries one object, `model.bcos`
(a `BcosState`): the recipe, the head layout, the paths of its fixed terms and the
arguments a saved config re-creates it with.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from ..explain.explain import explain
from ..explain.result import Explanation
from ..layers import InputEncoding, LogitLayer, default_logit_bias, explanation_mode
from .recipes import Recipe


@dataclass(frozen=True)
class HeadSpec:
    """Where a family's head lives, for the v2 layout pool(classifier(before(x)))."""

    classifier: str                 # path of the final Linear
    pool: str                       # path of the global pooling module
    before: tuple[str, ...] = ()    # modules applied to the feature map first
    after: tuple[str, ...] = ()     # modules applied after pooling (e.g. a flatten)
    drop_rate_attr: str | None = "drop_rate"  # attribute holding the head dropout rate


@dataclass
class BcosState:
    """What a converted model carries beside its modules: `model.bcos`."""

    recipe: Recipe                  # the recipe the model was converted with
    head: HeadSpec | None           # the v2 head layout; None: the family's own head, then the logit layer
    convert_new: Callable[[nn.Module], nn.Module] = field(repr=False)  # converts modules added later (a new classifier) by the same rules
    fixed_terms: tuple[str, ...] = ()  # paths of input-independent additive terms; explain reports their shares
    model_args: dict[str, Any] = field(default_factory=dict)  # what save_pretrained writes as the config's model_args
    probed: tuple[str, ...] = ()    # paths of composites not on the certified list, certified on a float64 probe


class BcosModelMixin:
    """Adds the logit layer, the v2 head order and explanation helpers to a timm model."""

    bcos: BcosState
    logit_layer: LogitLayer

    # ------------------------------------------------------------------ explanation
    def explanation_mode(self):
        """Context manager: every detachable module in explanation mode (see `timm_bcos.explanation_mode`)."""
        return explanation_mode(self)

    def explain(self, x: Tensor, target=None, **kwargs: Any) -> Explanation:
        """Batched explanation of `target` classes (or of neurons of `layer`); see `timm_bcos.explain.explain`."""
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
    def _pool(self, spec: HeadSpec, x: Tensor) -> Tensor:
        x = self.get_submodule(spec.pool)(x)
        for path in spec.after:
            x = self.get_submodule(path)(x)
        return x

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        spec = self.bcos.head
        if spec is None:
            x = super().forward_head(x, pre_logits=pre_logits)
        else:
            for path in spec.before:
                x = self.get_submodule(path)(x)
            if pre_logits:
                return self._pool(spec, x)
            drop = float(getattr(self, spec.drop_rate_attr, 0.0) or 0.0) if spec.drop_rate_attr else 0.0
            if drop:
                x = F.dropout(x, p=drop, training=self.training)
            x = self.get_submodule(spec.classifier)(x)
            x = self._pool(spec, x)
        if pre_logits or not getattr(self, "num_classes", 0):
            return x
        return self.logit_layer(x)

    def reset_classifier(self, num_classes: int, *args: Any, **kwargs: Any) -> None:
        """timm's reset, then the new classifier is converted and the logit bias follows num_classes.

        Like timm's own heads, what this creates takes the model's device and dtype and
        its train/eval mode, whatever the family's reset_classifier does.
        """
        ref = next(self.parameters(), None)
        before = set(self.modules())  # the modules themselves, so no new one can reuse a freed id
        super().reset_classifier(num_classes, *args, **kwargs)
        self.bcos.convert_new(self)
        old = self.logit_layer.logit_bias
        self.logit_layer = make_logit_layer(self.bcos.recipe, num_classes).to(device=old.device, dtype=old.dtype)
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


def make_logit_layer(recipe: Recipe, num_classes: int) -> LogitLayer:
    bias = recipe.logit_bias if recipe.logit_bias is not None else default_logit_bias(num_classes)
    return LogitLayer(bias, recipe.logit_temperature)


def _bcos_class(cls: type) -> type:
    """A cached subclass (BcosModelMixin, cls), named in this module's namespace. (Whole models do not
    pickle: `model.bcos.convert_new` holds the conversion rules; save state dicts, as timm does.)"""
    if issubclass(cls, BcosModelMixin):
        return cls
    name = f"Bcos{cls.__name__}_{cls.__module__.replace('.', '_')}"
    module = sys.modules[__name__]
    new_cls = getattr(module, name, None)
    if new_cls is None:
        new_cls = type(name, (BcosModelMixin, cls), {"__module__": __name__, "__qualname__": name})
        setattr(module, name, new_cls)
    return new_cls


def attach_runtime(model: nn.Module, state: BcosState, num_classes: int) -> BcosModelMixin:
    """Give a converted `model` the runtime: the mixin class, `model.bcos` and a logit layer for `num_classes`."""
    model.__class__ = _bcos_class(type(model))
    model.bcos = state
    ref = next(itertools.chain(model.parameters(), model.buffers()), None)
    model.logit_layer = make_logit_layer(state.recipe, num_classes).to(ref.device if ref is not None else None)
    return model


def bcos_state(model: nn.Module) -> BcosState | None:
    """The runtime state of a converted model, None for any other module."""
    state = getattr(model, "bcos", None)
    return state if isinstance(state, BcosState) else None
