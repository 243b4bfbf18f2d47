"""The training library behind train_scripts/train.py, callable from Python:

    from timm_bcos.training import TrainConfig, train
    result = train(TrainConfig(model="bcos_cifar10", dataset="uoft-cs/cifar10", epochs=1, crop="pad"))

`TrainConfig` holds every option of train.py (its command line is derived from the fields);
`train` runs on one process, under `accelerate launch` / torchrun, or from a notebook through
`accelerate.notebook_launcher(train, (config,), num_processes=N)`.

Modules: `config` (the options), `run` (what a run holds and how it is built), `model`, `loaders`,
`loop` (updates, logging, evaluation, `train`), `checkpoints` and `integrity` (written whole, found
again on resume), `faults` (failed writes, restarted workers, shutdown), `hooks` (extra losses:
guidance), `losses`, `export`, `state`.
"""
from .config import ConfigError, TrainConfig, build_parser, parse_args
from .errors import TrainError
from .loop import TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainError", "TrainResult", "build_parser", "parse_args", "train"]
