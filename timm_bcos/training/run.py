"""Everything a training run holds (`Run`), built from a TrainConfig by `build_run`: the Accelerator,
the data, the model and its compiled forward, the optimiser, schedule, EMA and loss hooks."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .config import TrainConfig
from .errors import fail
from .hooks import LossHook, loss_hooks
from .loaders import build_loaders, load_data
from .model import adapt_for_training, check_model_name, create_model, create_teacher
from .state import TrainState, run_meta, updates_per_epoch


@dataclass
class Run:
    """Everything a training run holds, built by `build_run`."""

    config: TrainConfig
    accelerator: Any
    use_tb: bool
    info: Any
    num_classes: int
    dtype: torch.dtype
    meta: dict
    model: torch.nn.Module  # prepared by Accelerate (DDP-wrapped on several processes)
    train_forward: Any  # `model`, or its torch.compile'd version (training forward only)
    hooks: list[LossHook]
    aligner: Any  # timm_bcos.align.Aligner under --align-to (its loss replaces the classification loss)
    train_ds: Any
    sampler: Any
    train_loader: Any
    val_loader: Any
    mixup: Any
    criterion: torch.nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    state: TrainState
    metrics: dict = field(default_factory=dict)
    last_batch: tuple | None = None  # for a weight-0 step when a process's batch is all undecodable

    def say(self, *a, **kw) -> None:
        self.accelerator.print(*a, **kw)


def create_accelerator(config: TrainConfig):
    """(Accelerator, whether TensorBoard logs), with --batch-size checked against the processes."""
    from accelerate import Accelerator, DataLoaderConfiguration

    from .faults import join_restarted_workers

    join_restarted_workers(config.cpu)
    use_tb = not config.no_tensorboard
    if use_tb:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            use_tb = False
    # gradient accumulation is counted by `train_epoch`, not by Accelerate: Accelerate's counter
    # misses the batches this process drops as undecodable, and it scales every loss by 1/N,
    # the epoch's shorter last group's too
    accelerator = Accelerator(
        cpu=config.cpu, mixed_precision=config.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True), rng_types=[],
        log_with="tensorboard" if use_tb else None, project_dir=str(config.output),
    )
    if accelerator.gradient_accumulation_steps != 1:  # from `accelerate launch`'s config or environment
        fail(f"gradient accumulation {accelerator.gradient_accumulation_steps} in Accelerate's config: give it "
             "to train.py as --grad-accum instead")
    if config.batch_size % (accelerator.num_processes * config.grad_accum):
        fail(f"--batch-size {config.batch_size} must be divisible by processes x --grad-accum "
             f"({accelerator.num_processes} x {config.grad_accum})")
    return accelerator, use_tb


def build_schedule(config: TrainConfig, optimizer, updates_per_epoch: int):
    """timm's scheduler for --sched, stepped per optimizer update; None for --sched none."""
    from timm.scheduler import create_scheduler_v2

    if config.sched == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=config.sched, num_epochs=config.epochs, decay_epochs=config.decay_epochs,
        decay_milestones=config.decay_milestones, decay_rate=config.decay_rate, min_lr=config.min_lr,
        warmup_lr=config.warmup_lr, warmup_epochs=config.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_aligner(config: TrainConfig, teacher, student, device, dtype):
    from ..align import AlignConfig, AlignError, Aligner

    layers = config.align_layers
    if layers is not None and [v.lower() for v in layers] == ["none"]:
        layers = []
    try:
        align = AlignConfig(loss=config.align_loss, layers=layers, layer_weight=config.align_layer_weight,
                            logits=config.align_logits, logit_weight=config.align_logit_weight,
                            temperature=config.align_temperature)
        aligner = Aligner(teacher, student, align).to(device, dtype)
    except AlignError as e:
        fail(f"--align-to {config.align_to}: {e}")
    head = student.get_classifier() if hasattr(student, "get_classifier") else None
    if not aligner.use_logits and isinstance(head, torch.nn.Module):
        head.requires_grad_(False)  # no loss reaches it (and DDP needs every trained parameter used)
    return aligner


def build_run(config: TrainConfig) -> Run:
    from accelerate.utils import set_seed
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    from .losses import create_loss

    accelerator, use_tb = create_accelerator(config)
    set_seed(config.seed)
    check_model_name(config.model)
    train_hf, val_hf, info, val_info = load_data(config, accelerator)
    num_classes = config.num_classes or info.num_classes
    dtype = getattr(torch, config.dtype)
    teacher = create_teacher(config) if config.align_to else None
    if teacher is not None and config.num_classes is None:  # the student keeps the teacher's head
        num_classes = getattr(teacher, "num_classes", 0) or 0
    model = adapt_for_training(create_model(config, num_classes, teacher).to(dtype), config)
    hooks = loss_hooks(config, model)
    aligner = build_aligner(config, teacher, model, accelerator.device, dtype) if teacher is not None else None
    if num_classes == 0:  # a feature extractor: no accuracy to measure
        val_hf = None
    if teacher is not None and info.num_classes != num_classes:  # the teacher's classes are not the data's
        val_hf, info = None, replace(info, label_names=None)
    train_ds, sampler, train_loader, val_loader = build_loaders(config, model, train_hf, val_hf, info, val_info)
    mixup = None
    if config.mixup > 0 or config.cutmix > 0:
        mixup = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, label_smoothing=config.smoothing,
                      num_classes=num_classes)
    optimizer = create_optimizer_v2(model, opt=config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                    momentum=config.momentum)
    if config.streaming:  # the stream shards itself (see loaders.streaming_dataset)
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    ema = None
    if config.ema_decay > 0:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.ema_decay)
        accelerator.register_for_checkpointing(ema)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    return Run(config=config, accelerator=accelerator, use_tb=use_tb, info=info, num_classes=num_classes, dtype=dtype,
               meta=run_meta(config, num_classes), model=model,
               # the compiled module only runs the training forward; checkpoints, EMA and exports
               # use `model` itself, so their state-dict keys stay plain (no `_orig_mod.`)
               train_forward=torch.compile(model, backend=config.compile, mode=config.compile_mode)
               if config.compile else model,
               hooks=hooks, aligner=aligner, train_ds=train_ds, sampler=sampler, train_loader=train_loader,
               val_loader=val_loader, mixup=mixup, criterion=create_loss(config.loss), optimizer=optimizer,
               scheduler=build_schedule(config, optimizer, updates_per_epoch(len(train_loader), config.grad_accum)),
               ema=ema, state=state)
