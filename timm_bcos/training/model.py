"""The model a run trains: created by timm (or B-cosified from a conventional model), its starting
weights, and what timm's train.py does to it after creation (checkpointing, sync BN, memory layout)."""
from __future__ import annotations

import json

import torch

from .config import TrainConfig
from .errors import fail


def check_model_name(name: str) -> None:
    from ..cli.common import unknown_model_message

    message = unknown_model_message(name, cutoff=0.6)
    if message:
        fail(message)


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    from ..cli.common import load_weights_file as load

    try:
        return load(path)
    except (FileNotFoundError, ValueError) as e:  # missing, damaged or not a state dict: one line
        fail(str(e))


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
    """`model.load_state_dict(state)`, or one error counting the missing, unexpected and misshapen keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        fail(f"{source} does not fit model {model_name}: {'; '.join(parts)}. "
             "Is it a checkpoint of another model or of other --model-kwargs / --num-classes?")
    model.load_state_dict(state)


def create_model(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """--model (with --pretrained, --model-kwargs, --drop-path, --img-size), or --bcosify-from's B-cosified
    model; then --checkpoint's weights."""
    import timm

    from ..convert import convert

    check_model_name(config.model)
    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    if config.bcosify_from:
        check_model_name(config.bcosify_from)
        conventional = timm.create_model(config.bcosify_from, pretrained=True, **kwargs)
        try:
            model = convert(conventional, config.recipe, carry_weights=True, **config.recipe_kwargs)
        except (TypeError, ValueError) as e:  # an unknown recipe or field, or a field out of range
            fail(f"B-cosifying {config.bcosify_from} (--recipe {config.recipe}, --recipe-kwargs "
                 f"{json.dumps(config.recipe_kwargs)}): {e}")
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
    else:
        model = timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes, **kwargs)
        if config.img_size and model.pretrained_cfg.get("fixed_input_size") and "img_size" not in kwargs:
            # a ViT's position embedding has the input size built in: rebuild for --img-size
            model = timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes,
                                      img_size=config.img_size, **kwargs)
    if config.checkpoint:
        load_into(model, load_weights_file(config.checkpoint), config.checkpoint, config.model)
    return model


def adapt_for_training(model: torch.nn.Module, config: TrainConfig) -> torch.nn.Module:
    """--grad-checkpointing, --sync-bn, --channels-last: what timm's train.py does after creation."""
    if config.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AttributeError, AssertionError, NotImplementedError) as e:
            fail(f"--grad-checkpointing: {type(model).__name__} does not support it ({e})")
    if config.sync_bn:
        from ..layers import convert_sync_batchnorm

        try:
            model = convert_sync_batchnorm(model)  # never torch's own: it would center B-cos norms
        except NotImplementedError as e:
            fail(f"--sync-bn: {e}")
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
