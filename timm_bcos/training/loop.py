"""The training loop: micro-batches grouped into optimizer updates, logging, evaluation at epoch ends,
checkpoints, and `train`, the Python API behind train.py."""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch

from .checkpoints import resume, save_checkpoint, save_weights, weights_bytes
from .config import TrainConfig
from .export import export
from .faults import shut_down, write_together
from .loaders import batch_tensors, placeholder_batch
from .run import Run, build_run
from .state import accumulation_group, updates_per_epoch


class Window:
    """Loss, hook losses (and the alignment's terms) and throughput between two log lines."""

    def __init__(self, hooks=(), aligner=None) -> None:
        self.hook_names = [h.name for h in hooks] + [f"align_{n}" for n in (aligner.names if aligner else ())]
        self.reset()

    def reset(self) -> None:
        self.loss, self.images = 0.0, 0
        self.hook_sums = {name: [0.0, 0] for name in self.hook_names}  # name: [sum, batches]
        self.start = time.perf_counter()

    def line(self, run: Run, epoch: int) -> dict:
        elapsed = time.perf_counter() - self.start
        return {"train/loss": self.loss / max(self.images, 1),
                **{f"train/{name}": total / max(n, 1) for name, (total, n) in self.hook_sums.items()},
                "train/lr": run.optimizer.param_groups[0]["lr"],
                "train/images_per_s": self.images * run.accelerator.num_processes / max(elapsed, 1e-9),
                "epoch": epoch + run.state.batches_in_epoch / len(run.train_loader)}


def forward_backward(run: Run, batch: dict, window: Window, scale: float) -> bool:
    """One micro-batch: loss (plus the hooks' losses) times `scale`, backward (gradients add up until
    `optimizer_step`). False when this process skipped an all-undecodable batch."""
    from .losses import smooth_targets

    config, accelerator, model = run.config, run.accelerator, run.model
    images, labels = batch_tensors(batch, accelerator.device, run.dtype, config.channels_last,
                                   even=run.mixup is not None)
    weight = 1.0
    if images.shape[0] == 0:  # undecodable images only (counted by the caller)
        if accelerator.num_processes == 1:
            return False
        # every process must take the step (DDP's gradient all-reduce, synchronised norms):
        # this one repeats its previous batch with weight 0
        images, labels = run.last_batch if run.last_batch is not None else placeholder_batch(model, config, run.dtype)
        weight = 0.0
    run.last_batch = (images, labels)
    if run.mixup is not None:
        images, labels = run.mixup(images, labels)
    elif config.smoothing > 0:
        labels = smooth_targets(labels, run.num_classes, config.smoothing)
    if run.aligner is not None:  # no labels: the student's distance to its teacher
        loss, parts = run.aligner(run.train_forward, images)
        loss = loss * weight
        for name, value in parts.items() if weight else ():
            window.hook_sums[f"align_{name}"][0] += float(value.detach())
            window.hook_sums[f"align_{name}"][1] += 1
    else:
        loss = run.criterion(run.train_forward(images), labels) * weight
    for hook in run.hooks if weight else ():
        extra = hook(accelerator.unwrap_model(model), images, batch)
        if extra is not None:
            window.hook_sums[hook.name][0] += float(extra.detach())
            window.hook_sums[hook.name][1] += 1
            loss = loss + hook.weight * extra
    accelerator.backward(loss * scale)
    if weight:
        window.loss += float(loss.detach()) * images.shape[0]
        window.images += images.shape[0]
    return True


def optimizer_step(run: Run) -> None:
    """Clip the accumulated gradients (if asked), step, clear them."""
    from timm.utils import dispatch_clip_grad

    if run.config.clip_grad:
        run.accelerator.unscale_gradients()
        dispatch_clip_grad(run.model.parameters(), run.config.clip_grad, mode=run.config.clip_mode)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def after_update(run: Run, window: Window, epoch: int, bar) -> None:
    """Schedule, EMA, progress and the log line after an optimizer update."""
    config, state = run.config, run.state
    state.update += 1
    if run.scheduler is not None:
        run.scheduler.step_update(state.update)
    if run.ema is not None:
        run.ema.update(run.accelerator.unwrap_model(run.model), step=state.update)
    bar.update(1)
    if state.update % config.log_every == 0 or state.batches_in_epoch == len(run.train_loader):
        line = window.line(run, epoch)
        bar.set_postfix(loss=f"{line['train/loss']:.4f}", ips=f"{line['train/images_per_s']:.0f}")
        if run.use_tb:
            run.accelerator.log(line, step=state.update)
        if config.no_progress:
            run.say(json.dumps({"step": state.update, **{k: round(v, 6) for k, v in line.items()}}), flush=True)
        window.reset()


def epoch_loader(run: Run):
    """The training loader of the current epoch, from the run's data position on."""
    config, state = run.config, run.state
    run.sampler.set_epoch(state.epoch)
    run.train_ds.set_epoch(state.epoch)
    if config.streaming:  # each worker starts at its next batch, reading nothing before it
        run.train_ds.set_position(state.batches_in_epoch)
        return run.train_loader
    loader = run.accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch) \
        if state.batches_in_epoch else run.train_loader
    loader.set_epoch(state.epoch)  # Accelerate's loaders set the sampler's epoch from their own count
    return loader


