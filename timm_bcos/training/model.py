"""The model a run trains: created by timm (or B-cosified from a conventional model), its starting
weights, and what timm's train.py does to it after creation (checkpointing, sync BN, memory layout)."""
from __future__ import annotations

import copy
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


def model_kwargs(config: TrainConfig) -> dict:
    kwargs = dict(config.model_kwargs)
    if config.drop_path is not None:
        kwargs["drop_path_rate"] = config.drop_path
    return kwargs


def create_teacher(config: TrainConfig) -> torch.nn.Module:
    """--align-to's conventional model, pretrained, frozen (eval mode, no gradients)."""
    import timm

    from ..align.aligner import freeze

    check_model_name(config.align_to)
    kwargs = {k: v for k, v in model_kwargs(config).items() if k != "drop_path_rate"}
    try:
        return freeze(timm.create_model(config.align_to, pretrained=True, **kwargs))
    except RuntimeError as e:  # timm: no pretrained weights for this name
        fail(f"--align-to {config.align_to}: {e} (a teacher needs trained weights: a pretrained tag, "
             "local-dir:FOLDER or hf-hub:ID)")


def create_model(config: TrainConfig, num_classes: int, teacher: torch.nn.Module | None = None) -> torch.nn.Module:
    """--model (with --pretrained, --model-kwargs, --drop-path, --img-size), --bcosify-from's B-cosified
    model or `teacher`'s B-cosified copy (--align-to); then --checkpoint's weights."""
    import timm

    from ..convert import convert

    check_model_name(config.model)
    kwargs = model_kwargs(config)
    source = config.bcosify_from or config.align_to
    if source:
        if teacher is not None:
            conventional = copy.deepcopy(teacher).train().requires_grad_(True)
        else:
            check_model_name(source)
            conventional = timm.create_model(source, pretrained=True, **kwargs)
        try:
            model = convert(conventional, config.recipe, carry_weights=True, **config.recipe_kwargs)
        except (TypeError, ValueError) as e:  # an unknown recipe or field, or a field out of range
            fail(f"B-cosifying {source} (--recipe {config.recipe}, --recipe-kwargs "
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


def freeze_all_but_head(model: torch.nn.Module) -> None:
    """--head-only: gradients for the classifier (and a learned logit layer) only; the optimiser takes
    only what requires them."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Module) or not any(True for _ in head.parameters()):
        fail(f"--head-only: {type(model).__name__} has no classifier with weights to train (num_classes=0?)")
    model.requires_grad_(False)
    head.requires_grad_(True)
    backbone = [m for m in model.modules() if m is not model and m not in set(head.modules())]

    def backbone_in_eval(module, args):  # after every model.train(): norms, dropout, drop-path as in eval
        if module.training:
            for m in backbone:
                m.training = False

    model.register_forward_pre_hook(backbone_in_eval)


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
    if config.head_only:
        freeze_all_but_head(model)
    return model
