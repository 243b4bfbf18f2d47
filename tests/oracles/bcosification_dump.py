"""Dump a B-cosification reference model (Arya et al., NeurIPS 2024) to a .safetensors file: the
oracle for the `bcosify` recipe and for loading the released B-cosified checkpoints.

The reference code (a snapshot of shrebox/B-cosification) ships its own package named `bcos`, which
shadows `bcos==0.1.3` (the B-cos v2 oracle) installed beside timm_bcos; so this runs as a script in a
subprocess, never imported by the tests:

    python tests/oracles/bcosification_dump.py resnet_18 OUT.safetensors \
        [--oracle ../shared/oracles/bcosification] [--size 64] [--batch 2] [--seed 0]

The oracle folder comes from --oracle, else $BCOSIFICATION_ORACLE, else ../shared/oracles/bcosification
beside the repository. `experiment` is a config name of the reference:
  CNNs (bcos/experiments/ImageNet/bcosification): resnet_18, resnet_50, resnet_50_V1, densenet_121;
  ViTs (bcos/experiments/ImageNet/vit_bcosification): bcosifyv2_bcos_<arch>_0.001_gapReorder (ti, s) and
  bcosifyv2_bcos_<arch>_0.001_lrWarmup_gapReorder (b, l; the README's list writes them without the
  inner "bcos_", which is accepted too), <arch> in simple_vit_{ti,s,b,l}_patch16_224, vitc_{ti,s,b,l}_patch1_14.

The model is built by the reference's own `get_model` from that config, with random weights: the
pretrained download it would do (torchvision weights for the CNNs, `torch.hub.load("B-cos/B-cos-v2",
"standard_<arch>")` for the ViTs) is replaced by the same conventional architecture built locally from
the reference's code, seeded, with non-trivial norm statistics and affine parameters; the B-cosify pass
and everything after it run unchanged. Then, in float64 and eval mode, for a seeded input x in [0, 1]
(the reference's data pipeline ends with AddInverse, so the model takes [x, 1-x] and normalises it
with 6-channel ImageNet mean/std inside, `bcosifynormalize`), the file holds:

  state_dict.<key>   the reference model's state dict (BcosifyNetwork keys: "model.<...>"; a Lightning
                     last.ckpt holds the same under "state_dict" with one more "model." in front)
  source.<key>       the conventional model's state dict before B-cosification (torchvision ResNet /
                     DenseNet keys, or the B-cos v2 "standard_" ViT keys), for testing a conversion recipe
  input.x [N,3,H,W], input.x6 [N,6,H,W] = [x, 1-x], input.z [N,6,H,W] = bcosifynormalize(x6)
  logits [N,1000] (with the logit bias), target [N] (int64: the top-1 class of each sample)
  expl.grad_x6, expl.grad_z   d logit[target] / d x6 and / d z in the reference's explanation mode
                              (equal to its own `model.explain(x6[i:i+1], idx)["dynamic_linear_weights"]`,
                              checked here)
  expl.contrib_x6, expl.contrib_z  (grad * input).sum(channels) [N,H,W]
  expl.grad_x6_linear_norm, expl.contrib_x6_linear_norm  the same w.r.t. x6 with the normalisation written as
                     the linear map it is on valid encodings (m_c = m_c (x_c + (1 - x_c))), from grad_z: these
                     contributions are complete (sum = logit - logit bias, CNNs), the reference's expl.contrib_x6
                     are not (its (x6 - m) / s is affine channel by channel)
  plain.grad_x6      the same gradient outside explanation mode (the training-time gradient)

and metadata["bcosification"], a json string: the config that matters (b, max_out, logit bias and
temperature, normalisation mean/std, ...), which module types were replaced by what, the completeness
numbers, versions. Model code needs only torch, torchvision, numpy (and einops for the ViTs): the
reference's package __init__ files, which pull in torchmetrics / pytorch_lightning / CLIP's tokenizer
(ftfy, regex, pkg_resources), are skipped; only the experiment configs name `bcos.optim.OptimizerFactory`,
which imports pytorch_lightning and is replaced by an inert placeholder when that is missing
(`--full-imports` imports the reference's packages as they are, for when all its requirements are there).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import re
import sys
import time
import types
import warnings
from pathlib import Path
from unittest import mock

CNN_BASE = "bcosification"
VIT_BASE = "vit_bcosification"


# ----------------------------------------------------------------------------- imports of the oracle
def _bare_package(name: str, path: Path) -> types.ModuleType:
    """Register package `name` at `path` without running its __init__.py (submodules import normally)."""
    mod = types.ModuleType(name)
    mod.__path__ = [str(path)]
    mod.__package__ = name
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, mod)
    return mod


class _InertOptimizerFactory:
    """Stands in for bcos.optim.OptimizerFactory (which imports pytorch_lightning) in the configs;
    never used to build an optimizer here."""

    def __init__(self, name, lr, **kwargs):
        self.name, self.args = name, dict(lr=lr, **kwargs)

    def __repr__(self):
        return f"OptimizerFactory(name={self.name!r}, args={self.args!r})"


def setup_oracle_imports(oracle: Path, full: bool) -> str:
    """Put the oracle first on sys.path; unless `full`, skip the package __init__s that import
    training-only dependencies. Returns a word for the metadata: 'full' or 'light'."""
    if "bcos" in sys.modules:
        raise RuntimeError("a `bcos` package is already imported; run this script in a fresh process")
    sys.path.insert(0, str(oracle))
    if full:
        importlib.import_module("bcos")
        return "full"
    root = oracle / "bcos"
    _bare_package("bcos", root)
    _bare_package("bcos.models", root / "models")  # __init__ -> pretrained -> experiments.utils -> torchmetrics
    _bare_package("bcos.experiments", root / "experiments")
    utils = _bare_package("bcos.experiments.utils", root / "experiments" / "utils")  # -> torchmetrics
    for sub in ("config_utils", "structure_constants", "exceptions"):
        m = importlib.import_module(f"bcos.experiments.utils.{sub}")
        for k in getattr(m, "__all__", [k for k in vars(m) if not k.startswith("_")]):
            setattr(utils, k, getattr(m, k))
    optim = _bare_package("bcos.optim", root / "optim")  # optimizer_factory -> pytorch_lightning
    optim.LRSchedulerFactory = importlib.import_module("bcos.optim.lr_scheduler_factory").LRSchedulerFactory
    try:
        optim.OptimizerFactory = importlib.import_module("bcos.optim.optimizer_factory").OptimizerFactory
    except ImportError:
        optim.OptimizerFactory = _InertOptimizerFactory
    _bare_package("CLIP", oracle / "CLIP")  # bcosify.py imports CLIP.clip.model (AttentionPool2d)
    _bare_package("CLIP.clip", oracle / "CLIP" / "clip")  # __init__ -> clip.py -> pkg_resources, ftfy, regex
    return "light"


def default_oracle() -> Path:
    env = os.environ.get("BCOSIFICATION_ORACLE")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "oracles" / "bcosification"


# ----------------------------------------------------------------------------- random weights
def randomize_(model, generator) -> None:
    """Non-trivial norm statistics and affine parameters (and linear/conv biases), so that a
    missing scale, a dropped bias or a wrong folding cannot pass unnoticed."""
    import torch
    from torch import nn

    def u(t, lo, hi):
        return torch.empty_like(t).uniform_(lo, hi, generator=generator)

    def n(t, s):
        return torch.empty_like(t).normal_(0.0, s, generator=generator)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                if m.running_var is not None:
                    m.running_var.copy_(u(m.running_var, 0.5, 2.0))
                    m.running_mean.copy_(n(m.running_mean, 0.5))
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)):
                if getattr(m, "weight", None) is not None:
                    m.weight.copy_(u(m.weight, 0.5, 1.5))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(n(m.bias, 0.1))
            elif isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.copy_(n(m.bias, 0.1))


def calibrate_running_var_(model, x6, generator) -> int:
    """Set each running variance (the CNNs' uncentered batch norms) to the variance its input has on
    `x6` in eval mode, times a random factor in [0.5, 2], in forward order, so each sees the already
    calibrated layers before it. With untrained random weights every B=2 layer shrinks its output
    (by about |cos|), and without this the logits all equal the logit bias to ~1e-9."""
    import torch

    norms = [m for m in model.modules() if getattr(m, "running_var", None) is not None]
    if not norms:
        return 0

    def hook(m, inputs):
        (inp,) = inputs
        var = inp.detach().var(dim=(0, 2, 3), unbiased=False)
        factor = torch.empty_like(var).uniform_(0.5, 2.0, generator=generator)
        m.running_var.copy_(var * factor)

    handles = [m.register_forward_pre_hook(hook) for m in norms]
    try:
        with torch.no_grad():
            model.eval()(x6)
    finally:
        for h in handles:
            h.remove()
    return len(norms)


def random_images(n: int, size: int, generator):
    """Images in (0, 1) that differ in colour and layout (smooth random fields plus pixel noise), so
    that samples do not all pick the same class as uniform noise tends to."""
    import torch
    import torch.nn.functional as F

    low = torch.randn(n, 3, 4, 4, generator=generator, dtype=torch.float64)
    low = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    noise = torch.randn(n, 3, size, size, generator=generator, dtype=torch.float64)
    return torch.sigmoid(1.5 * low + 0.5 * noise)


def resolve_experiment(name: str, base: str | None):
    """(base_network, config_name, config) for a reference experiment name."""
    bases = [base] if base else [CNN_BASE, VIT_BASE]
    tried = []
    for b in bases:
        configs = importlib.import_module(f"bcos.experiments.ImageNet.{b}.experiment_parameters").CONFIGS
        for cand in (name, re.sub(r"^bcosifyv2_(?!bcos_)", "bcosifyv2_bcos_", name)):
            if cand in configs:
                return b, cand, copy.deepcopy(configs[cand])
        tried.append((b, sorted(configs)))
    hint = {b: [c for c in names if "seed" not in c and "random" not in c and (
                b == CNN_BASE or c.endswith(("0.001_gapReorder", "0.001_lrWarmup_gapReorder")))]
            for b, names in tried}
    raise SystemExit(f"unknown experiment {name!r}; e.g. {json.dumps(hint, indent=1)}")


def build_cnn(model_config, seed: int):
    """The reference's CNN get_model, with its torchvision download replaced by a seeded random
    state dict of the same (conventional) architecture."""
    import torch
    from torchvision.models._api import WeightsEnum

    model_mod = importlib.import_module(f"bcos.experiments.ImageNet.{CNN_BASE}.model")
    torch.manual_seed(seed)
    source_model = model_mod.get_torch_model_modified(model_config["name"], {"weights": None})
    randomize_(source_model, torch.Generator().manual_seed(seed + 1))
    source = {k: v.clone() for k, v in source_model.state_dict().items()}
    source_modules = [(n, type(m).__name__) for n, m in source_model.named_modules()]
    if not model_config.get("weights"):
        raise SystemExit(f"config has weights={model_config.get('weights')!r}: not a released (fine-tuned) model")

    def fake_get_state_dict(self, *args, **kwargs):
        return {k: v.clone() for k, v in source.items()}

    torch.manual_seed(seed + 2)
    with mock.patch.object(WeightsEnum, "get_state_dict", fake_get_state_dict):
        model = model_mod.get_model(model_config)
    return model, source, source_modules


def build_vit(model_config, seed: int):
    """The reference's ViT get_model, with its torch.hub download of the B-cos v2 `standard_<arch>`
    model replaced by that model built locally (vit_final baseline config, as the hub entrypoint does)."""
    import torch
    from torch import nn

    model_mod = importlib.import_module(f"bcos.experiments.ImageNet.{VIT_BASE}.model")
    final_cfgs = importlib.import_module("bcos.experiments.ImageNet.vit_final.experiment_parameters").CONFIGS
    final_model = importlib.import_module("bcos.experiments.ImageNet.vit_final.model")
    arch = model_config["name"]
    if not model_config.get("weights"):
        raise SystemExit(f"config has weights={model_config.get('weights')!r}: not a released (fine-tuned) model")
    std_config = copy.deepcopy(final_cfgs[arch]["model"])
    assert std_config["is_bcos"] is False
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "use the entrypoints from bcos.models.pretrained"
        source_model = final_model.get_model(std_config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # B=2 layers keep the scale when E|w|^2 ~ sqrt(fan_in): std fan_in^-1/4
        for n, m in source_model.named_modules():  # (PyTorch's default init shrinks each by ~1/3)
            if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.endswith("to_qkv"):
                m.weight.normal_(0.0, m.weight[0].numel() ** -0.25, generator=gen)
    randomize_(source_model, gen)
    source = {k: v.clone() for k, v in source_model.state_dict().items()}
    source_modules = [(n, type(m).__name__) for n, m in source_model.named_modules()]  # modified in place below
    calls = []

    def fake_hub_load(repo, name, *args, **kwargs):
        calls.append((repo, name, kwargs))
        assert repo == "B-cos/B-cos-v2" and name == f"standard_{arch}", (repo, name)
        return source_model

    torch.manual_seed(seed + 2)
    with mock.patch.object(torch.hub, "load", fake_hub_load):
        model = model_mod.get_model(model_config)
    assert len(calls) == 1
    return model, source, source_modules


def module_pairs(source_modules: list, model) -> list:
    """(source name, source type, oracle name, oracle type) for every module of the conventional model,
    matched by order: the B-cosify pass replaces modules in place (adding only the `.linear` inside its
    B-cos layers), but turns each nn.Sequential into a BcosSequential built from its children alone,
    which renames named children to indices (DenseNet: features.norm0 -> features.1)."""
    bcos_layers = [n for n, m in model.model.named_modules() if type(m).__name__ in ("BcosifyConv2d", "BcosifyLinear")]
    oracle = [(n, type(m).__name__) for n, m in model.model.named_modules()
              if not any(n.startswith(b + ".") for b in bcos_layers)]
    if len(oracle) != len(source_modules):
        raise RuntimeError(f"cannot match modules: {len(source_modules)} before, {len(oracle)} after B-cosification")
    return [(s, st, o, ot) for (s, st), (o, ot) in zip(source_modules, oracle)]


def replaced_and_renamed(pairs: list) -> tuple[dict, dict]:
    """Counts of 'SourceType -> OracleType', and the renamed module paths (source -> oracle, both
    without the BcosifyNetwork's leading "model."), listing a path only when its parent's rename
    does not already explain it."""
    replaced: dict[str, int] = {}
    renamed: dict[str, str] = {}
    for s, st, o, ot in pairs:
        if st != ot:
            replaced[f"{st} -> {ot}"] = replaced.get(f"{st} -> {ot}", 0) + 1
        if s != o and not any(s.startswith(ps + ".") and o == po + s[len(ps):] for ps, po in renamed.items()):
            renamed[s] = o
    return dict(sorted(replaced.items())), renamed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("experiment")
    p.add_argument("out", type=Path)
    p.add_argument("--oracle", type=Path, default=None)
    p.add_argument("--base-network", choices=[CNN_BASE, VIT_BASE], default=None)
    p.add_argument("--size", type=int, default=None, help="image size (default: 64 for CNNs, 224 for ViTs)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-check-explain", action="store_true",
                   help="skip checking the batched gradients against the reference's own explain()")
    p.add_argument("--full-imports", action="store_true",
                   help="import the reference's packages with their __init__s (needs torchmetrics, "
                        "pytorch-lightning, setuptools<81, ftfy, regex)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()

    oracle = (args.oracle or default_oracle()).resolve()
    if not (oracle / "bcosify.py").is_file():
        raise SystemExit(f"no B-cosification reference at {oracle} (set --oracle or $BCOSIFICATION_ORACLE)")
    import_mode = setup_oracle_imports(oracle, args.full_imports)

    import torch
    import torchvision
    from safetensors.torch import save_file

    base, name, config = resolve_experiment(args.experiment, args.base_network)
    model_config = config["model"]
    build = build_cnn if base == CNN_BASE else build_vit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, source, source_modules = build(model_config, args.seed)
    pairs = module_pairs(source_modules, model)
    replaced, renamed = replaced_and_renamed(pairs)
    model = model.double().eval()

    from bcos.data.transforms import AddInverse

    size = args.size or (64 if base == CNN_BASE else 224)
    g = torch.Generator().manual_seed(args.seed + 3)
    x_cal = random_images(4, size, g)
    x = random_images(args.batch, size, g)
    x6 = AddInverse()(x)
    n_calibrated = calibrate_running_var_(model, AddInverse()(x_cal), g)
    state = model.state_dict()
    for src, _, orc, _ in pairs:  # the conventional model carries the same statistics into the conversion
        if f"{src}.running_var" in source:
            source[f"{src}.running_var"] = state[f"model.{orc}.running_var"].clone()
    t_build = time.perf_counter() - t0
    with torch.no_grad():
        logits = model(x6)
        z = model.bcosifynormalize(x6)
    target = logits.argmax(1)

    captured = {}
    hook = model.bcosifynormalize.register_forward_hook(lambda m, i, o: captured.__setitem__("z", o))
    try:
        x6e = x6.clone().requires_grad_(True)
        with torch.enable_grad(), model.explanation_mode():
            out = model(x6e)
            grad_x6, grad_z = torch.autograd.grad(out.gather(1, target[:, None]).sum(), [x6e, captured["z"]])
        x6p = x6.clone().requires_grad_(True)
        with torch.enable_grad():
            out_p = model(x6p)
            (grad_plain,) = torch.autograd.grad(out_p.gather(1, target[:, None]).sum(), [x6p])
    finally:
        hook.remove()
    assert torch.equal(out.detach(), logits) or torch.allclose(out.detach(), logits, rtol=1e-12, atol=0)

    no_pe = None
    pos = getattr(model.model, "positional_embedding", None)
    if pos is not None:  # ViTs add a fixed sin-cos table (an input-independent term): without it,
        def zero_pe(patches, _f=pos.forward):  # completeness should be exact
            return _f(patches) * 0

        x6n = x6.clone().requires_grad_(True)
        captured.clear()
        hook = model.bcosifynormalize.register_forward_hook(lambda m, i, o: captured.__setitem__("z", o))
        try:
            with mock.patch.object(pos, "forward", zero_pe), torch.enable_grad(), model.explanation_mode():
                out_n = model(x6n)
                sel_n = out_n.gather(1, target[:, None])[:, 0]
                (gz_n,) = torch.autograd.grad(sel_n.sum(), [captured["z"]])
        finally:
            hook.remove()
        pre_n = sel_n.detach() - float(model.logit_layer.logit_bias or 0.0)
        no_pe = float(((captured["z"] * gz_n).detach().flatten(1).sum(1) - pre_n).abs().max() / pre_n.abs().min())

    explain_err = None
    if not args.no_check_explain:  # the reference's own (batch-1) explain() gives the same weights
        errs = []
        for i in range(args.batch):
            xi = x6[i:i + 1].clone().requires_grad_(True)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = model.explain(xi, idx=int(target[i]))
            w = res["dynamic_linear_weights"][0]
            errs.append(float((w - grad_x6[i]).norm() / grad_x6[i].norm()))
        explain_err = max(errs)
        assert explain_err <= 1e-10, f"batched gradient differs from the reference's explain(): {explain_err}"

    contrib_x6 = (x6 * grad_x6).sum(1)
    contrib_z = (z * grad_z).sum(1)
    # On valid encodings (second half = 1 - first half) the normalisation is a linear map of x6:
    # z_c = ((1-m_c) x_c - m_c (1-x_c)) / s_c = -z_{c+3}. The gradient through that map (not the reference's,
    # which differentiates (x6 - m) / s channel by channel) gives complete contributions w.r.t. x6.
    m6 = torch.tensor(model.bcosifynormalize.mean, dtype=torch.float64)[None, :3, None, None]
    s6 = torch.tensor(model.bcosifynormalize.std, dtype=torch.float64)[None, :3, None, None]
    assert torch.allclose(torch.tensor(model.bcosifynormalize.mean[3:]), 1 - torch.tensor(model.bcosifynormalize.mean[:3]))
    assert torch.allclose(torch.tensor(model.bcosifynormalize.std[3:]), torch.tensor(model.bcosifynormalize.std[:3]))
    d = grad_z[:, :3] - grad_z[:, 3:]
    grad_x6_lin = torch.cat([(1 - m6) / s6 * d, -m6 / s6 * d], 1)
    contrib_x6_lin = (x6 * grad_x6_lin).sum(1)
    logit_layer = model.logit_layer
    bias = float(logit_layer.logit_bias or 0.0)
    temp = logit_layer.logit_temperature
    sel = logits.gather(1, target[:, None])[:, 0]
    pre = (sel - bias) * (temp if temp is not None else 1.0)

    def rel(a, b):
        return float(((a - b).abs() / b.abs().clamp_min(1e-300)).max())

    completeness = {
        "logit_minus_bias": [float(v) for v in pre],
        "sum_contrib_z": [float(v) for v in contrib_z.flatten(1).sum(1)],
        "sum_contrib_x6": [float(v) for v in contrib_x6.flatten(1).sum(1)],
        "rel_err_z": rel(contrib_z.flatten(1).sum(1), pre),
        "rel_err_x6": rel(contrib_x6.flatten(1).sum(1), pre),
        "rel_err_x6_linear_norm": rel(contrib_x6_lin.flatten(1).sum(1), pre),
        "rel_err_z_without_pos_embedding": no_pe,
    }

    norm = model.bcosifynormalize
    bcos_args = model_config.get("bcos_args", {})
    bcosify_args = model_config.get("bcosify_args", {})
    meta = {
        "experiment": name,
        "base_network": base,
        "arch": model_config["name"],
        "oracle": str(oracle),
        "oracle_imports": import_mode,
        "optimizer_factory": getattr(importlib.import_module("bcos.optim"), "OptimizerFactory").__name__,
        "seed": args.seed,
        "input_shape": list(x6.shape),
        "dtype": "float64 (built in float32 with seeded init, then .double(); default dtype float32)",
        "b": bcos_args.get("b"),
        "max_out": bcos_args.get("max_out"),
        "logit_bias": logit_layer.logit_bias,
        "logit_temperature": temp,
        "normalize_mean": list(norm.mean),
        "normalize_std": list(norm.std),
        "bcosify_args": {k: v for k, v in bcosify_args.items() if isinstance(v, (bool, int, float, str))},
        "weights_in_config": str(model_config.get("weights")),
        "standard_changes": {k: repr(v) for k, v in (model_config.get("standard_changes") or {}).items()},
        "last_layer_name": model_config.get("last_layer_name"),
        "gap_reorder": bool(getattr(model.model, "gap_reorder", False)),
        "act_layer": model_config.get("act_layer", bcosify_args.get("act_layer")),
        "replaced": replaced,
        "renamed": renamed,
        "weight_init": "CNNs: PyTorch/torchvision default init; ViTs: every conv/linear that becomes B-cos "
                       "N(0, fan_in^-1/4), to_qkv default; norms' weight U[0.5,1.5], biases N(0,0.1)",
        "running_var_calibrated": f"{n_calibrated} norms: variance of their input on 4 other random images "
                                  "(eval mode, in order) times U[0.5, 2]; written into source.* too",
        "module_types": dict(sorted({t: sum(1 for m in model.modules() if type(m).__name__ == t)
                                     for t in {type(m).__name__ for m in model.modules()}}.items())),
        "parameters_without_bias": all(not k.endswith(".bias") for k in model.state_dict()),
        "target": [int(t) for t in target],
        "completeness": completeness,
        "explain_check_rel_err": explain_err,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": sys.version.split()[0]},
    }

    tensors = {f"state_dict.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    tensors.update({f"source.{k}": (v.double() if v.is_floating_point() else v).contiguous() for k, v in source.items()})
    tensors.update({
        "input.x": x, "input.x6": x6, "input.z": z.detach().contiguous(),
        "logits": logits, "target": target,
        "expl.grad_x6": grad_x6, "expl.grad_z": grad_z.contiguous(),
        "expl.contrib_x6": contrib_x6, "expl.contrib_z": contrib_z.contiguous(),
        "expl.grad_x6_linear_norm": grad_x6_lin.contiguous(), "expl.contrib_x6_linear_norm": contrib_x6_lin.contiguous(),
        "plain.grad_x6": grad_plain,
    })
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata={"bcosification": json.dumps(meta)})
    total = time.perf_counter() - t0
    print(json.dumps({"out": str(args.out), "experiment": name, "build_s": round(t_build, 2),
                      "total_s": round(total, 2), "target": meta["target"],
                      "rel_err_z": completeness["rel_err_z"], "rel_err_x6": completeness["rel_err_x6"],
                      "rel_err_x6_linear_norm": completeness["rel_err_x6_linear_norm"], "rel_err_z_no_pe": no_pe,
                      "explain_check_rel_err": explain_err, "replaced": replaced}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
