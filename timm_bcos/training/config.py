"""Every option of a training run, in one dataclass: `TrainConfig` is what `timm_bcos.training.train`
takes, and train.py's command line (`build_parser`) is derived from its fields, with the same names
(dashes for underscores) and defaults. A YAML file of option values (`--config`) sets defaults that
the command line overrides."""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..utils.options import add_options, missing_required, option, option_names

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GUIDANCE = "guidance (training with explanations: timm_bcos.guidance)"
ALIGN = "alignment (B-cosify without labels: timm_bcos.align)"


class ConfigError(ValueError):
    """Options that do not go together, or a value out of range; the message names the options."""


@dataclass
class TrainConfig:
    """A training run: `TrainConfig(model="bcos_resnet18", dataset="uoft-cs/cifar10", epochs=5)`."""

    # model
    model: str | None = option(None, "timm model name (bcos_* or conventional); see timm.list_models()",
                               group="model", required=True)
    model_kwargs: dict = option(help='JSON dict of extra create_model kwargs, e.g. \'{"width": 0.5, "norm": true}\'',
                                group="model", parse=json.loads, factory=dict)
    pretrained: bool = option(False, "start from the model's pretrained weights", group="model")
    checkpoint: str | None = option(None, "start from these weights (.safetensors, or a .pth state dict)",
                                    "--initial-checkpoint", group="model")
    bcosify_from: str | None = option(None, "start a B-cos model from this conventional timm model's pretrained "
                                      "weights (timm_bcos.convert with carry_weights=True)", group="model")
    recipe: str = option("bcosify", "B-cos recipe for --bcosify-from: bcosify (the B-cosification paper's, default), "
                         "v2, v2_bnu or v1", group="model")
    recipe_kwargs: dict = option(help="JSON dict of recipe fields for --bcosify-from, e.g. '{\"learn_b\": true}' "
                                 "(the paper's learned B) or '{\"b\": 1.5}'", group="model", parse=json.loads,
                                 factory=dict)
    num_classes: int | None = option(None, "default: the number of classes in the data set", group="model", parse=int)
    drop_path: float | None = option(None, "stochastic depth rate (the model's drop_path_rate)", group="model",
                                     parse=float)
    img_size: int | None = option(None, "input image size (default: the model's cfg); models with a fixed input "
                                  "size (ViTs) are built for it", group="model", parse=int)
    grad_checkpointing: bool = option(False, "recompute activations in backward", group="model")
    channels_last: bool = option(False, "channels-last memory layout", group="model")
    sync_bn: bool = option(False, "batch statistics over all processes (uncentered B-cos norms get their own "
                           "synchronised variant)", group="model")
    compile: str | None = option(None, "torch.compile the training forward (backend: %(const)s if none is given)",
                                 "--torchcompile", group="model", nargs="?", const="inductor", metavar="BACKEND")
    compile_mode: str | None = option(None, "inductor's mode: reduce-overhead replays CUDA graphs, which removes the "
                                      "host time per kernel launch that bounds eager B-cos steps on fast GPUs",
                                      "--torchcompile-mode", group="model", choices=COMPILE_MODES)
    # data
    dataset: str | None = option(None, "Hub data set id (uoft-cs/cifar10, ILSVRC/imagenet-1k), a local folder (Hub "
                                 "parquet layout, or one subfolder of images per class), or webdataset tar shards, "
                                 "streamed: wds:FOLDER (timm's _info.json, or NAME-<split>-0000.tar) or "
                                 "'wds:PATH/{split}-{0000..0099}.tar'", group="data", required=True)
    train_split: str = option("train", "%(default)s; slicing works: 'train[:10%%]'", group="data")
    val_split: str = option("validation", "%(default)s; '' to skip evaluation", group="data")
    image_column: str | None = option(None, "default: found automatically (image, img, ...)", group="data")
    label_column: str | None = option(None, "default: found automatically (label, labels, ...)", group="data")
    max_train_samples: int | None = option(None, "use the first N training images", group="data", parse=int)
    max_val_samples: int | None = option(None, "use the first N validation images", group="data", parse=int)
    cache_dir: str | None = option(None, "datasets cache folder", group="data")
    workers: int = option(2, "data loader workers per process (%(default)s)", "-j", group="data")
    pin_mem: bool = option(False, "page-locked batches for faster copies to a CUDA device (timm's flag; ignored "
                           "without one)", group="data")
    streaming: bool = option(False, "read the splits' parquet shards as the run goes (Hub id or local folder): no "
                             "download ahead, no Arrow cache; resumes exactly with the same number of processes and "
                             "--workers (always on for wds: data sets)", group="data")
    shuffle_buffer: int = option(1000, "--streaming: rows shuffled together (whole row groups pooled up to at least "
                                 "this many) (%(default)s)", group="data")
    # augmentation
    crop: str = option("rrc", "rrc: timm's random resized crop; pad: pad 4 + random crop (CIFAR) (%(default)s)",
                       group="augmentation", choices=["rrc", "pad"])
    auto_augment: str | None = option(None, "timm auto-augment spec, e.g. rand-m9-mstd0.5 (RandAugment)", "--aa",
                                      group="augmentation")
    hflip: float = option(0.5, "horizontal flip probability (%(default)s)", group="augmentation")
    scale: list | None = option(None, "random resized crop scale range", group="augmentation", parse=float, nargs=2)
    mixup: float = option(0.0, "mixup alpha (0: off)", group="augmentation")
    cutmix: float = option(0.0, "cutmix alpha (0: off)", group="augmentation")
    smoothing: float = option(0.0, "label smoothing (with or without mixup)", group="augmentation")
    # optimisation
    loss: str = option("bce", "bce: paper Eq. 16; bce_uniform_off: v2 (off-labels 1/C); ce: conventional",
                       group="optimisation", choices=["bce", "bce_uniform_off", "ce"])
    opt: str = option("adam", "any timm optimizer (adam, adamw, sgd, lamb, ...)", group="optimisation")
    lr: float = option(1e-3, "learning rate (%(default)s)", group="optimisation")
    weight_decay: float = option(0.0, "weight decay (%(default)s)", group="optimisation")
    momentum: float = option(0.9, "for SGD-like optimizers", group="optimisation")
    batch_size: int = option(64, "GLOBAL batch size, split across processes (%(default)s; timm's -b is per process)",
                             "-b", group="optimisation")
    grad_accum: int = option(1, "gradient accumulation steps", "--grad-accum-steps", group="optimisation")
    epochs: int = option(100, "epochs (%(default)s)", group="optimisation")
    sched: str = option("cosine", "timm scheduler: cosine, step, multistep, none", group="optimisation")
    warmup_epochs: float = option(0.0, "warm-up epochs (%(default)s)", group="optimisation")
    warmup_lr: float = option(1e-6, "learning rate at the start of the warm-up (%(default)s)", group="optimisation")
    min_lr: float = option(0.0, "lowest learning rate of the schedule (%(default)s)", group="optimisation")
    decay_epochs: float = option(30.0, "step schedule period", group="optimisation")
    decay_milestones: list = option(help="multistep epochs", group="optimisation", parse=int, nargs="+",
                                    factory=lambda: [60])
    decay_rate: float = option(0.1, "learning rate factor at each decay (%(default)s)", group="optimisation")
    clip_grad: float | None = option(None, "clip value (with --clip-mode)", group="optimisation", parse=float)
    clip_mode: str = option("agc", "agc: adaptive gradient clipping as in the B-cos v2 recipes (%(default)s)",
                            group="optimisation", choices=["agc", "norm", "value"])
    ema_decay: float = option(0.0, "model EMA decay (0: off), e.g. 0.9998", "--model-ema-decay", group="optimisation")
    amp: bool = option(False, "mixed precision in --amp-dtype (timm's flag)", group="optimisation")
    amp_dtype: str = option("float16", "--amp's dtype (%(default)s)", group="optimisation",
                            choices=["float16", "bfloat16"])
    mixed_precision: str | None = option(None, "default: what `accelerate launch` / its config says",
                                         group="optimisation", choices=["no", "fp16", "bf16"])
    dtype: str = option("float32", "parameter and input dtype (%(default)s); float64 makes runs comparable across "
                        "machines and process counts (rounding ~1e-16)", group="optimisation",
                        choices=["float32", "float64"])
    seed: int = option(0, "random seed (%(default)s)", group="optimisation")
    cpu: bool = option(False, "train on the CPU even where GPUs are present", group="optimisation")
    # guidance
    guidance: str | None = option(None, "a loss on the model's own contribution maps where annotations say the "
                                  "evidence is", group=GUIDANCE,
                                  choices=["energy", "l1", "rrr", "ppce"])
    guidance_weight: float = option(1.0, "weight of the guidance loss (%(default)s)", group=GUIDANCE)
    guidance_layer: str = option("input", "where contributions are taken: input, final, mid (timm feature_info) or a "
                                 "module path", group=GUIDANCE)
    annotated_fraction: float = option(1.0, "share of the training images whose annotation is used (a fixed draw "
                                       "per image)", group=GUIDANCE)
    mask_column: str | None = option(None, "data set column with a mask image (0/255 or 0/1 grey, bilevel, or a "
                                     "palette index mask: where the evidence is; a blurred or JPEG 0/255 mask is read "
                                     "at >= 128)", group=GUIDANCE)
    boxes_column: str | None = option(None, "data set column with boxes [[x0, y0, x1, y1], ...] in pixels",
                                      group=GUIDANCE)
    box_dilation: int = option(0, "grow each box by this many pixels", group=GUIDANCE)
    # alignment
    align_to: str | None = option(None, "B-cosify this conventional timm model (tag, local-dir:, hf-hub:) and align "
                                  "the B-cos copy to it, the frozen teacher, on unlabeled images (ALOE); implies "
                                  "--model bcos_converted", group=ALIGN)
    align_loss: str = option("cosine", "loss on the features: cosine (ALOE) or mse (%(default)s)", group=ALIGN,
                             choices=["cosine", "mse"])
    align_layers: list | None = option(None, "module paths whose outputs are aligned besides the pooled features "
                                       "(default: ALOE's depths L/3, 2L/3, L of timm's feature_info; 'none': "
                                       "pooled only)", group=ALIGN, nargs="+")
    align_layer_weight: float = option(1.0, "weight of each layer's loss (%(default)s)", group=ALIGN)
    align_logits: str = option("bce", "logit distillation where the teacher has a head: bce (the B-cos loss on the "
                               "teacher's softmax as soft targets), kl (at --align-temperature), cosine (centred "
                               "logits) or none (%(default)s)", group=ALIGN, choices=["bce", "kl", "cosine", "none"])
    align_logit_weight: float = option(1.0, "weight of the logit loss (%(default)s)", group=ALIGN)
    align_temperature: float = option(1.0, "temperature of the teacher's softmax for bce and kl (%(default)s)",
                                      group=ALIGN)
    head_only: bool = option(False, "train the classifier only; every other weight stays frozen (e.g. a linear "
                             "probe of a B-cos backbone)", group="optimisation")
    # checkpoints and output
    output: str = option("runs/train", "output folder (%(default)s)", group="checkpoints and output")
    checkpoint_every: int = option(0, "also save a checkpoint every N optimizer steps (0: only at epoch ends)",
                                   group="checkpoints and output")
    keep_checkpoints: int = option(2, "checkpoints kept (%(default)s)", "--checkpoint-hist",
                                   group="checkpoints and output")
    resume: str | None = option(None, "a checkpoint folder, or 'latest' (the newest in OUTPUT/checkpoints)",
                                group="checkpoints and output")
    export: str = option("ema", "weights exported to OUTPUT/export at the end (ema falls back to best) (%(default)s)",
                         group="checkpoints and output", choices=["ema", "best", "last", "none"])
    log_every: int = option(50, "optimizer steps between log lines", "--log-interval", group="checkpoints and output")
    no_progress: bool = option(False, "no progress bar", group="checkpoints and output")
    no_tensorboard: bool = option(False, "no TensorBoard logs", group="checkpoints and output")
    max_steps: int | None = option(None, "stop after this many optimizer steps (for tests)",
                                   group="checkpoints and output", parse=int)

    def __post_init__(self) -> None:
        if self.align_to and self.model is None:
            self.model = "bcos_converted"
        missing = missing_required(type(self), vars(self))
        if missing:
            raise ConfigError(f"{missing[0]} is required (on the command line or in --config)")
        self.check()
        if self.amp and self.mixed_precision is None:  # timm's --amp / --amp-dtype
            self.mixed_precision = {"float16": "fp16", "bfloat16": "bf16"}[self.amp_dtype]
        if self.dataset.startswith("wds:"):  # tar shards are read in order: there is no map-style path
            self.streaming = True

    def check(self) -> None:
        """ConfigError for options that do not go together."""
        if self.align_to:  # first: alignment has no labels for what guidance needs
            self._check_alignment()
        if self.guidance:
            self._check_guidance()
        source = self.bcosify_from or self.align_to
        if not isinstance(self.recipe_kwargs, dict) or (self.recipe_kwargs and not source):
            raise ConfigError(f"--recipe-kwargs takes a JSON dict of recipe fields for --bcosify-from, got "
                              f"{json.dumps(self.recipe_kwargs)}{'' if source else ' without --bcosify-from'}")
        if self.compile_mode and self.compile != "inductor":
            given = f"--compile {self.compile}" if self.compile else "no --compile"
            raise ConfigError(f"--compile-mode is inductor's; it needs --compile (inductor), got {given}")

    def _check_guidance(self) -> None:
        if bool(self.mask_column) == bool(self.boxes_column):
            raise ConfigError("--guidance needs exactly one of --mask-column or --boxes-column")
        clash = [name for name, on in (("--mixup/--cutmix", self.mixup or self.cutmix),
                                       ("--auto-augment", self.auto_augment), ("--sync-bn", self.sync_bn),
                                       ("--grad-checkpointing", self.grad_checkpointing)) if on]
        # mixed images have no single mask; colour ops would repaint masks; checkpointed segments would be
        # recomputed outside explanation mode in the double backward
        if clash:
            raise ConfigError(f"--guidance does not work with {', '.join(clash)} yet")
        if not 0 < self.annotated_fraction <= 1:
            raise ConfigError(f"--annotated-fraction must be in (0, 1], got {self.annotated_fraction}")

    def _check_alignment(self) -> None:
        # alignment needs no labels: what needs them cannot run with it
        clash = [name for name, on in (("--guidance", self.guidance), ("--mixup/--cutmix", self.mixup or self.cutmix),
                                       ("--smoothing", self.smoothing), ("--bcosify-from", self.bcosify_from),
                                       ("--head-only", self.head_only), ("--compile", self.compile),
                                       ("--drop-path", self.drop_path)) if on]
        if clash:
            why = ("they need labels, or --align-to already B-cosifies the teacher; --compile: the aligned "
                   "layers are read by forward hooks; --drop-path: the student is the teacher's copy")
            raise ConfigError(f"--align-to does not work with {', '.join(clash)} ({why})")
        if self.model != "bcos_converted":
            raise ConfigError(f"--align-to trains the teacher's B-cosified copy (--model bcos_converted), got "
                              f"--model {self.model}")
        if self.align_temperature <= 0:
            raise ConfigError(f"--align-temperature must be > 0, got {self.align_temperature}")

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """The options of a YAML recipe (train_scripts/configs/*.yaml), with `overrides` on top."""
        return cls(**{**read_yaml_options(path), **overrides})


def read_yaml_options(path: str | Path) -> dict[str, Any]:
    """{option: value} of a YAML recipe; ConfigError for a missing file or an unknown option."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    values = yaml.safe_load(path.read_text()) or {}
    unknown = sorted(set(values) - option_names(TrainConfig))
    if unknown:
        raise ConfigError(f"{path}: unknown options {unknown}; valid ones are the --long-options of train.py "
                          "with underscores")
    return values


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """train.py's parser: --config plus one option per TrainConfig field."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file of option values (train_scripts/configs/*.yaml)")
    add_options(p, TrainConfig)
    return p


def parse_args(argv: list[str] | None = None, description: str | None = None) -> TrainConfig:
    """A TrainConfig from a train.py command line (and its --config file); argparse's error and exit for bad
    options."""
    parser = build_parser(description)
    pre, _ = parser.parse_known_args(argv)
    if pre.config:
        try:
            parser.set_defaults(**read_yaml_options(pre.config))
        except ConfigError as e:
            parser.error(str(e))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        parser.error(str(e))
