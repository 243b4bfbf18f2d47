"""timm_bcos: B-cos networks as timm models. Importing it registers the bcos_* entrypoints."""
from . import models  # noqa: F401  (registers the entrypoints with timm)
from .convert import ConversionError, HeadSpec, NotDynamicLinearError, convert, verify
from .layers import explanation_mode
from .convert.recipes import RECIPES, Recipe
from .version import __version__

__all__ = ["ConversionError", "HeadSpec", "NotDynamicLinearError", "RECIPES", "Recipe", "__version__", "convert",
           "explanation_mode", "verify"]
