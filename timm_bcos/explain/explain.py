"""Batched explanations W_{1->l}(x) of any B-cos model (paper Sec. 3.2.1, Eqs. 13-15)."""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from ..layers import InputEncoding, explanation_mode
from . import fixed
from .result import Explanation


def _as_targets(target, n: int, scores: Tensor, topk: int | None) -> Tensor:
    """[N, K] long tensor of explained indices."""
    if target is not None and topk is not None:
        raise ValueError("give either target or topk, not both")
    if topk is not None:
        if not 1 <= topk <= scores.shape[1]:
            raise ValueError(f"topk must be in [1, {scores.shape[1]}], got {topk}")
        return scores.topk(topk, dim=1).indices
    if target is None:
        return scores.argmax(1, keepdim=True)
    t = torch.as_tensor(target, dtype=torch.long, device=scores.device)
    if t.dim() == 0:
        t = t.expand(n)[:, None]
    elif t.dim() == 1:
        if t.shape[0] != n:
            raise ValueError(f"target has {t.shape[0]} entries for {n} images; give one per image, "
                             f"an int, or an [N, K] tensor")
        t = t[:, None]
    elif t.dim() != 2 or t.shape[0] != n:
        raise ValueError(f"target must be an int, [N] or [N, K]; got shape {tuple(t.shape)} for N={n}")
    if torch.compiler.is_exporting():  # an exported graph: no data-dependent check, so send negative
        return torch.where(t < 0, scores.shape[1], t)  # classes past the end, where its gather refuses them
    if (t < 0).any() or (t >= scores.shape[1]).any():
        raise ValueError(f"target indices must be in [0, {scores.shape[1] - 1}], got {t.min().item()}..{t.max().item()}")
    return t


def named_layer(model: nn.Module, layer: str) -> nn.Module:
    """The submodule `layer` of `model`; a ValueError naming close names when there is none."""
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        name = (getattr(model, "pretrained_cfg", None) or {}).get("architecture") or type(model).__name__
        raise ValueError(f"{name} has no layer {layer!r}{hint}") from None


