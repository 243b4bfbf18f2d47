"""The model side of the explorer: load a B-cos model, prepare images by its data config, explain.

No web framework here: the Gradio layout (ui.py) calls these and only renders. A lock
serialises model use, because `explain` hooks the shared model for the duration of a call.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..explain.result import Explanation
from ..layers import BcosConv2d, BcosLinear

DEFAULT_MODEL = "bcos_cifar10_w050_bnu"  # trained here, weights inside the package


def load_model(name: str = DEFAULT_MODEL, pretrained: bool = True, checkpoint: str | None = None) -> nn.Module:
    """A B-cos model in eval mode from a bcos_* name, `hf-hub:` / `local-dir:` spec, or a state-dict file."""
    import timm

    from ..cli.common import load_weights_file, unknown_model_message

    message = unknown_model_message(name, "bcos_*")
    if message:
        raise ValueError(message)
    model = timm.create_model(name, pretrained=pretrained)
    if checkpoint:
        model.load_state_dict(load_weights_file(checkpoint))
    if not hasattr(model, "explain"):
        raise ValueError(f"{name} is not a B-cos model (it has no explain()); expected a bcos_* model")
    return model.eval()


def bcos_layers(model: nn.Module) -> list[str]:
    """Names of the model's B-cos layers (convolutions and linear maps), for neuron explanations."""
    return [n for n, m in model.named_modules() if n and isinstance(m, (BcosConv2d, BcosLinear))]


@dataclass
class Prepared:
    """An image as the model sees it: the input batch [1, 3, H, W] and the same as an RGB picture."""

    x: torch.Tensor
    seen: np.ndarray  # [H, W, 3] uint8: the model's input, normalisation undone


class Explorer:
    """One model, its transform and class names; every model call goes through here, one at a time."""

    def __init__(self, model: nn.Module, model_name: str = "") -> None:
        import timm

        self.model = model.eval()
        self.name = model_name or getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        self.data_cfg = timm.data.resolve_data_config({}, model=model)
        self.transform = timm.data.create_transform(**self.data_cfg)
        cfg = getattr(model, "pretrained_cfg", None) or {}
        names = cfg.get("label_names")
        n = int(getattr(model, "num_classes", 0) or 0)
        self.class_names = list(names) if names and len(names) == n else [f"class {i}" for i in range(n)]
        self.layers = bcos_layers(model)
        self._lock = threading.Lock()

    def add_layers(self, names: list[str]) -> None:
        """More layers to explain neurons of (an atlas's layer need not be a B-cos layer)."""
        for name in names:
            if name not in self.layers:
                self.model.get_submodule(name)  # an AttributeError naming what is missing
                self.layers.append(name)

    @property
    def logit_bias(self) -> float:
        return float(self.model.logit_layer.logit_bias)

    def prepare(self, img: Image.Image) -> Prepared:
        x = self.transform(img).unsqueeze(0)
        mean = torch.tensor(self.data_cfg["mean"]).view(3, 1, 1)
        std = torch.tensor(self.data_cfg["std"]).view(3, 1, 1)
        rgb = (x[0] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        return Prepared(x=x, seen=(rgb * 255).round().astype(np.uint8))

    def explain_topk(self, x: torch.Tensor, k: int) -> Explanation:
        """The k highest classes: one forward pass, k backward passes."""
        k = max(1, min(int(k), len(self.class_names)))
        with self._lock:
            return self.model.explain(x, topk=k)

    def explain_delta(self, x: torch.Tensor, a: int, b: int) -> Explanation:
        """Why class a rather than class b: the contributions to logit a minus logit b (Fig. 9)."""
        for c in (a, b):
            if not 0 <= c < len(self.class_names):
                raise ValueError(f"class index must be in [0, {len(self.class_names) - 1}], got {c}")
        with self._lock:
            return self.model.explain(x, delta=(int(a), int(b)))

    def explain_neuron(self, x: torch.Tensor, layer: str, channel: int | None) -> Explanation:
        """A unit of `layer`: `channel` (None: the most activated) at its most activated position (Figs. 8, 10)."""
        if layer not in self.layers:
            raise ValueError(f"unknown layer {layer!r}; expected one of the B-cos layers {self.layers}")
        with self._lock:
            return self.model.explain(x, target=channel, layer=layer)
