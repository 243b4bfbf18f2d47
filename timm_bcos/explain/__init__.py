"""Explanations of B-cos models: the model mixin, batched explanations, rendering."""
from .captum import BcosAttribution
from .explain import explain
from .mixin import BcosModelMixin
from .result import Explanation

__all__ = ["BcosAttribution", "BcosModelMixin", "Explanation", "explain"]
