"""The generic module-conversion pass (see `convert`).

walker: rule lookup and the in-place walk; rules / attention_rules: the generic rules;
table: the generic rule table; families: what a model family registers (head, own rules);
paths: where the stem, classifier and fixed terms are; model: `convert()` itself.
"""
from ..runtime import HeadSpec
from .families import register_family
from .model import convert
from .walker import KEEP, RECURSE, ConversionError, Context, Rule, RuleTable, convert_modules

__all__ = ["KEEP", "RECURSE", "ConversionError", "Context", "HeadSpec", "Rule", "RuleTable", "convert",
           "convert_modules", "register_family"]
