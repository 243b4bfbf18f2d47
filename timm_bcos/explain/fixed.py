"""Input-independent terms: class and register tokens, position embeddings, biases a recipe keeps.

In explanation mode a converted model computes y = W(x) x + sum_t V_t(x) c_t with W(x) and
every V_t(x) detached (Eqs. 13-15), so the share of a term c_t is (dy/dc_t) . c_t, and
contributions + sum of the shares = y exactly. `convert()` lists the terms' paths in
`model.bcos.fixed_terms`: parameters or buffers (broadcast over the batch, so each gets
a batch-expanded copy and per-image gradients) or modules whose output does not depend
on the input (their output becomes a leaf).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class FixedTerms:
    expanded: dict[str, Tensor] = field(default_factory=dict)  # per-image copies of [1, ...] tensors
    shared: dict[str, Tensor] = field(default_factory=dict)    # used without a batch dim: one backward per image
    outputs: dict[str, Tensor] = field(default_factory=dict)   # module outputs made leaves
    hooks: list = field(default_factory=list)

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()


def prepare(model: nn.Module, n: int) -> FixedTerms:
    terms = FixedTerms()
    state = getattr(model, "bcos", None)  # a converted model's runtime state (timm_bcos.convert.runtime.BcosState)
    try:
        for path in getattr(state, "fixed_terms", ()):
            _prepare_term(model, path, n, terms)
    except Exception:  # leave no hook behind on a bad path
        terms.remove_hooks()
        raise
    return terms


def _prepare_term(model: nn.Module, path: str, n: int, terms: FixedTerms) -> None:
    try:
        target = model.get_submodule(path)
    except AttributeError:
        target = _tensor(model, path)
    if isinstance(target, nn.Module):
        terms.hooks.append(target.register_forward_hook(_leaf_hook(terms.outputs, path)))
    elif target is None:
        return
    elif target.dim() >= 2 and target.shape[0] == 1:
        terms.expanded[path] = target.detach().expand(n, *target.shape[1:]).clone().requires_grad_(True)
    else:
        terms.shared[path] = target.detach().clone().requires_grad_(True)


def _tensor(model: nn.Module, path: str) -> Tensor | None:
    owner, _, name = path.rpartition(".")
    module = model.get_submodule(owner) if owner else model
    if not hasattr(module, name):
        raise ValueError(f"{type(model).__name__}.bcos.fixed_terms names {path!r}, which does not exist")
    return getattr(module, name)


def _leaf_hook(store: dict, path: str):
    def hook(module, inputs, output):
        leaf = output.detach().requires_grad_(True)
        store[path] = leaf
        return leaf
    return hook


def forward(model: nn.Module, x: Tensor, terms: FixedTerms) -> Tensor:
    overrides = {**terms.expanded, **terms.shared}
    if not overrides:
        return model(x)
    return torch.func.functional_call(model, overrides, (x,), strict=False, tie_weights=False)


def shares(explained: Tensor, terms: FixedTerms) -> dict[str, Tensor]:
    """{path: share} of one explained target ([N]): [N, T] for tokens, [N, H, W] for maps, [N] for biases."""
    batched = {**terms.expanded, **terms.outputs}
    out: dict[str, Tensor] = {}
    if batched:
        grads = torch.autograd.grad(explained.sum(), list(batched.values()), retain_graph=True, allow_unused=True)
        for (path, t), g in zip(batched.items(), grads):
            prod = (torch.zeros_like(t) if g is None else g) * t.detach()
            out[path] = prod.sum(1) if path in terms.outputs and prod.dim() == 4 else prod.sum(-1)
    for path, t in terms.shared.items():  # a shared bias sums the batch in its gradient: one image at a time
        per_image = []
        for i in range(explained.shape[0]):
            (g,) = torch.autograd.grad(explained[i], t, retain_graph=True, allow_unused=True)
            per_image.append(torch.zeros((), dtype=t.dtype) if g is None else (g * t.detach()).sum())
        out[path] = torch.stack(per_image)
    return out


def token_maps(model: nn.Module, shares_: dict[str, Tensor]) -> dict[str, Tensor]:
    """Token shares laid out on the patch grid ([N, K, h, w]) where the model has one."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if grid is None:
        return {}
    h, w = grid
    return {p: s[..., -h * w:].reshape(*s.shape[:2], h, w) for p, s in shares_.items()
            if s.dim() == 3 and s.shape[-1] >= h * w}
