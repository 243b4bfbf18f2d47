#!/usr/bin/env python
"""Train or fine-tune any timm model (B-cos or conventional) with Hugging Face Accelerate.

From one CPU process to multi-node GPUs, the same script:

  pip install -e ".[train]"                  # from a clone of timm_bcos
  # CIFAR-10, the paper's 9-layer B-cos network, one process:
  python train_scripts/train.py --config train_scripts/configs/cifar10_bcos.yaml \\
      --dataset uoft-cs/cifar10 --output runs/cifar10
  # ImageNet, B-cos v2 recipe, 8 GPUs (accelerate configs in train_scripts/configs/accelerate/):
  accelerate launch --config_file train_scripts/configs/accelerate/8gpu.yaml train_scripts/train.py \\
      --config train_scripts/configs/imagenet_bcos_v2.yaml --model bcos_resnet50 \\
      --dataset ILSVRC/imagenet-1k --output runs/resnet50
  # fine-tune a released B-cos model on your own folder (one subfolder per class):
  accelerate launch train_scripts/train.py --config train_scripts/configs/finetune.yaml \\
      --model bcos_resnet50 --pretrained --dataset path/to/folder --output runs/mine

Every option can be set in the YAML file (same names, with underscores) and overridden
on the command line. --batch-size is the global batch (split across processes), so a
recipe means the same thing on 1 or 64 GPUs. Interrupted runs continue with
--resume latest, exactly where they stopped (model, optimiser, EMA, data position, RNG);
under `torchrun --max-restarts N` a job that loses a worker restarts and resumes by itself.
At the end the EMA (or best) weights are exported in the Hugging Face Hub layout to
OUTPUT/export (model.safetensors + config.json + README.md with the measured accuracy).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch


def _model_options(p: argparse.ArgumentParser) -> None:
    """--model and what shapes the network."""
    g = p.add_argument_group("model")
    g.add_argument("--model", help="timm model name (bcos_* or conventional); see timm.list_models()")
    g.add_argument("--model-kwargs", type=json.loads, default={},
                   help='JSON dict of extra create_model kwargs, e.g. \'{"width": 0.5, "norm": true}\'')
    g.add_argument("--pretrained", action="store_true", help="start from the model's pretrained weights")
    g.add_argument("--checkpoint", "--initial-checkpoint", dest="checkpoint",
                   help="start from these weights (.safetensors, or a .pth state dict)")
    g.add_argument("--bcosify-from", help="start a B-cos model from this conventional timm model's "
                   "pretrained weights (timm_bcos.convert with carry_weights=True)")
    g.add_argument("--recipe", default="bcosify", help="B-cos recipe for --bcosify-from: bcosify (the "
                   "B-cosification paper's, default), v2, v2_bnu or v1")
    g.add_argument("--recipe-kwargs", type=json.loads, default={}, help="JSON dict of recipe fields for "
                   "--bcosify-from, e.g. '{\"learn_b\": true}' (the paper's learned B) or '{\"b\": 1.5}'")
    g.add_argument("--num-classes", type=int, help="default: the number of classes in the data set")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (the model's drop_path_rate)")
    g.add_argument("--img-size", type=int, help="input image size (default: the model's cfg); models with "
                   "a fixed input size (ViTs) are built for it")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute activations in backward")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory layout")
    g.add_argument("--sync-bn", action="store_true", help="batch statistics over all processes "
                   "(uncentered B-cos norms get their own synchronised variant)")
    g.add_argument("--compile", "--torchcompile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the training forward (backend: %(const)s if none is given)")
    g.add_argument("--compile-mode", "--torchcompile-mode", choices=COMPILE_MODES, default=None,
                   help="inductor's mode: reduce-overhead replays CUDA graphs, which removes the host "
                   "time per kernel launch that bounds eager B-cos steps on fast GPUs")


def _data_options(p: argparse.ArgumentParser) -> None:
    """Data set, columns, loaders and augmentation."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", help="Hub data set id (uoft-cs/cifar10, ILSVRC/imagenet-1k), a local "
                   "folder (Hub parquet layout, or one subfolder of images per class), or webdataset tar "
                   "shards, streamed: wds:FOLDER (timm's _info.json, or NAME-<split>-0000.tar) or "
                   "'wds:PATH/{split}-{0000..0099}.tar'")
    g.add_argument("--train-split", default="train", help="%(default)s; slicing works: 'train[:10%%]'")
    g.add_argument("--val-split", default="validation", help="%(default)s; '' to skip evaluation")
    g.add_argument("--image-column", help="default: found automatically (image, img, ...)")
    g.add_argument("--label-column", help="default: found automatically (label, labels, ...)")
    g.add_argument("--max-train-samples", type=int)
    g.add_argument("--max-val-samples", type=int)
    g.add_argument("--cache-dir", help="datasets cache folder")
    g.add_argument("-j", "--workers", type=int, default=2, help="data loader workers per process (%(default)s)")
    g.add_argument("--pin-mem", action="store_true", help="page-locked batches for faster copies to a CUDA "
                   "device (timm's flag; ignored without one)")
    g.add_argument("--streaming", action="store_true", help="read the splits' parquet shards as the run goes "
                   "(Hub id or local folder): no download ahead, no Arrow cache; resumes exactly with the same "
                   "number of processes and --workers (always on for wds: data sets)")
    g.add_argument("--shuffle-buffer", type=int, default=1000, help="--streaming: rows shuffled together "
                   "(whole row groups pooled up to at least this many) (%(default)s)")
    g = p.add_argument_group("augmentation")
    g.add_argument("--crop", default="rrc", choices=["rrc", "pad"],
                   help="rrc: timm's random resized crop; pad: pad 4 + random crop (CIFAR) (%(default)s)")
    g.add_argument("--auto-augment", "--aa", dest="auto_augment", help="timm auto-augment spec, e.g. rand-m9-mstd0.5 (RandAugment)")
    g.add_argument("--hflip", type=float, default=0.5)
    g.add_argument("--scale", type=float, nargs=2, default=None, help="random resized crop scale range")
    g.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (0: off)")
    g.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (0: off)")
    g.add_argument("--smoothing", type=float, default=0.0, help="label smoothing (with or without mixup)")


