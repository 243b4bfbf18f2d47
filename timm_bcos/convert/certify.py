"""Composites the certified list does not know, certified on the model itself: after the walk
converted their children, `verify` checks y = J(x) x for each of them, in float64, on a probe image
of the model's input size. Those that pass are accepted; the others are refused by name, as a
composite without a rule was refused before (a list cannot keep up with timm)."""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from .verify import verify
from .walker import ConversionError


@contextlib.contextmanager
def _overwritten(values: dict):
    """{tensor: its value for the probe}: set in place, each tensor's own value restored afterwards."""
    saved = [(t, t.detach().clone()) for t in values]
    with torch.no_grad():
        for t, value in values.items():
            t.copy_(value)
    try:
        yield
    finally:
        with torch.no_grad():
            for t, value in saved:
                t.copy_(value)


def _branches_on(model: nn.Module):
    """Near-zero parameters (zero-init last norms, layer scales of 1e-5) made O(1) for the probe:
    a branch that contributes nothing would certify any forward vacuously."""
    gen = torch.Generator().manual_seed(0)
    small = [p for p in model.parameters() if p.numel() and p.detach().abs().max() <= 1e-4]
    return _overwritten({p: torch.rand(p.shape, generator=gen, dtype=p.dtype).to(p.device) + 0.5 for p in small})


def _fixed_terms_zeroed(model: nn.Module):
    """Every input-independent term (kept biases, tokens, embeddings: `model.bcos.fixed_terms`) at zero
    for the probe: what a composite's forward does with its children does not depend on their values,
    and without them y = J(x) x must hold exactly (a B=1 model with its biases, the B-cosification
    premise, is affine otherwise)."""
    tensors = {}
    for path in model.bcos.fixed_terms:
        owner, _, name = path.rpartition(".")
        t = getattr(model.get_submodule(owner) if owner else model, name, None)
        found = [t] if isinstance(t, torch.Tensor) else [*t.parameters(), *t.buffers()] if isinstance(t, nn.Module) else []
        tensors.update({id(x): x for x in found if x.is_floating_point()})
    return _overwritten({t: torch.zeros_like(t) for t in tensors.values()})


def probe_size(model: nn.Module) -> tuple[int, ...]:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))


def certify_composites(model: nn.Module, uncertified: list[tuple[str, type]]) -> list[str]:
    """The paths of `uncertified` composites checked and accepted on a probe image; ConversionError
    naming each that fails y = J(x) x, or that the probe cannot check (not called, or not one tensor
    in and one out)."""
    paths = [path for path, _ in uncertified]
    x = torch.rand(1, *probe_size(model), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x.to(next(model.parameters()).device)
    try:
        with _branches_on(model), _fixed_terms_zeroed(model):
            report = verify(model, x, raise_on_failure=False, only=paths, skip_fixed=False)
    except Exception as e:  # the probe forward itself failed: nothing can be certified
        raise ConversionError(_refusal(uncertified, {p: f"the probe forward failed: {type(e).__name__}: {e}"
                                                     for p in paths})) from e
    failed = {path: f"|y - J(x) x| / |y| = {err:.3g}" for path, _, err in report.failures}
    failed.update({p: f"not checkable: {report.skipped.get(p, 'not called by a forward')}" for p in paths
                   if p not in report.checked and p not in failed})
    if failed:
        raise ConversionError(_refusal(uncertified, failed))
    return paths


def _refusal(uncertified: list[tuple[str, type]], failed: dict[str, str]) -> str:
    kinds = {path: t for path, t in uncertified}
    listed = "\n".join(f"  {kinds[p].__module__}.{kinds[p].__qualname__} at '{p}': {why}" for p, why in failed.items())
    return ("composite modules without a B-cos rule that a float64 probe could not certify as dynamic linear "
            f"(y = J(x) x in explanation mode):\n{listed}\nIf such a forward only combines its children linearly "
            "(sums, concatenations, reshapes, detached gates), pass rules={Type: recurse, ...} (from "
            "timm_bcos.convert import recurse) to convert(); otherwise it needs a rule of its own")
