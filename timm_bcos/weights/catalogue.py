"""The catalogue of B-cos v2 checkpoints (`pip install bcos`, release v0.0.1-weights): which reference
architecture each `bcos_*` model reproduces, the released files with their published accuracy, and
the timm pretrained cfgs that point at them (release .pth files, or the converted Hub repos).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Callable

from timm.models._hub import download_cached_file  # in _hub.__all__, not re-exported by timm.models
from torch.hub import HASH_REGEX

# bcos.models.pretrained entrypoint -> timm_bcos model name
BCOS_V2_MODELS: dict[str, str] = {
    "resnet18": "bcos_resnet18",
    "resnet34": "bcos_resnet34",
    "resnet50": "bcos_resnet50",
    "resnet101": "bcos_resnet101",
    "resnet152": "bcos_resnet152",
    "resnext50_32x4d": "bcos_resnext50_32x4d",
    "resnet50_long": "bcos_resnet50",
    "resnet152_long": "bcos_resnet152",
    "densenet121": "bcos_densenet121",
    "densenet161": "bcos_densenet161",
    "densenet169": "bcos_densenet169",
    "densenet201": "bcos_densenet201",
    "densenet121_long": "bcos_densenet121",
    "vgg11_bnu": "bcos_vgg11_bnu",
    "convnext_tiny": "bcos_convnext_tiny",
    "convnext_base": "bcos_convnext_base",
    "convnext_tiny_bnu": "bcos_convnext_tiny_bnu",
    "convnext_base_bnu": "bcos_convnext_base_bnu",
    **{f"simple_vit_{s}_patch16_224": f"bcos_simple_vit_{s}_patch16_224" for s in ("ti", "s", "b", "l")},
    **{f"vitc_{s}_patch1_14": f"bcos_vitc_{s}_patch1_14" for s in ("ti", "s", "b", "l")},
}

RELEASE_BASE = "https://github.com/B-cos/B-cos-v2/releases/download/v0.0.1-weights"

# The one switch to the Hub: once the converted repos are published (hub/publish.py),
# `set_hub_org(ORG)` (or TIMM_BCOS_HUB_ORG=ORG in the environment before the import) and
# pretrained=True downloads the safetensors repos instead of the release .pth files.
HUB_ORG: str | None = None  # what set_hub_org last set; assigning it directly changes nothing


@dataclass(frozen=True)
class Release:
    bcos_name: str     # bcos.models.pretrained entrypoint
    model: str         # timm_bcos model name
    tag: str           # timm pretrained tag
    file: str          # release file name
    top1: float        # published ImageNet top-1 / top-5 (bcos package README)
    top5: float
    eval_resize: int = 256  # the reference's evaluation: Resize(eval_resize) -> CenterCrop(224), bilinear

    @property
    def url(self) -> str:
        return f"{RELEASE_BASE}/{self.file}"

    @property
    def hub_repo(self) -> str:
        return f"{self.model}.{self.tag}"


RELEASES: tuple[Release, ...] = (
    Release("resnet18", "bcos_resnet18", "bcos_v2_in1k", "resnet_18-68b4160fff.pth", 68.736, 87.430),
    Release("resnet34", "bcos_resnet34", "bcos_v2_in1k", "resnet_34-a63425a03e.pth", 72.284, 90.052),
    Release("resnet50", "bcos_resnet50", "bcos_v2_in1k", "resnet_50-ead259efe4.pth", 75.882, 92.064),
    Release("resnet101", "bcos_resnet101", "bcos_v2_in1k", "resnet_101-84c3658278.pth", 76.532, 92.538),
    Release("resnet152", "bcos_resnet152", "bcos_v2_in1k", "resnet_152-42051a77c1.pth", 76.484, 92.398),
    Release("resnext50_32x4d", "bcos_resnext50_32x4d", "bcos_v2_in1k", "resnext_50_32x4d-57af241ab9.pth", 75.820, 91.810),
    Release("densenet121", "bcos_densenet121", "bcos_v2_in1k", "densenet_121-b8daf96afb.pth", 73.612, 91.106),
    Release("densenet161", "bcos_densenet161", "bcos_v2_in1k", "densenet_161-9e9ea51353.pth", 76.622, 92.554),
    Release("densenet169", "bcos_densenet169", "bcos_v2_in1k", "densenet_169-7037ee0604.pth", 75.186, 91.786),
    Release("densenet201", "bcos_densenet201", "bcos_v2_in1k", "densenet_201-00ac87066f.pth", 75.480, 91.992),
    Release("vgg11_bnu", "bcos_vgg11_bnu", "bcos_v2_in1k", "vgg_11_bnu-34036029f0.pth", 69.310, 88.388),
    Release("convnext_tiny", "bcos_convnext_tiny", "bcos_v2_in1k", "convnext_tiny_pn-539b1bfb37.pth",
            77.488, 93.192, 232),
    Release("convnext_base", "bcos_convnext_base", "bcos_v2_in1k", "convnext_base_pn-b0495852c6.pth",
            79.650, 94.614, 232),
    Release("convnext_tiny_bnu", "bcos_convnext_tiny_bnu", "bcos_v2_in1k", "convnext_tiny_bnu-dbd7f5ef9d.pth",
            76.826, 93.090, 232),
    Release("convnext_base_bnu", "bcos_convnext_base_bnu", "bcos_v2_in1k", "convnext_base_bnu-7c32a704b3.pth",
            80.142, 94.834, 232),
    Release("densenet121_long", "bcos_densenet121", "bcos_v2_long_in1k", "densenet_121_long-5175461597.pth",
            77.302, 93.234, 232),
    Release("resnet50_long", "bcos_resnet50", "bcos_v2_long_in1k", "resnet_50_long-ef38a88533.pth",
            79.468, 94.452, 232),
    Release("resnet152_long", "bcos_resnet152", "bcos_v2_long_in1k", "resnet_152_long-0b4b434939.pth",
            80.144, 94.116, 232),
    Release("simple_vit_ti_patch16_224", "bcos_simple_vit_ti_patch16_224", "bcos_v2_in1k",
            "bcos_simple_vit_ti_patch16_224-4b0824b1c1.pth", 59.960, 81.838),
    Release("simple_vit_s_patch16_224", "bcos_simple_vit_s_patch16_224", "bcos_v2_in1k",
            "bcos_simple_vit_s_patch16_224-75e99d1f73.pth", 69.246, 88.096),
    Release("simple_vit_b_patch16_224", "bcos_simple_vit_b_patch16_224", "bcos_v2_in1k",
            "bcos_simple_vit_b_patch16_224-1fc4750806.pth", 74.408, 91.156),
    Release("simple_vit_l_patch16_224", "bcos_simple_vit_l_patch16_224", "bcos_v2_in1k",
            "bcos_simple_vit_l_patch16_224-9613b2ad0a.pth", 75.060, 91.378),
    Release("vitc_ti_patch1_14", "bcos_vitc_ti_patch1_14", "bcos_v2_in1k", "bcos_vitc_ti_patch1_14-ddd6193a77.pth",
            67.260, 86.774),
    Release("vitc_s_patch1_14", "bcos_vitc_s_patch1_14", "bcos_v2_in1k", "bcos_vitc_s_patch1_14-cf55c88f0c.pth",
            74.504, 91.288),
    Release("vitc_b_patch1_14", "bcos_vitc_b_patch1_14", "bcos_v2_in1k", "bcos_vitc_b_patch1_14-a13c46397b.pth",
            77.152, 92.926),
    Release("vitc_l_patch1_14", "bcos_vitc_l_patch1_14", "bcos_v2_in1k", "bcos_vitc_l_patch1_14-8739e18b8d.pth",
            77.782, 92.966),
)


def verify_release_file(path: str | os.PathLike) -> None:
    """Release files are named <name>-<sha256 prefix>.pth (torch.hub's convention; the reference
    loads them with check_hash=True): a file whose hash does not match is refused."""
    match = HASH_REGEX.search(os.path.basename(path))
    if not match:
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(match.group(1)):
        raise RuntimeError(f"{path}: its sha256 begins {digest.hexdigest()[:len(match.group(1))]}, the release "
                           f"file's begins {match.group(1)}; it is damaged or another file: delete it and retry")


def fetch_release(url: str, cache_dir: str | None = None) -> str:
    """Download a release file into timm's cache (hash checked on download) and verify the cached copy."""
    path = download_cached_file(url, check_hash=True, cache_dir=cache_dir)
    verify_release_file(path)
    return path