def train_epoch(run: Run, bar) -> tuple[bool, int]:
    """Train from the current data position to the end of the epoch, or until --max-steps.
    Returns (stopped early, undecodable images this process met)."""
    config, state, epoch = run.config, run.state, run.state.epoch
    # checkpoints are taken after updates only, so a resumed epoch starts with a fresh group
    window, skipped, group_has_gradients = Window(run.hooks, run.aligner), 0, False
    for batch in epoch_loader(run):
        skipped += int(batch["skipped"])
        size, closes = accumulation_group(state.batches_in_epoch, len(run.train_loader), config.grad_accum)
        # each update's gradient is the mean of its group's micro-batch gradients; DDP
        # all-reduces only in the backward that closes the group
        with contextlib.nullcontext() if closes else run.accelerator.no_sync(run.model):
            group_has_gradients |= forward_backward(run, batch, window, 1 / size)
        state.batches_in_epoch += 1
        if not closes or not group_has_gradients:
            continue
        group_has_gradients = False
        optimizer_step(run)
        after_update(run, window, epoch, bar)
        stop = config.max_steps is not None and state.update >= config.max_steps
        if (config.checkpoint_every and state.update % config.checkpoint_every == 0
                and state.batches_in_epoch < len(run.train_loader)):
            save_checkpoint(run)
        if stop:
            return state.batches_in_epoch < len(run.train_loader), skipped
    return False, skipped


def end_epoch(run: Run, skipped: int) -> None:
    """Evaluate, remember the best weights, log, checkpoint."""
    from ..eval.accuracy import evaluate_accuracy

    accelerator, state = run.accelerator, run.state
    if run.val_loader is not None:
        run.metrics = evaluate_accuracy(run.model, run.val_loader, accelerator=accelerator, dtype=run.dtype)
        if run.ema is not None:
            ema_metrics = evaluate_accuracy(run.ema.module, run.val_loader, accelerator=accelerator, dtype=run.dtype)
            run.metrics.update({f"ema_{k}": v for k, v in ema_metrics.items() if k != "n"})
        if run.metrics["top1"] > state.best_top1:
            state.best_top1, state.best_epoch = run.metrics["top1"], state.epoch
            best, model = Path(run.config.output) / "best.safetensors", accelerator.unwrap_model(run.model)
            write_together(accelerator, lambda: save_weights(model, best), "the best weights", best,
                           partial(weights_bytes, model), main_only=True)
        if run.use_tb:
            accelerator.log({f"val/{k}": v for k, v in run.metrics.items()}, step=state.update)
    skipped = int(accelerator.reduce(torch.tensor(skipped, device=accelerator.device), "sum"))
    run.say(json.dumps({"epoch": state.epoch, "step": state.update,
                        **{k: round(v, 3) for k, v in run.metrics.items()}, "skipped_images": skipped}), flush=True)
    state.epoch += 1
    state.batches_in_epoch = 0
    save_checkpoint(run)


@dataclass
class TrainResult:
    """What `train` returns: where the run wrote, where it stopped and what it measured last."""

    output: Path
    epoch: int
    step: int
    metrics: dict = field(default_factory=dict)
    best_top1: float = -1.0
    export: Path | None = None  # OUTPUT/export, when the run finished and exported
    num_processes: int = 1


def announce(run: Run) -> int:
    """Print what is trained on what; returns the optimizer updates per epoch."""
    config = run.config
    per_epoch = updates_per_epoch(len(run.train_loader), config.grad_accum)
    run.say(f"{config.model}: {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M params, "
            f"{run.train_ds.split.num_rows if config.streaming else len(run.train_ds)} train"
            f"{' (streamed)' if config.streaming else ''} / "
            f"{len(run.val_loader.dataset) if run.val_loader else 0} val images, {run.num_classes} classes, "
            f"{run.accelerator.num_processes} process(es), global batch {config.batch_size}, "
            f"{per_epoch} steps/epoch", flush=True)
    return per_epoch


def train(config: TrainConfig) -> TrainResult:
    """Train (or fine-tune, or resume) as `config` says, on every process of the launch: one process, or
    under `accelerate launch`, torchrun, or `accelerate.notebook_launcher(train, (config,), num_processes=N)`.
    Raises TrainError for a run that cannot start or go on."""
    from tqdm.auto import tqdm

    run = build_run(config)
    resume(run)
    accelerator, state = run.accelerator, run.state
    if run.use_tb:
        accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in vars(config).items()})
    total_updates = config.epochs * announce(run)
    if config.max_steps is not None:
        total_updates = min(total_updates, config.max_steps)
    bar = tqdm(total=total_updates, initial=state.update, unit="step", dynamic_ncols=True,
               disable=config.no_progress or not accelerator.is_local_main_process)
    run.model.train()
    if run.scheduler is not None:
        run.scheduler.step_update(state.update)
    while state.epoch < config.epochs:
        stopped_mid_epoch, skipped = train_epoch(run, bar)
        if stopped_mid_epoch:
            break
        end_epoch(run, skipped)
        if config.max_steps is not None and state.update >= config.max_steps:
            break
    bar.close()
    output, exported = Path(config.output), None
    if config.export != "none" and state.epoch >= config.epochs:
        model, exported = accelerator.unwrap_model(run.model), output / "export"
        write_together(accelerator, lambda: export(config, model, run.ema, state, run.metrics, run.info, output),
                       "the export", exported, partial(weights_bytes, model), main_only=True)
    shut_down(accelerator)
    return TrainResult(output=output, epoch=state.epoch, step=state.update, metrics=dict(run.metrics),
                       best_top1=state.best_top1, export=exported, num_processes=accelerator.num_processes)
