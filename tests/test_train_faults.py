"""train.py under faults: a worker killed mid-epoch and again mid-checkpoint under torchrun
--max-restarts (the job restarts itself and ends where an uninterrupted run does), a damaged newest
checkpoint passed over on --resume latest, and a full disk while writing a checkpoint or the export
(one or two processes): one clear error, the last checkpoint and the earlier export as they were,
no temporary folder.

Faults in the writers come from tests/fault_inject.py: torch's and safetensors' writers patched to
write part of a file, then raise ENOSPC or pause (for the test to kill the writing worker)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from test_train import ROOT, TINY, TRAIN, TWO_PROC, _env, _launch_two, load_weights, needs_cifar, run_train

INJECT = Path(__file__).resolve().parent / "fault_inject.py"

RUN = [*TINY, "--model-kwargs", '{"width": 0.125}', "--train-split", "train[:192]", "--val-split", "test[:32]",
       "--batch-size", "16", "--epochs", "2", "--export", "last", "--checkpoint-every", "5",
       "--keep-checkpoints", "50"]


def _faulty(tmp_path: Path, marker: str, *args: str, launcher: list[str] | None = None):
    os.environ["FAULT_PATH"] = marker  # read by fault_inject.py in the launched processes
    try:
        launch = (launcher or [sys.executable]) + [str(INJECT)]
        return run_train(tmp_path, *args, launcher=launch, check=False, timeout=300)
    finally:
        del os.environ["FAULT_PATH"]


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


@needs_cifar
def test_a_damaged_newest_checkpoint_is_passed_over(tmp_path):
    full = tmp_path / "full"
    run_train(tmp_path, *RUN, "--output", str(full))
    steps = sorted((full / "checkpoints").glob("step_*"))
    assert [s.name for s in steps[:3]] == ["step_000000005", "step_000000010", "step_000000012"]
    for damage in ("truncate", "delete"):
        cut = tmp_path / damage
        for step in steps[:2]:  # resume from step 5 or 10; 10 is damaged
            shutil.copytree(step, cut / "checkpoints" / step.name)
        weights = cut / "checkpoints" / "step_000000010" / "model.safetensors"
        if damage == "truncate":
            weights.write_bytes(weights.read_bytes()[:1000])
        else:
            (cut / "checkpoints" / "step_000000010" / "optimizer.bin").unlink()
        proc = run_train(tmp_path, *RUN, "--output", str(cut), "--resume", "latest")
        problem = "model.safetensors has 1000 of its" if damage == "truncate" else "optimizer.bin is missing"
        assert f"step_000000010 is damaged ({problem}" in proc.stdout, proc.stdout
        assert "resumed from" in proc.stdout and "step_000000005: epoch 0, 5 batches in" in proc.stdout
        a, b = load_weights(full / "export" / "model.safetensors"), load_weights(cut / "export" / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a)


@needs_cifar
def test_resuming_refuses_when_no_checkpoint_is_complete(tmp_path):
    out = tmp_path / "run"
    run_train(tmp_path, *RUN, "--epochs", "1", "--export", "none", "--output", str(out))
    for step in (out / "checkpoints").glob("step_*"):
        (step / "model.safetensors").unlink()
    proc = run_train(tmp_path, *RUN, "--output", str(out), "--resume", "latest", check=False)
    assert proc.returncode == 2
    assert "no complete checkpoint in" in proc.stderr and "model.safetensors is missing" in proc.stderr


@needs_cifar
def test_a_full_disk_while_checkpointing_stops_cleanly(tmp_path):
    """On two processes (one is the same write with nobody to wait for): both stop with one clear error,
    no temporary folder is left, the last checkpoint is whole, and the run resumes from it (here on one
    process: a map-style checkpoint does not depend on the process count)."""
    out = tmp_path / "run"
    proc = _faulty(tmp_path, ".tmp_step_000000010", *RUN, "--cpu", "--output", str(out), launcher=_launch_two())
    assert proc.returncode != 0
    assert "no space left on the device of" in proc.stderr and ".tmp_step_000000010 while writing a checkpoint" \
        in proc.stderr and "it needs about" in proc.stderr and "free" in proc.stderr, proc.stderr[-3000:]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000000005"]  # no temporary folder
    meta = json.loads((checkpoints / "step_000000005" / "train_meta.json").read_text())
    assert meta["files"] and all((checkpoints / "step_000000005" / f).stat().st_size == n
                                 for f, n in meta["files"].items())
    resumed = run_train(tmp_path, *RUN, "--output", str(out), "--resume", "latest")
    assert "resumed from" in resumed.stdout and (out / "export" / "model.safetensors").is_file()


@needs_cifar
def test_a_full_disk_while_exporting_keeps_the_earlier_export(tmp_path):
    out = tmp_path / "run"
    run_train(tmp_path, *RUN, "--epochs", "1", "--output", str(out))
    before = {p.name: p.read_bytes() for p in (out / "export").iterdir()}
    proc = _faulty(tmp_path, "/.export.", *RUN, "--output", str(out), "--resume", "latest")
    assert proc.returncode == 2
    assert "no space left on the device of" in proc.stderr and "while writing the export" in proc.stderr
    assert {p.name: p.read_bytes() for p in (out / "export").iterdir()} == before
    assert _hidden(out) == []  # neither .export.* nor .tmp_* left behind


KILLED = [*TWO_PROC, "--checkpoint-every", "2"]  # float64, SGD, 8 steps per epoch, a checkpoint every 2 steps


def _torchrun(restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
            "--max-restarts", str(restarts)]


def _workers(agent: int) -> dict[int, int]:
    """{rank: pid} of the worker processes torchrun's agent `agent` runs now."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == agent:  # the parent's pid
                env = (stat.parent / "environ").read_bytes().split(b"\0")
                rank = next(int(e[5:]) for e in env if e.startswith(b"RANK="))
                found[rank] = int(stat.parent.name)
        except (OSError, StopIteration, IndexError, ValueError):
            continue  # gone, or not a worker
    return found


