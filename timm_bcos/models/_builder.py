"""Shared pieces of the bcos_* entrypoints: cfgs and "create the timm model, convert it"."""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import fields
from typing import Any, Callable, Iterator

import timm
from timm.models import build_model_with_cfg, resolve_pretrained_cfg

from ..convert import HeadSpec, convert
from ..convert.recipes import Recipe, resolve_recipe
from ..convert.runtime import BcosModelMixin
from ..weights.catalogue import RELEASES, fetch_release, released_cfgs
from ..weights.timm_filter import bcos_v2_filter_fn

# B-cos models take plain [0, 1] RGB (the [x, 1-x] encoding is their first layer).
BCOS_MEAN = (0.0, 0.0, 0.0)
BCOS_STD = (1.0, 1.0, 1.0)

RECIPE_KWARGS = {f.name for f in fields(Recipe)} - {"name"}
# timm kwargs that shape the model and so belong in a saved config's model_args
_ARCH_KWARGS = {"num_classes", "global_pool", "drop_rate", "drop_path_rate"}


def bcos_cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    """timm pretrained cfg with the B-cos v2 evaluation transform (resize 256, crop 224, bilinear)."""
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bilinear",
        "mean": BCOS_MEAN,
        "std": BCOS_STD,
        "license": "apache-2.0",
        "paper_ids": "arXiv:2205.10268",
        **kwargs,
    }


def model_cfgs(models: list[str], make_cfg: Callable[..., dict],
               releases: Callable[[str, Callable[..., dict]], dict[str, dict]] = released_cfgs) -> dict[str, dict]:
    """For each model: its released weights' tags first (the default for pretrained=True), then `.untrained`."""
    cfgs: dict[str, dict] = {}
    for name in models:
        cfgs.update(releases(name, make_cfg))
        cfgs[f"{name}.untrained"] = make_cfg()
    return cfgs


def _weights_source(variant: str, kwargs: dict[str, Any]) -> tuple[str, str] | None:
    """(cfg key, location) of the weights timm would read: a file, a Hub repo or a URL; None when there are none."""
    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
    except Exception:  # timm's builder meets the same error, which _pretrained_weights reports
        return "", "its pretrained cfg"
    for key in ("file", "hf_hub_id", "url"):
        where = getattr(cfg, key)
        if where:
            if key == "file" and os.path.isdir(where):  # local-dir: the weights file inside the folder
                where = next((os.path.join(where, name) for name in ("model.safetensors", "pytorch_model.bin")
                              if os.path.exists(os.path.join(where, name))), where)
            return key, where
    return None


@contextmanager
def _pretrained_weights(variant: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """Around timm's builder when it loads weights: a tag without weights is refused (timm would only
    log a warning and hand back random weights), a release file is fetched hash-checked first (timm
    then reads the cached copy), and any failure names where the weights came from."""
    source = _weights_source(variant, kwargs)
    if source is None:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        raise RuntimeError(f"could not load pretrained weights for {variant}.{cfg.tag} from nowhere: this tag has "
                           f"no weights (see timm.list_pretrained('bcos_*')). {' '.join(cfg.notes or ())}".rstrip())
    key, where = source
    try:
        if key == "url" and any(where == r.url for r in RELEASES):
            fetch_release(where, kwargs.get("cache_dir"))
        yield
    except Exception as e:
        hint = ("; with a copy of the file: timm.create_model(..., pretrained=True, "
                "pretrained_cfg_overlay=dict(file='PATH'))" if key == "url" else "")
        raise RuntimeError(f"could not load pretrained weights for {variant} from "
                           f"{f'{key} {where!r}' if key else where}: {type(e).__name__}: {e}{hint}") from e


def build_bcos(
    variant: str,
    pretrained: bool,
    *,
    conventional: str | Callable[..., Any],
    recipe: str | Recipe = "v2",
    conventional_kwargs: dict[str, Any] | None = None,
    head: HeadSpec | None | str = "auto",
    entrypoint_args: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Create the conventional model, convert it with `recipe`, hand it to timm's builder.

    `kwargs` are timm's usual model kwargs (num_classes, drop_rate, global_pool,
    features_only, ...) plus recipe fields (b, max_out, logit_bias, ...).
    conventional_kwargs: arguments of the conventional model that the entrypoint fixes (a ViT's depth).
    entrypoint_args: the entrypoint's own arguments, written into a saved config's model_args
    (with timm's arch kwargs and the recipe fields) so that the folder re-creates this model.
    """
    in_chans = kwargs.pop("in_chans", 3)
    if in_chans != 3:
        raise ValueError(f"{variant} takes RGB images (in_chans=3, encoded to 6 channels inside); got in_chans={in_chans}")
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in RECIPE_KWARGS}
    resolved = resolve_recipe(recipe, **overrides)

    def make_model(**model_kwargs: Any):
        model_kwargs = {**(conventional_kwargs or {}), **model_kwargs}
        if callable(conventional):
            model = conventional(**model_kwargs)
        else:
            model = timm.create_model(conventional, pretrained=False, **model_kwargs)
        model = convert(model, resolved, head=head)
        model.__dict__.pop("_model_args", None)  # the factory records this entrypoint's own args instead
        return model

    kwargs.setdefault("pretrained_filter_fn", bcos_v2_filter_fn)
    with _pretrained_weights(variant, kwargs) if pretrained else nullcontext():
        model = build_model_with_cfg(make_model, variant, pretrained, **kwargs)
    # what save_pretrained writes as model_args, so the folder re-creates this model
    if isinstance(model, BcosModelMixin):  # not a features_only wrapper
        model.bcos.model_args = {
            **{k: v for k, v in kwargs.items() if k in _ARCH_KWARGS},
            **(entrypoint_args or {}),
            **overrides,
        }
    return model
