"""The explanation-mode switch.

In explanation mode every input-dependent factor of a B-cos model (the
|cos|^(B-1) scales, norm statistics, attention matrices, gates) is detached
from the autograd graph, so that the gradient of an output with respect to
the input is its row of W_{1->l}(x) (Eqs. 13-14).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


class DetachableModule(nn.Module):
    """A module with input-dependent weights that can be detached."""

    def __init__(self) -> None:
        super().__init__()
        self.detach = False

    def set_explanation_mode(self, activate: bool = True) -> None:
        self.detach = bool(activate)

    @property
    def is_in_explanation_mode(self) -> bool:
        return self.detach


def detachable_modules(model: nn.Module) -> list[nn.Module]:
    """Every submodule (including `model`) that has an explanation mode.

    Duck-typed on `set_explanation_mode` so that the `bcos` package's modules
    are switched too.
    """
    return [m for m in model.modules() if callable(getattr(m, "set_explanation_mode", None))]


@contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every detachable module of `model` into explanation mode.

    Restores each module's previous state on exit, also when the body raises.
    """
    modules = detachable_modules(model)
    previous = [bool(getattr(m, "is_in_explanation_mode", False)) for m in modules]
    try:
        for m in modules:
            m.set_explanation_mode(True)
        yield model
    finally:
        for m, was_on in zip(modules, previous):
            m.set_explanation_mode(was_on)
