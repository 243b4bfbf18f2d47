"""`Aligner`: the alignment objective of a student to its frozen teacher; `load_teacher` and
`bcosified_student` make the pair."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from .losses import FEATURE_LOSSES, LOGIT_LOSSES, feature_loss, logit_loss
from .taps import default_layers, tapped


class AlignError(ValueError):
    """A teacher, student or option that cannot be aligned as asked; the message says why."""


@dataclass
class AlignConfig:
    """What to align and how. layers: module paths (both models have them, the student being the
    teacher's converted copy); None: ALOE's depths (`default_layers`); []: the pooled features only."""

    loss: str = "cosine"                 # on features: cosine (ALOE) or mse
    layers: list[str] | None = None
    pooled_weight: float = 1.0           # the classifier's input (pre-logits), pooled
    layer_weight: float = 1.0            # each layer's loss (summed, as ALOE does)
    logits: str = "bce"                  # bce (soft targets), kl, cosine (centred) or none; only where both have a head
    logit_weight: float = 1.0
    temperature: float = 1.0             # of the kl distillation
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.loss not in FEATURE_LOSSES:
            raise AlignError(f"alignment loss must be one of {FEATURE_LOSSES}, got {self.loss!r}")
        if self.logits not in LOGIT_LOSSES:
            raise AlignError(f"logit loss must be one of {LOGIT_LOSSES}, got {self.logits!r}")
        if self.temperature <= 0:
            raise AlignError(f"temperature must be > 0, got {self.temperature}")


def load_teacher(name: str, **kwargs) -> nn.Module:
    """A frozen teacher: any timm name or tag (pretrained weights), `local-dir:`, `hf-hub:`; eval mode,
    no gradients. (`timm_bcos.cli.common.load_model_from_args` adds a checkpoint file on top.)"""
    import timm

    return freeze(timm.create_model(name, pretrained=True, **kwargs))


def freeze(model: nn.Module) -> nn.Module:
    model.eval().requires_grad_(False)
    return model


def bcosified_student(teacher: nn.Module, recipe: str = "bcosify", **fields) -> nn.Module:
    """The teacher's B-cosified copy, its weights carried over (the teacher is left as it was)."""
    from ..convert import convert

    student = convert(copy.deepcopy(teacher), recipe, carry_weights=True, **fields)
    return student.train().requires_grad_(True)


def _input_change(teacher: nn.Module, student: nn.Module):
    """(scale, shift) with teacher input = student input * scale + shift: the student's normalisation
    undone, the teacher's applied (a B-cos student takes plain [0, 1] RGB)."""
    def stats(m):
        cfg = getattr(m, "pretrained_cfg", None) or {}
        return (torch.tensor(cfg.get("mean", (0.0,) * 3), dtype=torch.float64),
                torch.tensor(cfg.get("std", (1.0,) * 3), dtype=torch.float64))
    (ms, ss), (mt, st) = stats(student), stats(teacher)
    return (ss / st).view(1, -1, 1, 1), ((ms - mt) / st).view(1, -1, 1, 1)


class Aligner:
    """loss, parts = aligner(forward, images): runs the teacher (no gradients) and the student's
    `forward` (the student itself, or its DDP wrapper) once each, and returns the weighted sum of
    the pooled, per-layer and logit terms, and each term. The teacher is not a submodule of anything
    the optimiser or a checkpoint sees."""

    def __init__(self, teacher: nn.Module, student: nn.Module, config: AlignConfig | None = None) -> None:
        self.config = config = config or AlignConfig()
        self.teacher = freeze(teacher)
        self.student = student
        self.layers = default_layers(teacher) if config.layers is None else list(config.layers)
        for path in self.layers:
            for who, m in (("teacher", teacher), ("student", student)):
                try:
                    m.get_submodule(path)
                except AttributeError:
                    raise AlignError(f"layer {path!r} is not in the {who} ({type(m).__name__}); the default "
                                     f"layers here are {default_layers(teacher)}") from None
        t_classes, s_classes = (getattr(m, "num_classes", 0) or 0 for m in (teacher, student))
        self.use_logits = config.logits != "none" and t_classes > 0 and t_classes == s_classes
        self.names = (["pooled"] + [f"layer:{p}" for p in self.layers] + (["logits"] if self.use_logits else []))
        self.channels_last = getattr(teacher, "output_fmt", "NCHW") == "NHWC"  # Swin, MambaOut: [B, H, W, C] maps
        self.has_head = t_classes > 0
        self.scale, self.shift = _input_change(teacher, student)

    def to(self, device, dtype) -> Aligner:
        self.teacher.to(device=device, dtype=dtype)
        return self

    def teacher_outputs(self, images: torch.Tensor):
        scale, shift = (v.to(images.device, images.dtype) for v in (self.scale, self.shift))
        with torch.no_grad(), tapped(self.teacher, self.layers) as taps:
            out = self.teacher(images[:, :scale.shape[1]] * scale + shift)
        return out, taps

    def __call__(self, forward, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        t_out, t_taps = self.teacher_outputs(images)
        with tapped(self.student, self.layers) as s_taps:
            s_out = forward(images)
        # without a classifier, a model's output is its pooled features
        missing = [p for p in self.layers if p not in s_taps or p not in t_taps]
        if missing:
            raise AlignError(f"layers {missing} were not called by the forward (gradient checkpointing runs blocks "
                             "past their hooks): align other layers or train without it")
        if self.has_head and ("pooled" not in s_taps or "pooled" not in t_taps):
            raise AlignError("the classifier's input could not be tapped (a model whose get_classifier() is not one "
                             "module, e.g. a distilled DeiT): align it with num_classes=0")
        s_pooled, t_pooled = s_taps.get("pooled", s_out), t_taps.get("pooled", t_out)
        parts = {"pooled": feature_loss(s_pooled, t_pooled, c.loss)}
        for path in self.layers:
            parts[f"layer:{path}"] = feature_loss(s_taps[path], t_taps[path], c.loss, self.channels_last)
        if self.use_logits:
            parts["logits"] = logit_loss(s_out, t_out, c.logits, c.temperature)
        total = c.pooled_weight * parts["pooled"] + c.layer_weight * sum(
            (parts[f"layer:{p}"] for p in self.layers), torch.zeros((), device=images.device, dtype=s_out.dtype))
        if self.use_logits:
            total = total + c.logit_weight * parts["logits"]
        return total, parts
