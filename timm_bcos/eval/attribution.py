"""Spatial attribution maps, one per (image, target), from the model itself or post-hoc methods.

Every method maps (model, images [N, 3, H, W] in [0, 1], targets [N]) to [N, H, W]:
attributions summed over colour channels. Post-hoc methods come from Captum and act on
`normalised(model)`, so baselines and inputs live in the same [0, 1] image space for
B-cos and conventional models alike.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

AttributionFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s parameters (else buffers) live; the CPU for a model with neither."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


class Normalised(nn.Module):
    """`model` behind its pretrained cfg's mean/std normalisation (identity for B-cos models)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        cfg = getattr(model, "pretrained_cfg", None) or {}
        device = model_device(model)  # on the model's device (evaluate.py --device)
        mean = torch.tensor(cfg.get("mean", (0.0, 0.0, 0.0)), dtype=torch.float32, device=device)
        std = torch.tensor(cfg.get("std", (1.0, 1.0, 1.0)), dtype=torch.float32, device=device)
        self.model = model
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model((x - self.mean) / self.std)


def last_feature_layer(model: nn.Module) -> nn.Module:
    """The module producing the last feature map (GradCAM's layer): timm's feature_info, last entry."""
    info = getattr(model, "feature_info", None)
    if not info:
        raise ValueError(f"{type(model).__name__} has no feature_info to find GradCAM's layer; pass gradcam_layer")
    last = info[-1]
    return model.get_submodule(last["module"] if isinstance(last, dict) else last.module_name())


