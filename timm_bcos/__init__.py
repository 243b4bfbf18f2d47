"""timm_bcos: B-cos networks as timm models."""
from .layers import explanation_mode
from .version import __version__

__all__ = ["__version__", "explanation_mode"]
