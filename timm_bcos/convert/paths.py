"""Where things are in a model about to be converted: the first conv and every conv that
reads the image, the classifier, and the input-independent additive terms."""
from __future__ import annotations

from torch import nn

from .runtime import HeadSpec
from .walker import Context, classes_by_name, import_class


def first_conv_path(model: nn.Module) -> str | None:
    """The cfg's `first_conv` if it names a Conv2d, else the first Conv2d registered."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    if isinstance(first, (list, tuple)):
        first = first[0]
    modules = dict(model.named_modules())
    if first and isinstance(modules.get(first), nn.Conv2d):
        return first
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name
    return None


def stem_conv_paths(model: nn.Module, first: str) -> frozenset:
    """The first conv and every conv registered before any conv of another input width that has
    the image's channel count: re-parameterisable stems (RepVGG, MobileOne, FastViT) run several
    branches on the image, and each must read the encoded input, or its share is lost."""
    width = model.get_submodule(first).in_channels
    paths = {first}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.in_channels != width:
                break
            paths.add(name)
    return frozenset(paths)


def image_modules(model: nn.Module, first: str) -> frozenset:
    """Leaf modules registered before the first conv: those that read the image."""
    paths = set()
    for name, m in model.named_modules():
        if name == first:
            break
        if next(m.children(), None) is None:
            paths.add(name)
    return frozenset(paths)


# timm's names for input-independent additive tokens and embeddings (their share is reported by explain)
FIXED_TERM_NAMES = frozenset({"cls_token", "reg_token", "dist_token", "pos_embed", "absolute_pos_embed"})
# modules whose output does not depend on the input and is added to the features
FIXED_TERM_MODULES = (import_class("timm.models.edgenext.PositionalEncodingFourier"),)
# modules holding tables that only rotate queries and keys (detached): not additive terms
_QK_ONLY = (import_class("timm.layers.pos_embed_sincos.RotaryEmbeddingCat"),
            import_class("timm.layers.pos_embed_sincos.RotaryEmbedding"),
            *classes_by_name({"timm.layers.pos_embed_sincos.RotaryEmbeddingDinoV3": None}, missing_ok=True))


def fixed_term_paths(model: nn.Module, ctx: Context) -> tuple[str, ...]:
    """Tokens and embeddings timm names as such, fixed-output modules, and what the rules found."""
    found = []
    for owner, module in model.named_modules():
        prefix = f"{owner}." if owner else ""
        if isinstance(module, FIXED_TERM_MODULES):
            found.append(owner)
        elif not isinstance(module, _QK_ONLY):
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            found += [prefix + name for name, t in tensors if t is not None and name in FIXED_TERM_NAMES]
    return tuple(dict.fromkeys([*found, *ctx.fixed_terms]))


def classifier_path(model: nn.Module, spec: HeadSpec | None) -> str | None:
    """The head's classifier, else the module `get_classifier()` returns."""
    if spec is not None:
        return spec.classifier
    get = getattr(model, "get_classifier", None)
    if get is None:
        return None
    clf = get()
    for name, m in model.named_modules():
        if m is clf:
            return name
    return None

