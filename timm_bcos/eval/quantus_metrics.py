"""Quantus (Hedstroem et al., JMLR 2023) for timm_bcos models: an `explain_func` that serves any model with any
of our attribution methods, and four of its metrics (faithfulness, two randomisation checks, complexity), each
with a bootstrap confidence interval.

    from timm_bcos.eval.quantus_metrics import explain_func, quantus_scores
    quantus.Sparseness()(model=model, x_batch=x, y_batch=y, explain_func=explain_func,
                         explain_func_kwargs={"method": "own"})   # any of ATTRIBUTION_METHODS
    quantus_scores(model, images, targets, method="own")          # {metric: {"mean", "ci95", "n", "better"}}
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .attribution import Normalised, attribution_maps, model_device
from .report import bootstrap_ci


def explain_func(model: nn.Module, inputs, targets, method: str = "own", **_) -> np.ndarray:
    """Quantus's explain_func: images [N, 3, H, W] in [0, 1] and classes [N] (numpy or tensors) -> maps
    [N, 1, H, W] float32 by `method` (timm_bcos.eval.attribution.ATTRIBUTION_METHODS). `model` may come
    behind `Normalised`, as quantus_scores gives it to Quantus: the methods normalise by themselves."""
    if isinstance(model, Normalised):
        model = model.model
    device = model_device(model)
    x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32, device=device)
    y = torch.as_tensor(np.asarray(targets), dtype=torch.long, device=device).reshape(-1)
    return attribution_maps(model.eval(), x, y, method)[:, None].detach().float().cpu().numpy()


def _quantus():
    import quantus  # the metrics extra

    return quantus


def _pixel_flipping(size: int):
    if size % 16:
        raise ValueError(f"pixel flipping removes 1/16 of the pixels per step: H x W = {size} is not divisible by 16")
    return _quantus().PixelFlipping(features_in_step=size // 16, perturb_baseline="black", disable_warnings=True)


# name -> (the Quantus metric for (classes, H x W), one number per image from its output, which way is better)
METRICS: dict[str, tuple[Callable, Callable, str]] = {
    # faithfulness: the target's score as the most relevant pixels go black, 1/16 at a time (area under it)
    "pixel_flipping": (lambda k, size: _pixel_flipping(size), lambda out: np.asarray(out).mean(1), "lower"),
    # randomisation: SSIM of the target's map and a random other class's (class-specific maps differ)
    "random_logit": (lambda k, size: _quantus().RandomLogit(num_classes=k, disable_warnings=True),
                     np.asarray, "lower"),
    # randomisation: correlation with the maps of the model with its layers randomised, top down
    "mprt": (lambda k, size: _quantus().MPRT(return_average_correlation=True, disable_warnings=True),
             np.asarray, "lower"),
    # complexity: the Gini index of |map| (1: one pixel holds everything, 0: uniform)
    "sparseness": (lambda k, size: _quantus().Sparseness(disable_warnings=True), np.asarray, "higher"),
}


def quantus_scores(model: nn.Module, images: Tensor, targets: Tensor, method: str = "own",
                   metrics: Sequence[str] = tuple(METRICS), num_classes: int | None = None) -> dict[str, dict]:
    """Each of `metrics` for `method`'s maps of `targets` [N] on `images` [N, 3, H, W] in [0, 1]:
    {name: {"mean", "ci95": [low, high], "n", "better": "lower" | "higher"}}."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; expected some of {sorted(METRICS)}")
    k = num_classes or getattr(model, "num_classes", None)
    x, y = images.detach().float().cpu().numpy(), targets.detach().long().cpu().numpy()
    wrapped = Normalised(model).eval()  # Quantus's own forward passes get [0, 1] images, as our methods do
    out = {}
    for name in metrics:
        build, per_image, better = METRICS[name]
        metric = build(k, x.shape[-2] * x.shape[-1])
        raw = metric(model=wrapped, x_batch=x, y_batch=y, a_batch=None, explain_func=explain_func,
                     explain_func_kwargs={"method": method}, channel_first=True, device=str(model_device(model)))
        mean, low, high = bootstrap_ci(per_image(raw))
        out[name] = {"mean": mean, "ci95": [low, high], "n": len(y), "better": better}
    return out
