"""Run train.py (argv[1:]) with a fault in its file writers, for tests/test_train_faults.py.

torch.save and safetensors' save_file, for a path containing $FAULT_PATH, write part of the file
and then, by $FAULT_MODE:
  enospc (default): raise ENOSPC, as a full disk does;
  pause: sleep (a worker caught in the middle of writing a checkpoint, for the test to kill).
Only in the process of RANK $FAULT_RANK (default 0: the other processes of a multi-process run are
the ones that must not hang) and, if $FAULT_ATTEMPT is set, only in that torchrun restart attempt.
"""
import errno
import os
import runpy
import sys
import time

import accelerate  # noqa: F401  (bind the writers where they are imported, before patching them)
import accelerate.checkpointing  # noqa: F401
import safetensors.torch
import timm.models._hub  # noqa: F401
import torch

MARKER = os.environ["FAULT_PATH"]
MODE = os.environ.get("FAULT_MODE", "enospc")


def _here() -> bool:
    attempt = os.environ.get("FAULT_ATTEMPT")
    return (os.environ.get("RANK", "0") == os.environ.get("FAULT_RANK", "0")
            and (attempt is None or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == attempt))


def _failing(original):
    def write(obj, path, *args, **kwargs):
        if MARKER in str(path) and _here():
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)  # part of the file
            if MODE == "pause":
                time.sleep(600)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return original(obj, path, *args, **kwargs)
    return write


PATCHED = {id(f): _failing(f) for f in (torch.save, safetensors.torch.save_file)}
for module in list(sys.modules.values()):
    if module is not sys.modules[__name__] and hasattr(module, "__dict__"):
        for name, value in list(vars(module).items()):
            if id(value) in PATCHED:
                setattr(module, name, PATCHED[id(value)])

sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