def _optimisation_options(p: argparse.ArgumentParser) -> None:
    """Loss, optimizer, schedule, precision and distribution."""
    g = p.add_argument_group("optimisation")
    g.add_argument("--loss", default="bce", choices=["bce", "bce_uniform_off", "ce"],
                   help="bce: paper Eq. 16; bce_uniform_off: v2 (off-labels 1/C); ce: conventional")
    g.add_argument("--opt", default="adam", help="any timm optimizer (adam, adamw, sgd, lamb, ...)")
    g.add_argument("--lr", type=float, default=1e-3)
    g.add_argument("--weight-decay", type=float, default=0.0)
    g.add_argument("--momentum", type=float, default=0.9, help="for SGD-like optimizers")
    g.add_argument("-b", "--batch-size", type=int, default=64,
                   help="GLOBAL batch size, split across processes (%(default)s; timm's -b is per process)")
    g.add_argument("--grad-accum", "--grad-accum-steps", dest="grad_accum", type=int, default=1,
                   help="gradient accumulation steps")
    g.add_argument("--epochs", type=int, default=100)
    g.add_argument("--sched", default="cosine", help="timm scheduler: cosine, step, multistep, none")
    g.add_argument("--warmup-epochs", type=float, default=0)
    g.add_argument("--warmup-lr", type=float, default=1e-6)
    g.add_argument("--min-lr", type=float, default=0.0)
    g.add_argument("--decay-epochs", type=float, default=30, help="step schedule period")
    g.add_argument("--decay-milestones", type=int, nargs="+", default=[60], help="multistep epochs")
    g.add_argument("--decay-rate", type=float, default=0.1)
    g.add_argument("--clip-grad", type=float, help="clip value (with --clip-mode)")
    g.add_argument("--clip-mode", default="agc", choices=["agc", "norm", "value"],
                   help="agc: adaptive gradient clipping as in the B-cos v2 recipes (%(default)s)")
    g.add_argument("--ema-decay", "--model-ema-decay", dest="ema_decay", type=float, default=0.0,
                   help="model EMA decay (0: off), e.g. 0.9998")
    g.add_argument("--amp", action="store_true", help="mixed precision in --amp-dtype (timm's flag)")
    g.add_argument("--amp-dtype", default="float16", choices=["float16", "bfloat16"])
    g.add_argument("--mixed-precision", default=None, choices=["no", "fp16", "bf16"],
                   help="default: what `accelerate launch` / its config says")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="parameter and input dtype (%(default)s); float64 makes runs comparable "
                        "across machines and process counts (rounding ~1e-16)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--cpu", action="store_true", help="train on the CPU even where GPUs are present")


