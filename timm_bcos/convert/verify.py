"""`verify(model, x)`: certify that a converted model is dynamic linear, module by module.

In explanation mode every module of a B-cos model computes y = W(x) x with W(x) detached
(DESIGN.md, contract 1), so its output equals its explanation-mode Jacobian times its input:
y = J(x) x (Euler's identity for degree-1 maps). Completeness of the whole model does not
certify this (an undetached degree-0 factor, or a squared ReLU next to a halved weight, can
pass it); this check does, per module, and names the module that breaks it.

Every module called with one tensor (plus non-tensor keyword arguments) and returning one
tensor is checked, in float64, on the inputs it sees in a forward pass of `x`. A module
that reads the raw image is checked with respect to the encoded image [x, 1-x] (the
encoding itself is affine, and explanations start after it). Modules holding an
input-independent term (the logit bias, class tokens, position embeddings, biases a recipe
keeps: `model.bcos.fixed_terms`) are y = J(x) x + c by design and are listed as skipped. So is a
plain `nn.Sequential` whose every link passed inside its own call: the chain rule certifies it.
"""
from __future__ import annotations

import contextlib
import itertools
from collections.abc import Collection
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..layers import InputEncoding, LogitLayer, explanation_mode
from .walker import ConversionError


class NotDynamicLinearError(ConversionError):
    """A converted module whose explanation-mode output is not J(x) x."""


@dataclass
class VerifyReport:
    checked: list[str] = field(default_factory=list)
    failures: list[tuple[str, str, float]] = field(default_factory=list)  # (path, type, relative error)
    skipped: dict[str, str] = field(default_factory=dict)                  # path -> why

    @property
    def ok(self) -> bool:
        return not self.failures

    def message(self) -> str:
        lines = [f"  {path or '<model>'} ({kind}): |y - J(x) x| / |y| = {err:.3g}" for path, kind, err in self.failures]
        return ("not dynamic linear in explanation mode (y != J(x) x), so explanations of this model are "
                "not faithful:\n" + "\n".join(lines))


def verify(model: nn.Module, x: Tensor, *, rtol: float = 1e-8, raise_on_failure: bool = True,
           only: Collection[str] | None = None, skip_fixed: bool = True) -> VerifyReport:
    """Check y = J(x) x for every module of `model` (a converted B-cos model), or for the modules at
    the paths `only`, on the input `x`. `skip_fixed=False` checks the modules that hold an
    input-independent term too (for a caller that has zeroed those terms).

    Runs in float64 and eval mode, then gives `model` back its dtypes and mode. Raises
    `NotDynamicLinearError` naming every failing module (path and type) unless
    `raise_on_failure=False`; returns the report (checked, failures, skipped).
    """
    with _in_float64_eval(model):
        report = _verify(model, x.detach().double(), rtol, only, skip_fixed)
    if report.failures and raise_on_failure:
        raise NotDynamicLinearError(report.message())
    return report


@contextlib.contextmanager
def _in_float64_eval(model: nn.Module):
    """The model itself in float64 and eval mode, restored afterwards (float32/16 -> float64 -> back
    is exact). Not a copy: some timm models cache non-leaf tensors that do not deep-copy."""
    params = [*model.parameters()]
    param_dtypes = [p.dtype for p in params]
    # `double()` replaces buffers by new tensors (parameters keep their objects): restore them by name
    buffer_dtypes = {(m, name): b.dtype for m in model.modules() for name, b in m._buffers.items() if b is not None}
    modes = [m.training for m in model.modules()]
    model.double().eval()
    try:
        yield
    finally:
        for p, dtype in zip(params, param_dtypes):
            if p.dtype != dtype:
                p.data = p.data.to(dtype)
        for (m, name), dtype in buffer_dtypes.items():
            if m._buffers.get(name) is not None and m._buffers[name].dtype != dtype:
                m._buffers[name] = m._buffers[name].to(dtype)
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def _verify(model64: nn.Module, x: Tensor, rtol: float, only: Collection[str] | None = None,
            skip_fixed: bool = True) -> VerifyReport:
    calls = _record_calls(model64, x, only)
    fixed = _fixed_owners(model64) if skip_fixed else set()
    terms = tuple(f"{t}." for t in getattr(getattr(model64, "bcos", None), "fixed_terms", ())) if skip_fixed else ()
    report = VerifyReport()
    chains = []
    for path, call in calls.items():
        why = "inside an input-independent term" if path.startswith(terms) else \
            _skip_reason(path, call.module, call.input, call.output, fixed)
        if why:
            report.skipped[path] = why
        elif only is None and _plain_chain(call.module):
            chains.append(path)  # decided once its links are
        else:
            _check(report, path, call, rtol)
    for path in reversed(chains):  # innermost first: a chain may hold chains
        if _implied_by_links(path, calls, report):
            report.skipped[path] = SEQUENTIAL_IMPLIED
        else:
            _check(report, path, calls[path], rtol)
    return report


# y = J2(h) h with h = J1(x) x gives y = J2 J1 x: a plain chain whose every link passed on the very input the
# chain gave it passes too (up to the links' rounding, which J2 may amplify), so re-running its whole subtree
# twice backwards proves nothing more
SEQUENTIAL_IMPLIED = "a chain (nn.Sequential) of modules each checked in this call: y = J(x) x follows"


