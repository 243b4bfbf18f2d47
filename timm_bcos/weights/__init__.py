"""Released B-cos v2 weights: the catalogue of release files (`catalogue`), the key renames of the
reference's state dicts (`renames`) and the timm filter that applies them on load (`timm_filter`).

The folder also holds the weights shipped inside the package (*.safetensors, package data).
"""
from .catalogue import BCOS_V2_MODELS, RELEASES, Release, fetch_release, set_hub_org, verify_release_file
from .renames import convert_bcos_v2_state_dict
from .timm_filter import bcos_v2_filter_fn

__all__ = ["BCOS_V2_MODELS", "RELEASES", "Release", "bcos_v2_filter_fn", "convert_bcos_v2_state_dict",
           "fetch_release", "set_hub_org", "verify_release_file"]
