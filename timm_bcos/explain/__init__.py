"""Explanations of B-cos models: the model mixin, batched explanations, rendering."""
from .explain import explain
from .mixin import BcosModelMixin
from .result import Explanation

__all__ = ["BcosModelMixin", "Explanation", "explain"]
