"""Shared pieces of the bcos_* entrypoints: cfgs and "create the timm model, convert it"."""
from __future__ import annotations

import os
from dataclasses import fields
from typing import Any, Callable

import timm
from timm.models import build_model_with_cfg

from ..bcos_v2 import RELEASES, bcos_v2_filter_fn, fetch_release, released_cfgs
from ..convert import HeadSpec, convert
from ..recipes import Recipe, resolve_recipe
from ..runtime import BcosModelMixin

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


def model_cfgs(models: list[str], make_cfg: Callable[..., dict]) -> dict[str, dict]:
    """For each model: its released weights' tags first (the default for pretrained=True), then `.untrained`."""
    cfgs: dict[str, dict] = {}
    for name in models:
        cfgs.update(released_cfgs(name, make_cfg))
        cfgs[f"{name}.untrained"] = make_cfg()
    return cfgs


def _weights_source(variant: str, kwargs: dict[str, Any]) -> str:
    """Where timm would read the weights from: a file, a Hub repo or a URL."""
    from timm.models._pretrained import PretrainedCfg
    from timm.models import resolve_pretrained_cfg

    try:
        cfg = resolve_pretrained_cfg(variant, pretrained_cfg=kwargs.get("pretrained_cfg"),
                                     pretrained_cfg_overlay=kwargs.get("pretrained_cfg_overlay"))
        cfg = cfg.to_dict() if isinstance(cfg, PretrainedCfg) else dict(cfg)
    except Exception:  # pragma: no cover - only used to word an error
        return "its pretrained cfg"
    for key in ("file", "hf_hub_id", "url"):
        if cfg.get(key):
            where = cfg[key]
            if key == "file" and os.path.isdir(where):  # local-dir: the weights file inside the folder
                for name in ("model.safetensors", "pytorch_model.bin"):
                    if os.path.exists(os.path.join(where, name)):
                        where = os.path.join(where, name)
                        break
            return f"{key} {where!r}"
    return "nowhere: this tag has no weights (see timm.list_pretrained('bcos_*'))"


def build_bcos(
    variant: str,
    pretrained: bool,
    *,
    conventional: str | Callable[..., Any],
    recipe: str | Recipe = "v2",
    arch_kwargs: dict[str, Any] | None = None,
    head: HeadSpec | None | str = "auto",
    arch_kwargs_public: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Create the conventional model, convert it with `recipe`, hand it to timm's builder.

    `kwargs` are timm's usual model kwargs (num_classes, drop_rate, global_pool,
    features_only, ...) plus recipe fields (b, max_out, logit_bias, ...).
    """
    in_chans = kwargs.pop("in_chans", 3)
    if in_chans != 3:
        raise ValueError(f"{variant} takes RGB images (in_chans=3, encoded to 6 channels inside); got in_chans={in_chans}")
    overrides = {k: kwargs.pop(k) for k in list(kwargs) if k in RECIPE_KWARGS}
    resolved = resolve_recipe(recipe, **overrides)

    def make_model(**model_kwargs: Any):
        model_kwargs = {**(arch_kwargs or {}), **model_kwargs}
        if callable(conventional):
            model = conventional(**model_kwargs)
        else:
            model = timm.create_model(conventional, pretrained=False, **model_kwargs)
        model = convert(model, resolved, head=head)
        model.__dict__.pop("_model_args", None)  # the factory records this entrypoint's own args instead
        return model

    kwargs.setdefault("pretrained_filter_fn", bcos_v2_filter_fn)
    if not pretrained:
        model = build_model_with_cfg(make_model, variant, pretrained, **kwargs)
    else:
        source = _weights_source(variant, kwargs)
        if source.startswith("nowhere"):  # timm would only log a warning and hand back random weights
            raise RuntimeError(f"could not load pretrained weights for {variant} from {source}")
        try:
            if source.startswith("url") and any(source == f"url {r.url!r}" for r in RELEASES):
                fetch_release(source[5:-1], kwargs.get("cache_dir"))  # hash-checked, then timm reads the copy
            model = build_model_with_cfg(make_model, variant, pretrained, **kwargs)
        except Exception as e:
            hint = ("; with a copy of the file: timm.create_model(..., pretrained=True, "
                    "pretrained_cfg_overlay=dict(file='PATH'))" if source.startswith("url") else "")
            raise RuntimeError(f"could not load pretrained weights for {variant} from {source}: "
                               f"{type(e).__name__}: {e}{hint}") from e
    # what save_pretrained writes as model_args, so the folder re-creates this model
    if isinstance(model, BcosModelMixin):  # not a features_only wrapper
        model.bcos.model_args = {
            **{k: v for k, v in kwargs.items() if k in _ARCH_KWARGS},
            **(arch_kwargs_public or {}),
            **overrides,
        }
    return model
