"""The generic module-conversion pass (see `convert`).

walker: rule lookup and the in-place walk; rules / attention_rules: the generic rules;
table: the generic rule table; families: what a model family registers (head, own rules);
paths: where the stem, classifier and fixed terms are; model: `convert()` itself;
verify: `verify()`, the per-module certificate y = J(x) x.
"""
from .runtime import HeadSpec
from .families import register_family
from .model import convert
from .verify import NotDynamicLinearError, VerifyReport, verify
from .composites import register_composite
from .walker import KEEP, RECURSE, ConversionError, Context, Rule, RuleTable, convert_modules, keep, recurse

__all__ = ["KEEP", "RECURSE", "ConversionError", "Context", "HeadSpec", "NotDynamicLinearError", "Rule", "RuleTable",
           "VerifyReport", "convert", "convert_modules", "keep", "recurse", "register_composite", "register_family", "verify"]
