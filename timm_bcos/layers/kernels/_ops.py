"""Importing this module imports triton and defines the kernels (each compiles at its first launch)."""
from ._batch_norm import batch_norm_uncentered
from ._bcos_conv import bcos_conv2d
from ._bcos_scale import bcos_scale
from ._patch_norm import patch_norm

__all__ = ["batch_norm_uncentered", "bcos_conv2d", "bcos_scale", "patch_norm"]
