"""Run train.py (argv[1:]) with a full disk simulated: torch.save and safetensors' save_file write a
partial file, then raise ENOSPC, for every path containing $FAULT_PATH, in the main process only
(RANK 0), so that the other processes of a multi-process run are the ones that must not hang."""
import errno
import os
import runpy
import sys

import accelerate  # noqa: F401  (bind the writers where they are imported, before patching them)
import accelerate.checkpointing  # noqa: F401
import safetensors.torch
import timm.models._hub  # noqa: F401
import torch

MARKER = os.environ["FAULT_PATH"]


def _failing(original):
    def write(obj, path, *args, **kwargs):
        if MARKER in str(path) and os.environ.get("RANK", "0") == "0":
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)  # what a full disk leaves: part of the file
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
