"""pytest plugin for running timm's own tests/test_models.py on the bcos_* models (`make test`).

Load it with `-p timm_suite_plugin` (tests/ on PYTHONPATH) next to `-p timm_bcos`, which
registers the models before timm's test module builds its model lists. `make test` runs timm's
file in the same pytest session as our tests/ (one start of the workers, one tail for both).

Four things, all visible in the test report:
- selection: of timm's file, the tests of `bcos_*` models that carry one of SELECTED_MARKERS (as
  `-k bcos_ -m "base or ..."` would; the rest is reported as deselected); our own tests are untouched.
- routing: timm sends its transformers to `test_model_default_cfgs_non_std` by name
  ('vit_*', 'deit*', ...); the B-cos ViTs, named 'bcos_*', are routed to it the same way
  (both tests take the same arguments, so only the test function is swapped).
- EXCLUDED: the timm tests that cannot hold for B-cos models, one line of reason each;
  they are reported as skipped with that reason.
- LARGER_MEMBERS and the cfg twins (tags of one architecture with equal cfg values): the time budget
  (skipped with that reason).
"""
from __future__ import annotations

import fnmatch
import functools

import pytest
import torch

# timm's own pattern for its ViT-like models is 'vit_*'; ours carry the 'bcos_' prefix
NON_STD_MODELS = ("bcos_simple_vit_*", "bcos_vitc_*")

_NO_SCRIPT = ("B-cos layers are torch.autograd.Functions (hand-written backward, explanation-mode detaching), "
              "which TorchScript cannot compile; torch.compile is tested instead (tests/test_compile.py)")
# (test function, model pattern): reason
EXCLUDED: dict[tuple[str, str], str] = {
    ("test_model_forward_torchscript", "bcos_*"): _NO_SCRIPT,
    ("test_model_forward_fx_torchscript", "bcos_*"): _NO_SCRIPT,
    ("test_model_forward_features", "bcos_inception_v3*"): (
        "valid-padding Inception: timm exempts 'inception_v3*' by name from the reduction lower bound, "
        "which its own inception_v3 fails the same way at the test's 96 px input (1x1 map at reduction 32)"),
}


# Time budget (2 cores): the per-model tests that run real tensors (forward, backward, fx,
# features) run on the smallest member of each family and recipe; the larger members share
# its code and differ only in depth/width. Every tag of every model runs the cfg tests (on the meta
# device; a B-cos forward there still costs seconds), one tag per architecture and cfg (CFG_FIELDS).
HEAVY_TESTS = ("test_model_forward", "test_model_backward", "test_model_forward_fx", "test_model_backward_fx",
               "test_model_forward_features")
LARGER_MEMBERS = (
    "bcos_resnet34", "bcos_resnet50", "bcos_resnet101", "bcos_resnet152", "bcos_resnext50_32x4d",
    "bcos_densenet161", "bcos_densenet169", "bcos_densenet201", "bcos_convnext_base", "bcos_convnext_base_bnu",
    "bcos_simple_vit_[sbl]_*", "bcos_vitc_[sbl]_*", "bcos_resnet50_bcosified",
)


# What timm's cfg tests read from a pretrained cfg (input_size, min_input_size, fixed_input_size, pool_size,
# num_classes, classifier, first_conv), and what a bcosified model builds from it (mean and std: its input
# encoding). Tags of one architecture with equal values build the same model and run the same checks: one of
# them runs the cfg tests (a released tag before `untrained`). crop_pct, which tags differ in most, is neither.
CFG_TESTS = ("test_model_default_cfgs", "test_model_default_cfgs_non_std")
CFG_FIELDS = ("input_size", "min_input_size", "fixed_input_size", "pool_size", "num_classes", "first_conv",
              "classifier", "mean", "std")


@functools.lru_cache(maxsize=None)
def _cfg_key(name: str) -> tuple:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name).to_dict()
    return tuple(str(cfg.get(k)) for k in CFG_FIELDS)


def _cfg_twin(name: str, names: set[str]) -> str | None:
    """The tag of `name`'s architecture that runs the cfg tests for `name`, when it is another one."""
    arch = name.partition(".")[0]
    twins = sorted((n for n in names if n.partition(".")[0] == arch and _cfg_key(n) == _cfg_key(name)),
                   key=lambda n: (n.endswith(".untrained"), n))
    return twins[0] if twins and twins[0] != name else None


# timm's markers (its pyproject.toml registers them; in one session with our tests, our pyproject is read), and
# the ones that select what runs here: timm's own CPU tests of a model
TIMM_MARKERS = ("base", "forward", "backward", "cfg", "cfg_nonstd", "torchscript", "features", "fxforward", "fxbackward")
SELECTED_MARKERS = ("base", "forward", "backward", "cfg", "features", "torchscript", "fxforward", "fxbackward")


def pytest_configure(config):
    torch.set_num_threads(1)  # one thread per xdist worker, as in tests/conftest.py
    for marker in TIMM_MARKERS:
        config.addinivalue_line("markers", f"{marker}: timm's tests/test_models.py marker")
    config.addinivalue_line("markers", "timeout: pytest-timeout's, on timm's tests (not installed here: not enforced)")


def _model_name(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("model_name") if callspec is not None else None


def _timms_test(item) -> bool:
    """An item of timm's tests/test_models.py (a package `tests` of timm's source distribution), not ours."""
    return item.path.name == "test_models.py" and item.module.__name__ == "tests.test_models"


def _selected(item) -> bool:
    """What `-k bcos_ -m "<SELECTED_MARKERS joined by or>"` would keep of timm's tests."""
    name = _model_name(item)
    return (name is not None and name.startswith("bcos_")
            and any(item.get_closest_marker(m) for m in SELECTED_MARKERS))


def pytest_collection_modifyitems(config, items):
    timms = [i for i in items if _timms_test(i)]
    dropped = [i for i in timms if not _selected(i)]
    if dropped:  # timm's tests of its own models: not ours to run (reported as deselected)
        config.hook.pytest_deselected(items=dropped)
        drop = set(map(id, dropped))
        items[:] = [i for i in items if id(i) not in drop]
        timms = [i for i in timms if id(i) not in drop]
    cfg_names = {_model_name(i) for i in timms if i.originalname in CFG_TESTS}
    for item in timms:
        name = _model_name(item)
        func = item.originalname
        twin = _cfg_twin(name, cfg_names) if func in CFG_TESTS else None
        if twin:
            item.add_marker(pytest.mark.skip(reason=f"time budget: {twin} has this cfg and runs this test"))
        if func == "test_model_default_cfgs" and any(fnmatch.fnmatch(name, p) for p in NON_STD_MODELS):
            item.obj = item.module.test_model_default_cfgs_non_std
        if func in HEAVY_TESTS and any(fnmatch.fnmatch(name, p) for p in LARGER_MEMBERS):
            item.add_marker(pytest.mark.skip(reason="time budget: the family's smallest member runs this test"))
        for (test, pattern), reason in EXCLUDED.items():
            if func == test and fnmatch.fnmatch(name, pattern):
                item.add_marker(pytest.mark.skip(reason=f"B-cos: {reason}"))
