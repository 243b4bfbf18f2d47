"""What keeps a multi-process run whole when something goes wrong: a failed write stops every process
with one message (none waits at a barrier for one that stopped), workers that torchrun restarts find
each other again, and a clean shutdown."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import torch

from .errors import fail


def write_together(accelerator, write, what: str, path: Path, needed, *, cleanup: Path | None = None,
                   main_only: bool = False) -> None:
    """Run `write` (on every process, or on the main one) and stop every process if any write failed: none
    may wait at a barrier for one that stopped. The failing process says what and where, in one line, with
    `needed()`, the bytes the write takes."""
    from .integrity import write_error_message

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


def join_restarted_workers(cpu: bool) -> None:
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
    dist.init_process_group("gloo" if cpu else None, store=dist.PrefixStore(f"attempt_{restart}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))


def shut_down(accelerator) -> None:
    """Every process done, trackers closed, the process group destroyed."""
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if accelerator.num_processes > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def exit_worker() -> None:
    """Leave a multi-process worker through os._exit: with torch 2.14 gloo, interpreter teardown of a
    2-process run aborts in about one run of three."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
