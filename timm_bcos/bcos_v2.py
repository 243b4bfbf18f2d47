"""Deprecated name: the reference weights' catalogue, key renames and timm filter now live in
`timm_bcos.weights` (one module each). This module keeps old imports working for a while."""
import warnings

from .weights import *  # noqa: F401,F403
from .weights import __all__  # noqa: F401

warnings.warn("timm_bcos.bcos_v2 is now timm_bcos.weights", DeprecationWarning, stacklevel=2)
