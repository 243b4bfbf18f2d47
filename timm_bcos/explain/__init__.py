"""Explanations of B-cos models: batched explanations, rendering, the Captum entry."""
from .captum import BcosAttribution
from .explain import explain
from .result import Explanation

__all__ = ["BcosAttribution", "Explanation", "explain"]