def channel_maxima(out: Tensor) -> tuple[Tensor, Tensor | None]:
    """Per-channel activation used to pick neurons: [N, C] max over positions, and argmax positions."""
    if out.dim() == 4:
        n, c, h, w = out.shape
        flat = out.flatten(2)
        values, idx = flat.max(-1)
        return values, torch.stack([idx // w, idx % w], -1)  # [N, C], [N, C, 2]
    if out.dim() == 2:
        return out, None
    raise ValueError(f"layer outputs of shape {tuple(out.shape)} are not supported; expected [N, C, H, W] or [N, C]")


@dataclass
class _Selection:
    """What an explanation mode picked: the [N, K] values to explain and which they are."""

    targets: Tensor                    # [N, K] classes or channels
    explained: Tensor                  # [N, K] the values whose input gradients are the explanation
    positions: Tensor | None = None    # [N, K, 2] neuron positions in a layer's map
    reference: Tensor | None = None    # [N, 1] the subtracted classes of a Delta explanation


def _select_classes(pre_bias: Tensor, logits: Tensor, *, temperature: Tensor, target, topk) -> _Selection:
    values = pre_bias / temperature.to(logits.dtype)  # logit - bias
    targets = _as_targets(target, values.shape[0], values.detach(), topk)
    return _Selection(targets, values.gather(1, targets))


def _select_delta(pre_bias: Tensor, logits: Tensor, *, temperature: Tensor, delta: tuple) -> _Selection:
    values = pre_bias / temperature.to(logits.dtype)  # logit - bias
    c1, c2 = (_as_targets(c, values.shape[0], values, None) for c in delta)
    return _Selection(c1, values.gather(1, c1) - values.gather(1, c2), reference=c2)


def _select_neurons(out: Tensor, logits: Tensor, *, target, topk, position) -> _Selection:
    n = out.shape[0]
    scores, argpos = channel_maxima(out.detach())
    targets = _as_targets(target, n, scores, topk)
    if out.dim() != 4:
        return _Selection(targets, out.gather(1, targets))
    if position is None:
        positions = argpos.gather(1, targets[..., None].expand(-1, -1, 2))
    else:
        positions = torch.as_tensor(position, dtype=torch.long).expand(n, targets.shape[1], 2)
    h, w = out.shape[-2:]
    flat_idx = targets * (h * w) + positions[..., 0] * w + positions[..., 1]
    return _Selection(targets, out.flatten(1).gather(1, flat_idx), positions=positions)


def _mode(model: nn.Module, target, topk, layer, position, delta) -> tuple[nn.Module, bool, Callable]:
    """The module an explanation reads, whether it reads that module's input (else its output),
    and the target selector that turns what it read into the explained values."""
    if position is not None and layer is None:
        raise ValueError("position=(row, col) picks a neuron of an intermediate layer: pass layer= too")
    if delta is not None:
        if target is not None or topk is not None or layer is not None:
            raise ValueError("delta=(c1, c2) cannot be combined with target, topk or layer")
        temperature = model.logit_layer.logit_temperature
        return model.logit_layer, True, partial(_select_delta, temperature=temperature, delta=delta)
    if layer is not None:
        return named_layer(model, layer), False, partial(_select_neurons, target=target, topk=topk, position=position)
    temperature = model.logit_layer.logit_temperature
    return model.logit_layer, True, partial(_select_classes, temperature=temperature, target=target, topk=topk)


def explain(
    model: nn.Module,
    x: Tensor,
    target=None,
    *,
    topk: int | None = None,
    layer: str | None = None,
    position: tuple[int, int] | Tensor | None = None,
    delta: tuple | None = None,
) -> Explanation:
    """Explain classes (or neurons of `layer`) of a B-cos `model` for a batch of RGB images.

    target: None (the prediction, or the most activated channel of `layer`), an int,
        one per image ([N]) or several per image ([N, K]); `topk=K` explains the K
        highest outputs. K targets cost one forward pass and K backward passes.
    layer, position: explain neurons of an intermediate layer (Figs. 8, 10): `target`
        picks channels; `position` (row, col) or [N, K, 2] picks the location, by
        default where each chosen channel is most activated.
    delta: (c1, c2) explains logit c1 minus logit c2 (Fig. 9); each may be an int or [N].

    Leaves no trace: no .grad on `x` or the parameters, explanation mode and the
    train/eval state as they were.
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch of images [N, 3, H, W], got shape {tuple(x.shape)}")
    if model.training:
        warnings.warn("explaining a model in training mode: batch statistics make the explanation "
                      "differ from inference; call model.eval() first", stacklevel=2)
    watched, reads_input, select = _mode(model, target, topk, layer, position, delta)
    read: dict[str, Tensor] = {}
    encoded_leaves: list[Tensor] = []
    terms = fixed.prepare(model, x.shape[0])  # before any hook: a bad fixed-term path leaves none behind
    hooks = _capture_encodings(model, encoded_leaves)
    hooks.append(watched.register_forward_hook(lambda m, i, o: read.__setitem__("value", i[0] if reads_input else o)))
    try:
        with torch.enable_grad(), explanation_mode(model):
            logits = fixed.forward(model, x.detach(), terms)
            if "value" not in read:
                raise ValueError(f"layer {layer!r} was not called during the forward pass; "
                                 "name a module the model runs")
            chosen = select(read["value"], logits)
            weights, fixed_shares = _weights_and_shares(chosen.explained, encoded_leaves, terms)
    finally:
        for h in hooks:
            h.remove()
        terms.remove_hooks()
    enc = encoded_leaves[0].detach()
    return Explanation(
        logits=logits.detach(),
        targets=chosen.targets,
        weights=weights,
        contributions=(weights * enc[:, None]).sum(2),
        encoded_input=enc,
        explained=chosen.explained.detach(),
        positions=chosen.positions,
        reference_targets=chosen.reference,
        fixed_shares=fixed_shares,
        fixed_maps=fixed.token_maps(model, fixed_shares),
    )


def _capture_encodings(model: nn.Module, leaves: list[Tensor]) -> list:
    """Every module that reads the raw image encodes it (re-parameterisable stems have several):
    each encoding becomes a leaf, and the weights are the sum of their gradients."""
    def capture(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    encoders = [m for m in model.modules() if isinstance(m, InputEncoding)] or [model.input_encoding()]
    return [e.register_forward_hook(capture) for e in encoders]


def _weights_and_shares(explained: Tensor, leaves: list[Tensor], terms: fixed.FixedTerms):
    """Rows of W(x) for each explained target ([N, K, 6, H, W]) and the fixed terms' shares ({path: [N, K, ...]})."""
    if any(t.shape != leaves[0].shape for t in leaves):  # compared, not hashed: traced shapes are symbolic
        shapes = [tuple(t.shape) for t in leaves]
        raise RuntimeError(f"the model encodes inputs of different shapes {shapes}; "
                           "every InputEncoding must read the raw image")
    weights, shares = [], []
    k = explained.shape[1]
    for j in range(k):
        shares.append(fixed.shares(explained[:, j], terms))
        grads = torch.autograd.grad(explained[:, j].sum(), leaves, retain_graph=j < k - 1)
        weights.append(torch.stack(grads).sum(0))
    return torch.stack(weights, 1), {p: torch.stack([s[p] for s in shares], 1) for p in shares[0]}
