"""train.py under faults: a damaged newest checkpoint is passed over on --resume latest, and a full
disk while writing a checkpoint or the export stops the run (one or two processes) with a clear
error, leaving the last checkpoint and the earlier export as they were and no temporary folder.

The full disk is simulated: tests/fault_inject.py runs train.py with the writers of torch and
safetensors patched to write half a file and raise ENOSPC for paths containing $FAULT_PATH."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from test_train import TINY, _launch_two, load_weights, needs_cifar, run_train

INJECT = Path(__file__).resolve().parent / "fault_inject.py"

RUN = [*TINY, "--model-kwargs", '{"width": 0.125}', "--train-split", "train[:192]", "--val-split", "test[:32]",
       "--batch-size", "16", "--epochs", "2", "--export", "last", "--checkpoint-every", "5",
       "--keep-checkpoints", "50"]


def _faulty(tmp_path: Path, marker: str, *args: str, launcher: list[str] | None = None):
    import os

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
@pytest.mark.parametrize("processes", [1, 2])
def test_a_full_disk_while_checkpointing_stops_cleanly(tmp_path, processes):
    out = tmp_path / "run"
    two = ["--cpu"] if processes == 2 else []
    proc = _faulty(tmp_path, ".tmp_step_000000010", *RUN, *two, "--output", str(out),
                   launcher=_launch_two() if processes == 2 else None)
    assert proc.returncode != 0
    assert "no space left on the device of" in proc.stderr and ".tmp_step_000000010 while writing a checkpoint" \
        in proc.stderr and "it needs about" in proc.stderr and "free" in proc.stderr, proc.stderr[-3000:]
    checkpoints = out / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_000000005"]  # no temporary folder
    meta = json.loads((checkpoints / "step_000000005" / "train_meta.json").read_text())
    assert meta["files"] and all((checkpoints / "step_000000005" / f).stat().st_size == n
                                 for f, n in meta["files"].items())
    resumed = run_train(tmp_path, *RUN, *two, "--output", str(out), "--resume", "latest",
                        launcher=_launch_two() if processes == 2 else None, timeout=300)
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
