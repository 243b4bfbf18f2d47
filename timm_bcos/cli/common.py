"""What the command lines share: a model named by the user (with a close-name hint when unknown), its
weights from a file, and the device to run on."""
from __future__ import annotations

import argparse
import difflib
from pathlib import Path

import torch

from ..utils.errors import one_line


def unknown_model_message(name: str, pattern: str = "*", cutoff: float = 0.4) -> str | None:
    """None for a model timm can create; else an error naming the closest registered names
    among those matching `pattern` (listed only when the name is unknown)."""
    import timm

    import timm_bcos  # noqa: F401  (registers the entrypoints)

    if timm.is_model(name) or name.startswith(("hf-hub:", "local-dir:")):
        return None
    close = difflib.get_close_matches(name, timm.list_models(pattern), n=3, cutoff=cutoff)
    hint = f" Did you mean: {', '.join(close)}?" if close else " See timm.list_models()."
    return f"unknown model {name!r}.{hint}"


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict through timm's checkpoint reader: .safetensors, or a .pth read with
    weights_only=True; EMA weights preferred, DDP `module.` prefixes stripped. A damaged or
    truncated file is one clear error naming it."""
    from timm.models import load_state_dict

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return load_state_dict(str(path), use_ema=True, weights_only=True)
    except Exception as e:  # SafetensorError, pickle / zip errors of a truncated or foreign file
        kind = "safetensors file" if path.suffix == ".safetensors" else "PyTorch checkpoint (tensors only)"
        first = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable {kind} ({type(e).__name__}: {first})") from None


def load_checkpoint(model: torch.nn.Module, path: str | Path) -> None:
    """Load a checkpoint into `model`: our layout or the B-cos v2 reference's (converted on the
    fly); anything that does not fit is one error naming the file and the first keys."""
    from ..weights import bcos_v2_filter_fn

    state = bcos_v2_filter_fn(load_weights_file(path), model)
    arch = (getattr(model, "pretrained_cfg", None) or {}).get("architecture", type(model).__name__)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise ValueError(f"{path} does not fit {arch}: {len(lines)} shape mismatches, e.g. {lines[0]}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not fit {arch}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                         f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def _out_of_reach(error: BaseException) -> bool:
    """A download that failed for want of a network or a cached copy: an OSError (huggingface_hub's and
    urllib's errors are) somewhere in the chain of causes."""
    while error is not None:
        if isinstance(error, OSError):
            return True
        error = error.__cause__ or error.__context__
    return False


def load_model_from_args(args: argparse.Namespace):
    """The model of --model, --pretrained / --checkpoint and --num-classes, in eval mode; SystemExit with
    a clear message for an unknown name, a bad checkpoint or a model without explain()."""
    import timm

    message = unknown_model_message(args.model, "bcos_*")
    if message:
        raise SystemExit(f"error: {message}")
    kwargs = {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    try:
        model = timm.create_model(args.model, pretrained=args.pretrained, **kwargs)
    except (OSError, RuntimeError) as e:
        if not (args.pretrained and _out_of_reach(e)):
            raise  # python -m timm_bcos words it in one line (--debug: the traceback)
        raise SystemExit(f"error: cannot get the pretrained weights of {args.model}: {one_line(e)}. Without a "
                         "network: --checkpoint FILE, or a filled Hugging Face cache and HF_HUB_OFFLINE=1") from None
    if args.checkpoint:
        try:
            load_checkpoint(model, args.checkpoint)
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
    if not hasattr(model, "explain"):
        raise SystemExit(f"error: {args.model} is not a B-cos model (it has no explain())")
    return model.eval()


def resolve_device(name: str | None) -> torch.device:
    """--device: the named device, or CUDA where present, else the CPU; a clear error if unusable."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as e:
        raise SystemExit(f"error: --device {name}: not usable here ({str(e).splitlines()[0]})") from None
    return device
