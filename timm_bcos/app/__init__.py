"""The interactive explorer (`python -m timm_bcos app`), an optional extra: `pip install timm_bcos[app]`.

images (file -> RGB), engine (model, data config, explanations), views (pictures and numbers)
need no web framework; callbacks and layout are the Gradio page, imported only when it is built.
"""
from .engine import DEFAULT_MODEL, Explorer, load_model
from .images import ImageInputError, load_image

__all__ = ["DEFAULT_MODEL", "Explorer", "ImageInputError", "load_image", "load_model"]