def own_contributions(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """The B-cos model's own explanation: Eq. 15 contributions summed over the 6 encoded channels."""
    if not hasattr(model, "explain"):
        raise TypeError(f"{type(model).__name__} is not a B-cos model: it has no own explanation")
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if tuple(cfg.get("mean", (0, 0, 0))) != (0, 0, 0) or tuple(cfg.get("std", (1, 1, 1))) != (1, 1, 1):
        raise ValueError("own contributions expect a B-cos model on plain [0, 1] RGB (mean 0, std 1)")
    return model.explain(images, target=targets).contributions[:, 0]


def _captum(method: str, **kwargs) -> AttributionFn:
    def attribute(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        import captum.attr as ca

        wrapped = Normalised(model).to(images.device).eval()
        x = images.detach().clone().requires_grad_(True)
        t = targets.tolist()
        if method == "grad":
            a = ca.Saliency(wrapped).attribute(x, target=t, abs=False)
        elif method == "ixg":
            a = ca.InputXGradient(wrapped).attribute(x, target=t)
        elif method == "ig":
            a = ca.IntegratedGradients(wrapped).attribute(x, target=t, baselines=0.0, **kwargs)
        elif method == "deeplift":
            a = ca.DeepLift(wrapped).attribute(x, target=t, baselines=0.0)
        elif method == "gradcam":
            layer = kwargs.get("layer") or last_feature_layer(model)
            cam = ca.LayerGradCam(wrapped, layer).attribute(x, target=t)
            a = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)
        else:  # pragma: no cover - guarded by ATTRIBUTION_METHODS
            raise ValueError(method)
        return a.detach().sum(1)

    return attribute


def grid_segments(height: int, width: int, cells: int, device=None) -> Tensor:
    """[H, W] segment ids of a `cells` x `cells` grid: LIME's interpretable features."""
    rows = torch.arange(height, device=device) * cells // height
    cols = torch.arange(width, device=device) * cells // width
    return rows[:, None] * cells + cols[None, :]


def _lime(cells: int = 8, n_samples: int = 256) -> AttributionFn:
    """LIME (Ribeiro et al. 2016) by Captum: a sparse linear model of the target's score over which grid cells
    are kept (the others set to 0), fitted on `n_samples` random keeps near the image, spread over its cells."""
    def attribute(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        import captum.attr as ca

        wrapped = Normalised(model).to(images.device).eval()
        segments = grid_segments(*images.shape[-2:], cells, images.device)
        out = []
        for image, target in zip(images, targets.tolist()):  # Captum's Lime takes one image at a time
            a = ca.Lime(wrapped).attribute(image[None], target=target, baselines=0.0, n_samples=n_samples,
                                           feature_mask=segments[None, None].expand_as(image[None]),
                                           perturbations_per_eval=64)
            out.append(a.detach().sum(1)[0] / (segments == segments[0, 0]).sum())  # per pixel, not per cell
        return torch.stack(out)

    return attribute


def rise_masks(n: int, cells: int, height: int, width: int, p: float = 0.5, generator=None) -> Tensor:
    """RISE's masks (Petsiuk et al. 2018): [n, 1, H, W] random binary `cells` x `cells` grids (each cell kept
    with probability `p`), upsampled bilinearly to one cell more than the image and cropped at a random shift."""
    ch, cw = -(-height // cells), -(-width // cells)
    grids = (torch.rand(n, 1, cells, cells, generator=generator) < p).float()
    up = F.interpolate(grids, size=((cells + 1) * ch, (cells + 1) * cw), mode="bilinear", align_corners=False)
    dy = torch.randint(0, ch, (n,), generator=generator).tolist()
    dx = torch.randint(0, cw, (n,), generator=generator).tolist()
    return torch.stack([up[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(zip(dy, dx))])


def rise_saliency(model: nn.Module, images: Tensor, targets: Tensor, masks: Tensor, p: float = 0.5,
                  batch: int = 64) -> Tensor:
    """[N, H, W]: sum_i softmax(model(x * M_i))[target] M_i / (len(masks) p), RISE's Monte Carlo estimate of
    the expected score given that a pixel is kept."""
    out = []
    for image, target in zip(images, targets.tolist()):
        total = torch.zeros(images.shape[-2:], device=images.device)
        for start in range(0, len(masks), batch):
            m = masks[start:start + batch].to(images.device)
            with torch.no_grad():
                scores = model(image[None] * m).softmax(1)[:, target]
            total += (scores[:, None, None] * m[:, 0]).sum(0)
        out.append(total / (len(masks) * p))
    return torch.stack(out)


def _cam_library(kind: str) -> AttributionFn:
    """GradCAM++ (Chattopadhay et al. 2018) or ScoreCAM (Wang et al. 2020) by the grad-cam library, on the
    last feature map as GradCAM. The library rectifies each map and scales it to [0, 1] (per image)."""
    def attribute(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        import contextlib
        import io

        from pytorch_grad_cam import GradCAMPlusPlus, ScoreCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        method = {"gradcampp": GradCAMPlusPlus, "scorecam": ScoreCAM}[kind]
        layer = last_feature_layer(model)
        wrapped = Normalised(model).to(images.device).eval()
        params = list(model.parameters())
        grads = [p.grad for p in params]  # the library zeroes them and backpropagates into them: given back
        try:
            with method(model=wrapped, target_layers=[layer]) as cam, contextlib.redirect_stderr(io.StringIO()):
                # (stderr: ScoreCAM's progress bars, one per image)
                maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets.tolist()])
        finally:
            for p, g in zip(params, grads):
                p.grad = g
        return torch.from_numpy(maps).to(images.device)

    return attribute


def _attention(kind: str) -> AttributionFn:
    """Attention rollout or Chefer et al.'s gradient-weighted rollout (timm_bcos.eval.attention_attribution),
    for B-cos vision transformers on [0, 1] images."""
    def attribute(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        from . import attention_attribution as aa

        return (aa.attention_rollout if kind == "rollout" else aa.chefer_relevance)(model, images, targets)

    return attribute


def _rise(n_masks: int = 1000, cells: int = 7, p: float = 0.5, seed: int = 0) -> AttributionFn:
    def attribute(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
        masks = rise_masks(n_masks, cells, *images.shape[-2:], p, torch.Generator().manual_seed(seed))
        return rise_saliency(Normalised(model).to(images.device).eval(), images, targets, masks, p)

    return attribute


ATTRIBUTION_METHODS: dict[str, AttributionFn] = {
    "own": own_contributions,
    "grad": _captum("grad"),
    "ixg": _captum("ixg"),
    "ig": _captum("ig", n_steps=20, internal_batch_size=64),
    "deeplift": _captum("deeplift"),
    "gradcam": _captum("gradcam"),
    "gradcampp": _cam_library("gradcampp"),
    "scorecam": _cam_library("scorecam"),
    "rollout": _attention("rollout"),
    "chefer": _attention("chefer"),
    "lime": _lime(),
    "rise": _rise(),
}
METHOD_LABELS = {"own": "B-cos (own)", "grad": "Grad", "ixg": "IxG", "ig": "IntGrad", "deeplift": "DeepLIFT",
                 "gradcam": "GradCAM", "gradcampp": "GradCAM++", "scorecam": "ScoreCAM", "lime": "LIME", "rise": "RISE",
                 "rollout": "Rollout", "chefer": "Chefer et al."}


def attribution_maps(model: nn.Module, images: Tensor, targets: Tensor, method: str) -> Tensor:
    """[N, H, W] attributions of `targets` [N] for `images` [N, 3, H, W] by `method` (see ATTRIBUTION_METHODS)."""
    if method not in ATTRIBUTION_METHODS:
        raise ValueError(f"unknown attribution method {method!r}; expected one of {sorted(ATTRIBUTION_METHODS)}")
    with torch.enable_grad():
        return ATTRIBUTION_METHODS[method](model, images, targets)
