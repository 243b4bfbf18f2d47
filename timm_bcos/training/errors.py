"""The one error a training run stops with when it cannot go on as asked."""
from __future__ import annotations

from typing import NoReturn


class TrainError(RuntimeError):
    """A run that cannot start or go on (bad data, a damaged checkpoint, a full disk); the message says
    what was expected and what was found. train.py prints it as one `error:` line and exits with 2."""


def fail(message: str) -> NoReturn:
    raise TrainError(message)
