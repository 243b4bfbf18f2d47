"""Where a run is (epoch, data position, optimizer steps, best accuracy), what a checkpoint must share
with the run that resumes it, and how micro-batches group into optimizer updates."""
from __future__ import annotations

from .config import TrainConfig


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


def run_meta(config: TrainConfig, num_classes: int) -> dict:
    """What a checkpoint records of its run; a resume refuses one whose values differ."""
    meta = {"model": config.model, "model_kwargs": config.model_kwargs, "num_classes": num_classes,
            "bcosify_from": config.bcosify_from}
    meta["streaming"] = None  # a map-style run's checkpoint (old ones have no key: None too)
    if config.streaming:  # the streamed order depends on them: a resume must keep them
        from accelerate.state import PartialState

        meta["streaming"] = {"processes": PartialState().num_processes, "workers": max(config.workers, 1),
                             "shuffle_buffer": config.shuffle_buffer}
    return meta


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