def _guidance_and_output_options(p: argparse.ArgumentParser) -> None:
    """Guidance, checkpoints, logging and export."""
    g = p.add_argument_group("guidance (training with explanations: timm_bcos.guidance)")
    g.add_argument("--guidance", choices=["energy", "l1", "rrr", "ppce"],
                   help="a loss on the model's own contribution maps where annotations say the evidence is")
    g.add_argument("--guidance-weight", type=float, default=1.0, help="weight of the guidance loss (%(default)s)")
    g.add_argument("--guidance-layer", default="input",
                   help="where contributions are taken: input, final, mid (timm feature_info) or a module path")
    g.add_argument("--annotated-fraction", type=float, default=1.0,
                   help="share of the training images whose annotation is used (a fixed draw per image)")
    g.add_argument("--mask-column", help="data set column with a mask image (0/255 or 0/1 grey, bilevel, or a "
                   "palette index mask: where the evidence is; a blurred or JPEG 0/255 mask is read at >= 128)")
    g.add_argument("--boxes-column", help="data set column with boxes [[x0, y0, x1, y1], ...] in pixels")
    g.add_argument("--box-dilation", type=int, default=0, help="grow each box by this many pixels")
    g = p.add_argument_group("checkpoints and output")
    g.add_argument("--output", default="runs/train", help="output folder (%(default)s)")
    g.add_argument("--checkpoint-every", type=int, default=0,
                   help="also save a checkpoint every N optimizer steps (0: only at epoch ends)")
    g.add_argument("--keep-checkpoints", "--checkpoint-hist", dest="keep_checkpoints", type=int, default=2)
    g.add_argument("--resume", help="a checkpoint folder, or 'latest' (the newest in OUTPUT/checkpoints)")
    g.add_argument("--export", default="ema", choices=["ema", "best", "last", "none"],
                   help="weights exported to OUTPUT/export at the end (ema falls back to best) (%(default)s)")
    g.add_argument("--log-every", "--log-interval", dest="log_every", type=int, default=50, help="optimizer steps between log lines")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--no-tensorboard", action="store_true")
    g.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (for tests)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", help="YAML file of option values (train_scripts/configs/*.yaml)")
    for add in (_model_options, _data_options, _optimisation_options, _guidance_and_output_options):
        add(p)
    return p


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def parse_args(argv=None) -> argparse.Namespace:
    parser = build_parser()
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        import yaml

        path = Path(pre.config)
        if not path.is_file():
            parser.error(f"config file not found: {pre.config}")
        values = yaml.safe_load(path.read_text()) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"{pre.config}: unknown options {unknown}; valid ones are the --long-options "
                         "of train.py with underscores")
        parser.set_defaults(**values)
    args = parser.parse_args(argv)
    for required in ("model", "dataset"):
        if not getattr(args, required):
            parser.error(f"--{required} is required (on the command line or in --config)")
    if args.guidance:
        check_guidance_args(parser, args)
    if not isinstance(args.recipe_kwargs, dict) or (args.recipe_kwargs and not args.bcosify_from):
        parser.error(f"--recipe-kwargs takes a JSON dict of recipe fields for --bcosify-from, got "
                     f"{json.dumps(args.recipe_kwargs)}{'' if args.bcosify_from else ' without --bcosify-from'}")
    if args.compile_mode and args.compile != "inductor":
        given = f"--compile {args.compile}" if args.compile else "no --compile"
        parser.error(f"--compile-mode is inductor's; it needs --compile (inductor), got {given}")
    if args.amp and args.mixed_precision is None:  # timm's --amp / --amp-dtype
        args.mixed_precision = {"float16": "fp16", "bfloat16": "bf16"}[args.amp_dtype]
    if args.dataset.startswith("wds:"):  # tar shards are read in order: there is no map-style path
        args.streaming = True
    return args


def check_guidance_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if bool(args.mask_column) == bool(args.boxes_column):
        parser.error("--guidance needs exactly one of --mask-column or --boxes-column")
    clash = [flag for flag, on in (("--mixup/--cutmix", args.mixup or args.cutmix), ("--auto-augment", args.auto_augment),
                                   ("--sync-bn", args.sync_bn), ("--grad-checkpointing", args.grad_checkpointing)) if on]
    # mixed images have no single mask; colour ops would repaint masks; checkpointed segments would be
    # recomputed outside explanation mode in the double backward
    if clash:
        parser.error(f"--guidance does not work with {', '.join(clash)} yet")
    if not 0 < args.annotated_fraction <= 1:
        parser.error(f"--annotated-fraction must be in (0, 1], got {args.annotated_fraction}")


def fail(message: str) -> "NoReturn":  # noqa: F821
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_model_name(name: str) -> None:
    from timm_bcos.cli import unknown_model_message

    message = unknown_model_message(name, cutoff=0.6)
    if message:
        fail(message)


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    from timm_bcos.cli import load_weights_file as load

    try:
        return load(path)
    except (FileNotFoundError, ValueError) as e:  # missing, damaged or not a state dict: one line
        fail(str(e))


def load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str, model_name: str) -> None:
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


def create_model(args: argparse.Namespace, num_classes: int) -> torch.nn.Module:
    import timm

    import timm_bcos

    check_model_name(args.model)
    kwargs = dict(args.model_kwargs)
    if args.drop_path is not None:
        kwargs["drop_path_rate"] = args.drop_path
    if args.bcosify_from:
        check_model_name(args.bcosify_from)
        conventional = timm.create_model(args.bcosify_from, pretrained=True, **kwargs)
        try:
            model = timm_bcos.convert(conventional, args.recipe, carry_weights=True, **args.recipe_kwargs)
        except (TypeError, ValueError) as e:  # an unknown recipe or field, or a field out of range
            fail(f"B-cosifying {args.bcosify_from} (--recipe {args.recipe}, --recipe-kwargs "
                 f"{json.dumps(args.recipe_kwargs)}): {e}")
        if model.num_classes != num_classes:
            model.reset_classifier(num_classes)
    else:
        model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes, **kwargs)
        if args.img_size and model.pretrained_cfg.get("fixed_input_size") and "img_size" not in kwargs:
            # a ViT's position embedding has the input size built in: rebuild for --img-size
            model = timm.create_model(args.model, pretrained=args.pretrained, num_classes=num_classes,
                                      img_size=args.img_size, **kwargs)
    if args.checkpoint:
        load_into(model, load_weights_file(args.checkpoint), args.checkpoint, args.model)
    return model


def adapt_for_training(model: torch.nn.Module, args: argparse.Namespace) -> torch.nn.Module:
    """--grad-checkpointing, --sync-bn, --channels-last: what timm's train.py does after creation."""
    if args.grad_checkpointing:
        try:
            model.set_grad_checkpointing(True)
        except (AttributeError, AssertionError, NotImplementedError) as e:
            fail(f"--grad-checkpointing: {type(model).__name__} does not support it ({e})")
    if args.sync_bn:
        from timm_bcos.layers import convert_sync_batchnorm

        try:
            model = convert_sync_batchnorm(model)  # never torch's own: it would center B-cos norms
        except NotImplementedError as e:
            fail(f"--sync-bn: {e}")
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def batch_tensors(batch: dict, device: torch.device, dtype: torch.dtype, channels_last: bool, even: bool):
    """Images in the training device, dtype and layout (a streamed batch comes from the CPU); `even`
    drops one image of an odd batch (timm's Mixup pairs images)."""
    # non_blocking: an overlapped copy from a pinned batch (--pin-mem), a plain one otherwise
    images, labels = batch["images"].to(device, dtype, non_blocking=True), batch["labels"].to(device, non_blocking=True)
    if even and images.shape[0] % 2:
        images, labels = images[:-1], labels[:-1]
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def placeholder_batch(model: torch.nn.Module, args: argparse.Namespace, dtype: torch.dtype):
    """Two black images of the model's input size (for a weight-0 step before any real batch)."""
    from timm.data import resolve_data_config

    size = resolve_data_config({"img_size": args.img_size} if args.img_size else {}, model=model)["input_size"]
    device = next(model.parameters()).device
    return torch.zeros(2, *size, dtype=dtype, device=device), torch.zeros(2, dtype=torch.long, device=device)


def training_dataset(args: argparse.Namespace, train_hf, info, transform, model):
    """The training data set and its collate function (with masks under --guidance)."""
    from timm_bcos.data import ImageClassificationDataset, collate_skipping

    if not args.guidance:
        return ImageClassificationDataset(train_hf, info, transform, seed=args.seed), collate_skipping
    from timm_bcos.guidance import AnnotatedImageDataset, collate_annotated

    mean, std = model.pretrained_cfg.get("mean", (0, 0, 0)), model.pretrained_cfg.get("std", (1, 1, 1))
    try:
        data = AnnotatedImageDataset(train_hf, info, transform, mask_column=args.mask_column,
                                     boxes_column=args.boxes_column, fraction=args.annotated_fraction,
                                     dilation=args.box_dilation, mask_threshold=(0.5 - mean[0]) / std[0],
                                     seed=args.seed)
    except ValueError as e:
        fail(str(e))
    return data, collate_annotated


def streaming_dataset(args: argparse.Namespace, split, transform):
    """This process's share of a streamed split, in per-process batches (Accelerate does not shard
    an iterable loader without reading it all on one process, so the stream shards itself)."""
    from accelerate.state import PartialState

    from timm_bcos.streaming import ShardStream

    if args.guidance:
        fail("--guidance reads masks through the map-style data set: drop --streaming for it"
             + (" (a wds: data set is always streamed: use a parquet or image-folder copy)"
                if args.dataset.startswith("wds:") else ""))
    if args.shuffle_buffer < 1:
        fail(f"--shuffle-buffer must be at least 1 row, got {args.shuffle_buffer}")
    state = PartialState()
    per_process = args.batch_size // args.grad_accum // state.num_processes
    if per_process == 0:
        fail(f"--batch-size {args.batch_size} gives no image per process and micro-batch under --streaming")
    return ShardStream(split, transform, batch_size=per_process, rank=state.process_index,
                       world=state.num_processes, seed=args.seed, buffer=args.shuffle_buffer)


class TrainState:
    """Where the run is: registered with Accelerate so that save_state/load_state carry it."""

    def __init__(self) -> None:
        self.epoch = 0
        self.batches_in_epoch = 0  # data position inside `epoch`
        self.update = 0  # optimizer steps so far
        self.best_top1 = -1.0
        self.best_epoch = -1

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def run_meta(args: argparse.Namespace, num_classes: int) -> dict:
    meta = {"model": args.model, "model_kwargs": args.model_kwargs, "num_classes": num_classes,
            "bcosify_from": args.bcosify_from}
    meta["streaming"] = None  # a map-style run's checkpoint (old ones have no key: None too)
    if args.streaming:  # the streamed order depends on them: a resume must keep them
        from accelerate.state import PartialState

        meta["streaming"] = {"processes": PartialState().num_processes, "workers": max(args.workers, 1),
                             "shuffle_buffer": args.shuffle_buffer}
    return meta


def find_checkpoint(args: argparse.Namespace) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from, and a line for each newer one passed over as damaged (its files
    do not match the manifest written with it: truncated, missing); never a partial state."""
    if not args.resume:
        return None, []
    if args.resume != "latest":
        path = Path(args.resume)
        if not (path / "train_meta.json").is_file():
            fail(f"--resume {args.resume}: not a checkpoint folder of train.py (no train_meta.json)")
        problem = checkpoint_problem(path)
        if problem:
            fail(f"--resume {args.resume}: the checkpoint is damaged ({problem})")
        return path, []
    ckpts = sorted((Path(args.output) / "checkpoints").glob("step_*"), reverse=True)
    if not ckpts:
        print(f"no checkpoint in {args.output}/checkpoints; starting from scratch", flush=True)
        return None, []
    skipped = []
    for ckpt in ckpts:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt, skipped
        skipped.append(f"checkpoint {ckpt} is damaged ({problem}); not resuming from it")
    fail(f"no complete checkpoint in {args.output}/checkpoints: " + "; ".join(skipped))


def checkpoint_problem(ckpt: Path) -> str | None:
    from timm_bcos.integrity import manifest_problem

    try:
        meta = json.loads((ckpt / "train_meta.json").read_text())
    except (OSError, ValueError) as e:
        return f"train_meta.json unreadable: {type(e).__name__}"
    # checkpoints from before manifests have no "files": their folders were renamed into place whole
    return manifest_problem(ckpt, meta["files"]) if "files" in meta else None


def save_checkpoint(run: "Run") -> None:
    """accelerator.save_state into a temporary folder, its manifest, then renamed when complete (a kill never
    leaves half); a failed write stops every process with one clear error and leaves the last checkpoint."""
    from timm_bcos.integrity import folder_manifest

    accelerator, args, state = run.accelerator, run.args, run.state
    root = Path(args.output) / "checkpoints"
    name = f"step_{state.update:09d}"
    tmp = root / f".tmp_{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    needed = partial(checkpoint_bytes, run)  # worked out only for an error message
    write_together(run, lambda: accelerator.save_state(str(tmp)), "a checkpoint", tmp, needed, cleanup=tmp)

    def finish_folder():
        files = folder_manifest(tmp, exclude=("train_meta.json",))
        (tmp / "train_meta.json").write_text(json.dumps({**run.meta, **state.state_dict(), "files": files}, indent=1))
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in sorted(root.glob("step_*"))[: -args.keep_checkpoints or None]:
            shutil.rmtree(old, ignore_errors=True)

    write_together(run, finish_folder, "a checkpoint", tmp, needed, cleanup=tmp, main_only=True)


def checkpoint_bytes(run: "Run") -> int:
    """About what a checkpoint takes: the newest complete one's files, else the model, EMA and optimiser tensors."""
    from timm_bcos.integrity import folder_manifest

    newest = sorted((Path(run.args.output) / "checkpoints").glob("step_*"))
    if newest and checkpoint_problem(newest[-1]) is None:
        return sum(folder_manifest(newest[-1]).values())
    states = [run.model.state_dict(), run.optimizer.state_dict()["state"]]
    if run.ema is not None:
        states.append(run.ema.state_dict())
    return _tensor_bytes(states)


def weights_bytes(model: torch.nn.Module) -> int:
    return _tensor_bytes(model.state_dict())


def _tensor_bytes(obj) -> int:
    """Bytes of every tensor in nested dicts and lists."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()
    return sum(_tensor_bytes(v) for v in values)


def write_together(run: "Run", write, what: str, path: Path, needed, *, cleanup: Path | None = None,
                   main_only: bool = False) -> None:
    """Run `write` (on every process, or on the main one) and stop every process if any write failed: none
    may wait at a barrier for one that stopped. The failing process says what and where, in one line, with
    `needed()`, the bytes the write takes."""
    from timm_bcos.integrity import write_error_message

    accelerator = run.accelerator
    message = None
    if not main_only or accelerator.is_main_process:
        try:
            write()
        except OSError as e:
            message = write_error_message(e, what, path, needed())
    failed = int(accelerator.reduce(torch.tensor(int(message is not None), device=accelerator.device), "sum"))
    if not failed:
        return
    if cleanup is not None and accelerator.is_main_process:
        shutil.rmtree(cleanup, ignore_errors=True)
    accelerator.wait_for_everyone()  # the temporary folder is gone before anyone stops
    fail(message or f"stopping: another process could not write {what} to {path}")


class Window:
    """Loss, guidance loss and throughput between two log lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.loss, self.images, self.guidance, self.guided = 0.0, 0, 0.0, 0
        self.start = time.perf_counter()

    def line(self, run: "Run", epoch: int) -> dict:
        elapsed = time.perf_counter() - self.start
        return {"train/loss": self.loss / max(self.images, 1),
                **({"train/guidance": self.guidance / max(self.guided, 1)} if run.args.guidance else {}),
                "train/lr": run.optimizer.param_groups[0]["lr"],
                "train/images_per_s": self.images * run.accelerator.num_processes / max(elapsed, 1e-9),
                "epoch": epoch + run.state.batches_in_epoch / len(run.train_loader)}


@dataclass
class Run:
    """Everything a training run holds, built by `build_run`."""

    args: argparse.Namespace
    accelerator: Any
    use_tb: bool
    info: Any
    num_classes: int
    dtype: torch.dtype
    meta: dict
    model: torch.nn.Module  # prepared by Accelerate (DDP-wrapped on several processes)
    train_forward: Any  # `model`, or its torch.compile'd version (training forward only)
    guidance_at: str | None
    train_ds: Any
    sampler: Any
    train_loader: Any
    val_loader: Any
    mixup: Any
    criterion: torch.nn.Module
    optimizer: Any
    scheduler: Any
    ema: Any
    state: "TrainState"
    metrics: dict = field(default_factory=dict)
    last_batch: tuple | None = None  # for a weight-0 step when a process's batch is all undecodable

    def say(self, *a, **kw) -> None:
        self.accelerator.print(*a, **kw)


def join_restarted_workers(args: argparse.Namespace) -> None:
    """Workers that torchrun restarts (--max-restarts) reuse the agent's TCPStore of the first attempt, with
    its keys: gloo would read the dead workers' addresses there and hang or be refused in connectFullMesh
    (pytorch#135712). On one node every worker has the same restart count, so the process group is made
    here on the store keyed by attempt (Accelerate then uses it). Several nodes' counts can differ: there
    TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 gives each attempt a fresh store instead."""
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    if restart == 0 or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return
    if os.environ.get("GROUP_WORLD_SIZE", "1") != "1":
        print("warning: a restarted multi-node worker; if it hangs in connectFullMesh, launch torchrun with "
              "TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (pytorch#135712)", file=sys.stderr, flush=True)
        return
    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False)
    dist.init_process_group("gloo" if args.cpu else None, store=dist.PrefixStore(f"attempt_{restart}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def create_accelerator(args: argparse.Namespace):
    from accelerate import Accelerator, DataLoaderConfiguration

    join_restarted_workers(args)

    use_tb = not args.no_tensorboard
    if use_tb:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            use_tb = False
    # gradient accumulation is counted by `train_epoch`, not by Accelerate: Accelerate's counter
    # misses the batches this process drops as undecodable, and it scales every loss by 1/N,
    # the epoch's shorter last group's too
    accelerator = Accelerator(
        cpu=args.cpu, mixed_precision=args.mixed_precision,
        dataloader_config=DataLoaderConfiguration(split_batches=True), rng_types=[],
        log_with="tensorboard" if use_tb else None, project_dir=str(args.output),
    )
    if accelerator.gradient_accumulation_steps != 1:  # from `accelerate launch`'s config or environment
        fail(f"gradient accumulation {accelerator.gradient_accumulation_steps} in Accelerate's config: give it "
             "to train.py as --grad-accum instead")
    if args.batch_size % (accelerator.num_processes * args.grad_accum):
        fail(f"--batch-size {args.batch_size} must be divisible by processes x --grad-accum "
             f"({accelerator.num_processes} x {args.grad_accum})")
    return accelerator, use_tb


def load_data(args: argparse.Namespace, accelerator):
    """(train split, validation split or None, info), prepared once by the main process."""
    from timm_bcos.data import DataError, load_split
    from timm_bcos.streaming import ShardRows, open_stream_split, shared_rows

    columns = {"image_column": args.image_column, "label_column": args.label_column}
    try:
        with accelerator.main_process_first():  # one process downloads and prepares, the others reuse it
            val_hf = None
            if args.streaming:
                train_hf = open_stream_split(args.dataset, args.train_split, **columns,
                                             max_samples=args.max_train_samples, num_classes=args.num_classes)
                info = train_hf.info
                if args.val_split:  # read on demand too: no download of the validation split either
                    val = open_stream_split(args.dataset, args.val_split, **columns, max_samples=args.max_val_samples,
                                            num_classes=info.num_classes)
                    if shared_rows(val, train_hf):
                        fail(f"--val-split {args.val_split!r} reads shards of --train-split {args.train_split!r}: "
                             "name another split ('{split}' in a wds: pattern) or pass --val-split ''")
                    val_hf = ShardRows(val)
            else:
                train_hf, info = load_split(args.dataset, args.train_split, cache_dir=args.cache_dir, **columns,
                                            max_samples=args.max_train_samples)
                if args.val_split:
                    val_hf, _ = load_split(args.dataset, args.val_split, cache_dir=args.cache_dir,
                                           image_column=info.image_column, label_column=info.label_column,
                                           max_samples=args.max_val_samples)
    except DataError as e:
        fail(str(e))
    return train_hf, val_hf, info


def build_loaders(args: argparse.Namespace, model, train_hf, val_hf, info):
    """(training data set, its epoch sampler, training loader, validation loader or None)."""
    from timm_bcos.data import EpochSampler, ImageClassificationDataset, build_transform, collate_skipping

    per_step = args.batch_size // args.grad_accum
    pin = args.pin_mem and torch.cuda.is_available() and not args.cpu
    # under --guidance the masks go through the same transform: geometry only (timm's default
    # colour jitter would repaint them)
    train_tf = build_transform(model, is_training=True, crop=args.crop, hflip=args.hflip, img_size=args.img_size,
                               auto_augment=args.auto_augment, scale=args.scale and tuple(args.scale),
                               color_jitter=0.0 if args.guidance else None)
    if args.streaming:
        train_ds = sampler = streaming_dataset(args, train_hf, train_tf)
        # its own generator: the loader's base seed must not draw from torch's global RNG, which
        # a resume restores to the checkpoint's state (a resumed run would then be one draw ahead)
        train_loader = torch.utils.data.DataLoader(train_ds, batch_size=None, num_workers=args.workers,
                                                   generator=torch.Generator(), pin_memory=pin)
    else:
        train_ds, train_collate = training_dataset(args, train_hf, info, train_tf, model)
        sampler = EpochSampler(len(train_ds), seed=args.seed)
        train_loader = torch.utils.data.DataLoader(
            train_ds, batch_size=per_step, sampler=sampler, drop_last=True, num_workers=args.workers,
            collate_fn=train_collate, generator=torch.Generator(), pin_memory=pin,
        )
    if len(train_loader) == 0:
        if args.streaming:
            fail(f"{train_ds.share} training images per process are fewer than one batch of {train_ds.batch_size}")
        fail(f"{len(train_ds)} training images are fewer than one batch of {per_step}")
    val_loader = None
    if val_hf is not None:
        val_ds = ImageClassificationDataset(val_hf, info, build_transform(model, is_training=False,
                                                                          img_size=args.img_size))
        val_loader = torch.utils.data.DataLoader(val_ds, batch_size=per_step, num_workers=args.workers,
                                                 collate_fn=collate_skipping, pin_memory=pin)
    return train_ds, sampler, train_loader, val_loader


def updates_per_epoch(batches: int, accum: int) -> int:
    """Optimizer updates in an epoch of `batches` micro-batches: a shorter last group is an
    update of its own (as in timm's train.py)."""
    return -(-batches // accum)


def accumulation_group(position: int, batches: int, accum: int) -> tuple[int, bool]:
    """(size of the group of micro-batch `position` (0-based) of an epoch of `batches`, whether
    it is the group's last): groups of `accum`, the epoch's last one possibly shorter."""
    start = position - position % accum
    size = min(accum, batches - start)
    return size, position == start + size - 1


def build_schedule(args: argparse.Namespace, optimizer, updates_per_epoch: int):
    from timm.scheduler import create_scheduler_v2

    if args.sched == "none":
        return None
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=args.sched, num_epochs=args.epochs, decay_epochs=args.decay_epochs,
        decay_milestones=args.decay_milestones, decay_rate=args.decay_rate, min_lr=args.min_lr,
        warmup_lr=args.warmup_lr, warmup_epochs=args.warmup_epochs, step_on_epochs=False,
        updates_per_epoch=updates_per_epoch,
    )
    return scheduler


def build_run(args: argparse.Namespace) -> Run:
    from accelerate.utils import set_seed
    from timm.data import Mixup
    from timm.optim import create_optimizer_v2
    from timm.utils import ModelEmaV3

    from timm_bcos.guidance import guidance_layer
    from timm_bcos.losses import create_loss

    accelerator, use_tb = create_accelerator(args)
    set_seed(args.seed)
    check_model_name(args.model)
    train_hf, val_hf, info = load_data(args, accelerator)
    num_classes = args.num_classes or info.num_classes
    dtype = getattr(torch, args.dtype)
    model = adapt_for_training(create_model(args, num_classes).to(dtype), args)
    try:
        guidance_at = guidance_layer(model, args.guidance_layer) if args.guidance else None
    except (ValueError, AttributeError) as e:
        fail(f"--guidance-layer {args.guidance_layer}: {e}")
    train_ds, sampler, train_loader, val_loader = build_loaders(args, model, train_hf, val_hf, info)
    mixup = None
    if args.mixup > 0 or args.cutmix > 0:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, label_smoothing=args.smoothing,
                      num_classes=num_classes)
    optimizer = create_optimizer_v2(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                    momentum=args.momentum)
    if args.streaming:  # the stream shards itself (see streaming_dataset)
        model, optimizer = accelerator.prepare(model, optimizer)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    ema = None
    if args.ema_decay > 0:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=args.ema_decay)
        accelerator.register_for_checkpointing(ema)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    return Run(args=args, accelerator=accelerator, use_tb=use_tb, info=info, num_classes=num_classes, dtype=dtype,
               meta=run_meta(args, num_classes), model=model,
               # the compiled module only runs the training forward; checkpoints, EMA and exports
               # use `model` itself, so their state-dict keys stay plain (no `_orig_mod.`)
               train_forward=torch.compile(model, backend=args.compile, mode=args.compile_mode) if args.compile
               else model,
               guidance_at=guidance_at, train_ds=train_ds, sampler=sampler, train_loader=train_loader,
               val_loader=val_loader, mixup=mixup, criterion=create_loss(args.loss), optimizer=optimizer,
               scheduler=build_schedule(args, optimizer, updates_per_epoch(len(train_loader), args.grad_accum)),
               ema=ema, state=state)


def resume(run: Run) -> None:
    ckpt, skipped = find_checkpoint(run.args)
    for line in skipped:
        run.say(line, flush=True)
    if ckpt is None:
        return
    saved = json.loads((ckpt / "train_meta.json").read_text())
    differs = {k: (saved.get(k), v) for k, v in run.meta.items() if saved.get(k) != v}
    if differs:
        fail(f"checkpoint {ckpt} is from another run: " +
             ", ".join(f"{k} {a!r} there, {b!r} here" for k, (a, b) in differs.items()))
    try:
        run.accelerator.load_state(str(ckpt))
    except Exception as e:
        fail(f"cannot resume from {ckpt}: {type(e).__name__}: {e}")
    run.say(f"resumed from {ckpt}: epoch {run.state.epoch}, {run.state.batches_in_epoch} batches in, "
            f"step {run.state.update}", flush=True)


def forward_backward(run: Run, batch: dict, window: Window, scale: float) -> bool:
    """One micro-batch: loss (plus guidance) times `scale`, backward (gradients add up until
    `optimizer_step`). False when this process skipped an all-undecodable batch."""
    from timm_bcos.guidance import guided_loss
    from timm_bcos.losses import smooth_targets

    args, accelerator, model = run.args, run.accelerator, run.model
    images, labels = batch_tensors(batch, accelerator.device, run.dtype, args.channels_last, even=run.mixup is not None)
    weight = 1.0
    if images.shape[0] == 0:  # undecodable images only (counted by the caller)
        if accelerator.num_processes == 1:
            return False
        # every process must take the step (DDP's gradient all-reduce, synchronised norms):
        # this one repeats its previous batch with weight 0
        images, labels = run.last_batch if run.last_batch is not None else placeholder_batch(model, args, run.dtype)
        weight = 0.0
    run.last_batch = (images, labels)
    if run.mixup is not None:
        images, labels = run.mixup(images, labels)
    elif args.smoothing > 0:
        labels = smooth_targets(labels, run.num_classes, args.smoothing)
    loss = run.criterion(run.train_forward(images), labels) * weight
    if args.guidance and weight:
        guide = guided_loss(accelerator.unwrap_model(model), images, batch["labels"].to(images.device),
                            batch["masks"], batch["annotated"], loss=args.guidance, layer=run.guidance_at)
        if guide is not None:
            window.guidance += float(guide.detach())
            window.guided += 1
            loss = loss + args.guidance_weight * guide
    accelerator.backward(loss * scale)
    if weight:
        window.loss += float(loss.detach()) * images.shape[0]
        window.images += images.shape[0]
    return True


def optimizer_step(run: Run) -> None:
    """Clip the accumulated gradients (if asked), step, clear them."""
    from timm.utils import dispatch_clip_grad

    if run.args.clip_grad:
        run.accelerator.unscale_gradients()
        dispatch_clip_grad(run.model.parameters(), run.args.clip_grad, mode=run.args.clip_mode)
    run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)


def after_update(run: Run, window: Window, epoch: int, bar) -> None:
    """Schedule, EMA, progress and the log line after an optimizer update."""
    args, state = run.args, run.state
    state.update += 1
    if run.scheduler is not None:
        run.scheduler.step_update(state.update)
    if run.ema is not None:
        run.ema.update(run.accelerator.unwrap_model(run.model), step=state.update)
    bar.update(1)
    if state.update % args.log_every == 0 or state.batches_in_epoch == len(run.train_loader):
        line = window.line(run, epoch)
        bar.set_postfix(loss=f"{line['train/loss']:.4f}", ips=f"{line['train/images_per_s']:.0f}")
        if run.use_tb:
            run.accelerator.log(line, step=state.update)
        if args.no_progress:
            run.say(json.dumps({"step": state.update, **{k: round(v, 6) for k, v in line.items()}}), flush=True)
        window.reset()


def train_epoch(run: Run, bar) -> tuple[bool, int]:
    """Train from the current data position to the end of the epoch, or until --max-steps.
    Returns (stopped early, undecodable images this process met)."""
    args, state, epoch = run.args, run.state, run.state.epoch
    run.sampler.set_epoch(epoch)
    run.train_ds.set_epoch(epoch)
    if args.streaming:  # each worker starts at its next batch, reading nothing before it
        run.train_ds.set_position(state.batches_in_epoch)
        loader = run.train_loader
    else:
        loader = run.accelerator.skip_first_batches(run.train_loader, state.batches_in_epoch) \
            if state.batches_in_epoch else run.train_loader
        loader.set_epoch(epoch)  # Accelerate's loaders set the sampler's epoch from their own count
    # checkpoints are taken after updates only, so a resumed epoch starts with a fresh group
    window, skipped, group_has_gradients = Window(), 0, False
    for batch in loader:
        skipped += int(batch["skipped"])
        size, closes = accumulation_group(state.batches_in_epoch, len(run.train_loader), args.grad_accum)
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
        stop = args.max_steps is not None and state.update >= args.max_steps
        if (args.checkpoint_every and state.update % args.checkpoint_every == 0
                and state.batches_in_epoch < len(run.train_loader)):
            save_checkpoint(run)
        if stop:
            return state.batches_in_epoch < len(run.train_loader), skipped
    return False, skipped


def end_epoch(run: Run, skipped: int) -> None:
    """Evaluate, remember the best weights, log, checkpoint."""
    from timm_bcos.eval.accuracy import evaluate_accuracy

    accelerator, state = run.accelerator, run.state
    if run.val_loader is not None:
        run.metrics = evaluate_accuracy(run.model, run.val_loader, accelerator=accelerator, dtype=run.dtype)
        if run.ema is not None:
            ema_metrics = evaluate_accuracy(run.ema.module, run.val_loader, accelerator=accelerator, dtype=run.dtype)
            run.metrics.update({f"ema_{k}": v for k, v in ema_metrics.items() if k != "n"})
        if run.metrics["top1"] > state.best_top1:
            state.best_top1, state.best_epoch = run.metrics["top1"], state.epoch
            best, model = Path(run.args.output) / "best.safetensors", accelerator.unwrap_model(run.model)
            write_together(run, lambda: save_weights(model, best), "the best weights", best,
                           partial(weights_bytes, model), main_only=True)
        if run.use_tb:
            accelerator.log({f"val/{k}": v for k, v in run.metrics.items()}, step=state.update)
    skipped = int(accelerator.reduce(torch.tensor(skipped, device=accelerator.device), "sum"))
    run.say(json.dumps({"epoch": state.epoch, "step": state.update,
                        **{k: round(v, 3) for k, v in run.metrics.items()}, "skipped_images": skipped}), flush=True)
    state.epoch += 1
    state.batches_in_epoch = 0
    save_checkpoint(run)


def main(argv=None) -> int:
    args = parse_args(argv)
    import timm_bcos  # noqa: F401

    run = build_run(args)
    resume(run)
    accelerator, state = run.accelerator, run.state
    if run.use_tb:
        accelerator.init_trackers("tensorboard", config={k: str(v) for k, v in vars(args).items()})
    per_epoch = updates_per_epoch(len(run.train_loader), args.grad_accum)
    run.say(f"{args.model}: {sum(p.numel() for p in run.model.parameters()) / 1e6:.2f}M params, "
            f"{run.train_ds.split.num_rows if args.streaming else len(run.train_ds)} train"
            f"{' (streamed)' if args.streaming else ''} / {len(run.val_loader.dataset) if run.val_loader else 0} val images, "
            f"{run.num_classes} classes, {accelerator.num_processes} process(es), global batch {args.batch_size}, "
            f"{per_epoch} steps/epoch", flush=True)
    from tqdm.auto import tqdm

    total_updates = args.epochs * per_epoch
    if args.max_steps is not None:
        total_updates = min(total_updates, args.max_steps)
    bar = tqdm(total=total_updates, initial=state.update, unit="step", dynamic_ncols=True,
               disable=args.no_progress or not accelerator.is_local_main_process)
    run.model.train()
    if run.scheduler is not None:
        run.scheduler.step_update(state.update)
    while state.epoch < args.epochs:
        stopped_mid_epoch, skipped = train_epoch(run, bar)
        if stopped_mid_epoch:
            break
        end_epoch(run, skipped)
        if args.max_steps is not None and state.update >= args.max_steps:
            break
    bar.close()
    if args.export != "none" and state.epoch >= args.epochs:
        model, output = accelerator.unwrap_model(run.model), Path(args.output)
        write_together(run, lambda: export(args, model, run.ema, state, run.metrics, run.info, output),
                       "the export", output / "export", partial(weights_bytes, model), main_only=True)
    finish(accelerator)
    return 0


def save_weights(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    from timm_bcos.atomic import atomic_path

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp))


def export(args, model, ema, state: TrainState, metrics: dict, info, output: Path) -> None:
    from timm_bcos.hub import save_pretrained

    which = args.export
    if which == "ema" and ema is None:
        which = "best"
    if which == "best" and not (output / "best.safetensors").is_file():
        which = "last"
    if which == "ema":
        weights = ema.module.state_dict()
        accuracy = {"top1": metrics.get("ema_top1"), "top5": metrics.get("ema_top5")}
    elif which == "best":
        from safetensors.torch import load_file

        weights = load_file(output / "best.safetensors")
        accuracy = {"top1": state.best_top1}
    else:
        weights = model.state_dict()
        accuracy = {"top1": metrics.get("top1"), "top5": metrics.get("top5")}
    model.load_state_dict(weights)
    accuracy = {k: round(v, 2) for k, v in accuracy.items() if v is not None and not math.isnan(v)}
    model = model.cpu().to(memory_format=torch.contiguous_format)  # --channels-last weights: safetensors wants contiguous
    folder = save_pretrained(model, output / "export", model_args=dict(args.model_kwargs),
                             label_names=info.label_names, metrics=accuracy or None,
                             dataset=Path(args.dataset).name, dataset_split=args.val_split or None,
                             repo_id=f"ORG/{args.model}-{Path(args.dataset).name}")
    print(f"exported the {which} weights to {folder} (accuracy on {args.val_split or 'no split'}: "
          f"{accuracy or 'not measured'})", flush=True)


def finish(accelerator) -> None:
    """Deterministic shutdown: with torch 2.14 gloo, interpreter teardown of a 2-process run
    aborts in about one run of three, so multi-process workers leave through os._exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