def _wait_for(condition, what: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the job ended before {what}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@needs_cifar
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_killed_workers_are_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path):
    """torchrun --max-restarts 2: one worker killed mid-epoch, then the one writing a checkpoint;
    each attempt resumes from the newest complete checkpoint by itself (pytorch#135712 worked
    around in train.py) and the export equals an uninterrupted one-process run's (float64, 1e-9 of
    the distance moved, as in the two-process test)."""
    full = tmp_path / "full"  # uninterrupted, in this process: 2 processes reach 1 process's weights (test_train)
    run_train(tmp_path, *KILLED, "--cpu", "--output", str(full))
    cut = tmp_path / "cut"
    env = {**_env(tmp_path), "FAULT_PATH": ".tmp_step_000000012", "FAULT_MODE": "pause", "FAULT_ATTEMPT": "1"}
    cmd = [*_torchrun(2), str(Path(__file__).parent / "fault_inject.py"), str(TRAIN), "--no-progress",
           "--no-tensorboard", "--workers", "0", *KILLED, "--cpu", "--output", str(cut), "--resume", "latest"]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    try:
        _wait_for(lambda: (cut / "checkpoints" / "step_000000004").is_dir(), "checkpoint 4", proc)
        os.kill(_workers(proc.pid)[1], signal.SIGKILL)  # mid-epoch 0
        partial = cut / "checkpoints" / ".tmp_step_000000012" / "model.safetensors"
        _wait_for(partial.is_file, "the restarted run to write checkpoint 12", proc)
        os.kill(_workers(proc.pid)[0], signal.SIGKILL)  # the worker writing it, paused by fault_inject.py
        assert proc.wait(timeout=300) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            for pid in _workers(proc.pid).values():
                os.kill(pid, signal.SIGKILL)
            proc.kill()
            proc.wait()
    log = (tmp_path / "log.txt").read_text()
    resumed = [line.split("resumed from ")[1] for line in log.splitlines() if "resumed from" in line]
    assert len(resumed) == 2 and "step_000000010" in resumed[-1], log[-3000:]
    _assert_same_training(load_weights(full / "export" / "model.safetensors"),
                          load_weights(cut / "export" / "model.safetensors"))


def _assert_same_training(a: dict, b: dict) -> None:
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)  # train.py's --seed 0 before creating the model
    init = timm.create_model("bcos_cifar10", width=0.125, max_out=1).double().state_dict()
    moved = torch.cat([(a[k] - init[k]).flatten() for k in a if a[k].is_floating_point()])
    apart = torch.cat([(a[k] - b[k]).flatten() for k in a if a[k].is_floating_point()])
    assert moved.norm() > 1e-3, "did not train"
    assert apart.norm() <= 1e-9 * moved.norm(), float(apart.norm() / moved.norm())