def hub_org() -> str | None:
    return HUB_ORG or os.environ.get("TIMM_BCOS_HUB_ORG")


def set_hub_org(org: str | None) -> None:
    """Point the released tags at ORG/<model>.<tag> on the Hub (None: back to the release files).

    The cfgs live in timm's registry once the models are imported, so they are updated there.
    """
    from timm.models._registry import _model_pretrained_cfgs  # timm has no public setter

    global HUB_ORG
    HUB_ORG = org
    org = hub_org()
    for r in RELEASES:
        cfg = _model_pretrained_cfgs.get(f"{r.model}.{r.tag}")
        if cfg is not None:
            cfg.hf_hub_id, cfg.url = (f"{org}/{r.hub_repo}", "") if org else (None, r.url)


def released_cfgs(model: str, make_cfg: Callable[..., dict]) -> dict[str, dict]:
    """timm pretrained cfgs ("<model>.<tag>") of the released checkpoints of `model`."""
    org = hub_org()
    out = {}
    for r in RELEASES:
        if r.model != model:
            continue
        source = dict(hf_hub_id=f"{org}/{r.hub_repo}") if org else dict(url=r.url)
        out[f"{r.model}.{r.tag}"] = make_cfg(
            **source,
            crop_pct=224 / r.eval_resize,  # timm resizes to floor(224 / crop_pct) = eval_resize
            paper_ids="arXiv:2306.10898",  # the v2 paper (these are B-cos v2 weights)
            license="other",  # ImageNet-derived weights: research, non-commercial
            origin_url="https://github.com/B-cos/B-cos-v2",
            paper_name="B-cos Alignment for Inherently Interpretable CNNs and Vision Transformers",
            notes=(f"B-cos v2 release weights ({r.file}), converted on load by timm_bcos; "
                   f"published ImageNet-1k top-1 {r.top1:.3f}, top-5 {r.top5:.3f}",),
        )
    return out