@dataclass
class _Call:
    """A module's first call in the recorded forward; `start` < `end` number the hooks' firings, so a call
    inside another lies within its span; `count`: how often the module ran in the whole forward."""
    module: nn.Module
    input: Tensor | None
    kwargs: dict
    output: object = None
    start: int = 0
    end: int | None = None
    count: int = 1


def _plain_chain(module: nn.Module) -> bool:
    """An nn.Sequential whose output is its links' composition: no forward of its own, no hooks of a user."""
    return (type(module) is nn.Sequential and len(module) > 0 and "forward" not in vars(module)
            and not module._forward_hooks and not module._forward_pre_hooks)


def _implied_by_links(path: str, calls: dict[str, _Call], report: VerifyReport) -> bool:
    """Each link passed (or is an implied chain), ran once in the whole forward, inside this chain's call."""
    from torch.nn.modules import module as torch_module

    if torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks:
        return False  # a global hook could change what a chain returns
    chain = calls[path]
    passed = set(report.checked) - {p for p, _, _ in report.failures}
    for name, _ in chain.module.named_children():
        link = f"{path}.{name}" if path else name
        if link not in passed and report.skipped.get(link) != SEQUENTIAL_IMPLIED:
            return False
        call = calls[link]
        if call.count != 1 or None in (call.end, chain.end) or not chain.start < call.start < call.end < chain.end:
            return False  # shared, repeated or first run elsewhere: its check was not on this chain's input
    return True


def _check(report: VerifyReport, path: str, call: _Call, rtol: float) -> None:
    err = _euler_error(call.module, call.input, call.kwargs)
    if err is None:
        report.skipped[path] = "detached in explanation mode (a gate; its parent's product is checked)"
        return
    report.checked.append(path)
    if not err <= rtol:  # NaN fails too
        report.failures.append((path, f"{type(call.module).__module__}.{type(call.module).__qualname__}", err))


def _record_calls(model: nn.Module, x: Tensor, only: Collection[str] | None = None) -> dict[str, _Call]:
    """path -> the first call of each module (or of each of `only`'s) in a forward of x."""
    calls: dict[str, _Call] = {}
    hooks = []
    clock = itertools.count()

    def pre(path):
        def hook(module, args, kwargs):
            if path in calls:
                calls[path].count += 1
                return
            first = args[0] if len(args) == 1 and isinstance(args[0], Tensor) else None
            calls[path] = _Call(module, None if first is None else first.detach().clone(), dict(kwargs),
                                start=next(clock))
        return hook

    def post(path):
        def hook(module, args, kwargs, output):
            if calls[path].end is None:
                calls[path].output = output.detach() if isinstance(output, Tensor) else output
                calls[path].end = next(clock)
        return hook

    wanted = None if only is None else set(only)
    for path, module in model.named_modules():
        if wanted is not None and path not in wanted:
            continue
        hooks.append(module.register_forward_pre_hook(pre(path), with_kwargs=True))
        hooks.append(module.register_forward_hook(post(path), with_kwargs=True))
    try:
        with torch.no_grad(), explanation_mode(model):
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return calls


def _fixed_owners(model: nn.Module) -> set[str]:
    """Paths of the modules that hold (or are) an input-independent term, and of their ancestors."""
    terms = list(getattr(getattr(model, "bcos", None), "fixed_terms", ()))
    terms += [p for p, m in model.named_modules() if isinstance(m, LogitLayer)]
    owners = {""}  # the model itself holds the logit bias
    for term in terms:
        parts = term.split(".")
        owners.update(".".join(parts[:i]) for i in range(len(parts) + 1))
    return owners


def _skip_reason(path, module, inp, out, fixed) -> str | None:
    if path in fixed:
        return "holds an input-independent term (y = J(x) x + c)"
    if isinstance(module, InputEncoding):
        return "the input encoding [x, 1-x] (explanations start after it)"
    if inp is None or not isinstance(out, Tensor):
        return "not one tensor in and one tensor out"
    if not (inp.is_floating_point() and out.is_floating_point()):
        return "not a floating-point map"
    return None


def _euler_error(module: nn.Module, inp: Tensor, kwargs: dict) -> float | None:
    """|y - J(x) x| / max(|y|, |J(x) x|), with x the module's input, or the encoded image for a
    module that encodes it; J(x) x by the double-backward trick (J^T v is linear in v). None for
    an output detached as a whole."""
    leaves: list[Tensor] = []

    def as_leaf(mod, args, output):
        leaf = output.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    hooks = [m.register_forward_hook(as_leaf) for m in module.modules() if isinstance(m, InputEncoding)]
    try:  # the math attention kernel: the fused ones are not twice differentiable
        with torch.enable_grad(), explanation_mode(module), sdpa_kernel(SDPBackend.MATH):
            xin = inp.clone().requires_grad_(True)
            y = module(xin, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    variables = leaves or [xin]
    if not y.requires_grad:  # detached as a whole: a gate's factor, checked with the product its parent forms
        return None
    with torch.enable_grad():
        v = torch.zeros_like(y, requires_grad=True)
        grads = torch.autograd.grad(y, variables, v, create_graph=True, allow_unused=True)
        used = [(g, t) for g, t in zip(grads, variables) if g is not None]
        jx = torch.zeros_like(y)
        if used:
            dot = sum((g * t.detach()).sum() for g, t in used)
            if dot.requires_grad:
                jx = torch.autograd.grad(dot, v)[0]
    scale = max(y.detach().norm().item(), jx.norm().item())
    return 0.0 if scale < 1e-300 else (y.detach() - jx).norm().item() / scale
