"""Explanations of B-cos models: the model mixin (and, later, results and rendering)."""
from .mixin import BcosModelMixin

__all__ = ["BcosModelMixin"]
