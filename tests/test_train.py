"""train_scripts/train.py: runs that really train (CPU, a few hundred CIFAR-10 images),
two processes against one, kill + resume against uninterrupted, and bad input."""
from __future__ import annotations

import functools
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "train_scripts" / "train.py"
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"

needs_cifar = pytest.mark.skipif(not CIFAR.is_dir(), reason="../shared/datasets/cifar10 is not here")


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(HF_DATASETS_CACHE=str(tmp_path / "hf_datasets"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    return env


def run_train(tmp_path: Path, *args: str, launcher: list[str] | None = None, check: bool = True,
              timeout: int = 600) -> subprocess.CompletedProcess:
    """train.py's result for `args`: with a `launcher` (several processes, a fault injector, or
    [sys.executable] for a fresh interpreter) in a subprocess, else its `main` in this process (one
    process, no loader workers), which spares each run the interpreter's start and its imports."""
    argv = ["--no-progress", "--no-tensorboard", "--workers", "0", *args]
    if launcher is None and _workers(argv) == 0:
        proc = _main_in_process(tmp_path, argv)
    else:
        cmd = (launcher or [sys.executable]) + [str(TRAIN), *argv]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(tmp_path), cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _workers(argv: list[str]) -> int:
    flags = [i for i, a in enumerate(argv) if a in ("--workers", "-j")]
    return int(argv[flags[-1] + 1])


def _main_in_process(tmp_path: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """train.py's `main(argv)` here, its output captured as a subprocess's would be (exit status, stdout,
    stderr), its data set cache in `tmp_path` as `_env` puts a subprocess's, and Accelerate's process-wide
    state reset afterwards so that the next run starts as in a fresh interpreter."""
    from accelerate.state import AcceleratorState, GradientState

    if "--cache-dir" not in argv:
        argv = [*argv, "--cache-dir", str(tmp_path / "hf_datasets")]
    try:
        return run_main(_train_module(), argv)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run_main(module, argv: list[str]) -> subprocess.CompletedProcess:
    """A script's `main(argv)` in this process, its exit status and output as a subprocess's would be
    (argparse's errors exit): spares a run the interpreter's start and its imports."""
    from contextlib import redirect_stderr, redirect_stdout

    out, err, code = io.StringIO(), io.StringIO(), 0
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = module.main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=err)  # as the interpreter prints a SystemExit's message
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def json_lines(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path)


# a tiny configuration: the paper's CIFAR network at 1/8 width, few images
TINY = ["--model", "bcos_cifar10", "--dataset", str(CIFAR), "--val-split", "test", "--crop", "pad",
        "--lr", "0.003", "--sched", "none"]


@needs_cifar
def test_short_run_lowers_loss_and_beats_chance(tmp_path):
    out = tmp_path / "run"
    proc = run_train(tmp_path, *TINY, "--model-kwargs", '{"width": 0.25, "norm": true, "max_out": 1}',
                     "--train-split", "train[:1000]", "--val-split", "test[:500]", "--batch-size", "32",
                     "--epochs", "4", "--lr", "0.002", "--sched", "cosine", "--log-every", "5",
                     "--output", str(out), "--export", "last")
    lines = json_lines(proc.stdout)
    losses = [d["train/loss"] for d in lines if "train/loss" in d]
    epochs = [d for d in lines if "top1" in d]
    assert len(epochs) == 4
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses
    # 500 held-out images, chance 10% (sd 1.3%): 20% is 7 standard deviations above it
    assert epochs[-1]["top1"] > 20.0, epochs
    export = out / "export"
    config = json.loads((export / "config.json").read_text())
    assert config["architecture"] == "bcos_cifar10"
    assert config["model_args"]["width"] == 0.25
    assert "top1" in (export / "README.md").read_text()
    # the export loads back through timm's local-dir: and predicts like the trained model
    import timm

    import timm_bcos  # noqa: F401

    model = timm.create_model(f"local-dir:{export}", pretrained=True).eval()
    state = load_weights(export / "model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


# float64, SGD, no MaxOut: the two runs may differ only by float summation order (~1e-16
# relative), and nothing here amplifies it. Adam would (it divides near-zero gradients by their
# own size, turning rounding noise into full-size updates: ~10x per step in float32), and so
# would MaxOut (rounding flips the winner of near-ties: ~7x per step even in float64).
TWO_PROC = [*TINY, "--model-kwargs", '{"width": 0.125, "max_out": 1}', "--train-split", "train[:256]",
            "--val-split", "test[:64]", "--batch-size", "32", "--epochs", "2", "--export", "last",
            "--dtype", "float64", "--opt", "sgd", "--momentum", "0.9",
            "--checkpoint-every", "1", "--keep-checkpoints", "100"]


@needs_cifar
def test_two_processes_reach_the_one_process_result(tmp_path):
    one = tmp_path / "one"
    two = tmp_path / "two"
    run_train(tmp_path, *TWO_PROC, "--output", str(one))
    proc = run_train(tmp_path, *TWO_PROC, "--cpu", "--output", str(two), launcher=_launch_two(), timeout=300)
    assert "2 process(es)" in proc.stdout
    import timm

    import timm_bcos  # noqa: F401

    torch.manual_seed(0)  # train.py's --seed 0 before creating the model
    init = timm.create_model("bcos_cifar10", width=0.125, max_out=1).double().state_dict()

    def relative_gap(a, b):
        assert a.keys() == b.keys()
        moved = torch.cat([(a[k] - init[k]).flatten() for k in a if a[k].is_floating_point()])
        apart = torch.cat([(a[k] - b[k]).flatten() for k in a if a[k].is_floating_point()])
        assert moved.norm() > 1e-3, "did not train"
        return float(apart.norm() / moved.norm())

    # Same global batches, gradients averaged over the processes: the same training up to
    # float64 summation order: ~3e-15 of the distance moved at step 1, ~1e-14 at step 16
    # (1e-9 leaves a 1e5-fold margin). Without gradient averaging (each process steps on its
    # own half) the gap is 0.23 at step 1 already.
    steps = sorted((one / "checkpoints").glob("step_*"))
    assert [p.name for p in steps] == [f"step_{i:09d}" for i in range(1, 17)]
    gaps = {}
    for step in steps:
        s1 = load_weights(step / "model.safetensors")
        s2 = load_weights(two / "checkpoints" / step.name / "model.safetensors")
        assert all(v.dtype == torch.float64 for v in s1.values() if v.is_floating_point())
        gaps[step.name] = relative_gap(s1, s2)
    gaps["export"] = relative_gap(load_weights(one / "export" / "model.safetensors"),
                                  load_weights(two / "export" / "model.safetensors"))
    print("max relative gap", max(gaps.values()))
    assert max(gaps.values()) < 1e-9, gaps


RESUME = [*TINY, "--model-kwargs", '{"width": 0.125, "drop_rate": 0.3}', "--train-split", "train[:256]",
          "--val-split", "test[:64]", "--batch-size", "16", "--epochs", "3", "--export", "ema",
          "--ema-decay", "0.9", "--mixup", "0.4", "--sched", "cosine", "--warmup-epochs", "1",
          "--checkpoint-every", "5", "--keep-checkpoints", "50"]


@needs_cifar
def test_kill_and_resume_equals_uninterrupted(tmp_path):
    full = tmp_path / "full"
    run_train(tmp_path, *RESUME, "--output", str(full))
    cut = tmp_path / "cut"
    cmd = [sys.executable, str(TRAIN), "--no-progress", "--no-tensorboard", "--workers", "0", *RESUME,
           "--output", str(cut)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env(tmp_path), cwd=ROOT)
    target = cut / "checkpoints" / "step_000000020"  # mid-epoch 2 (16 steps per epoch)
    deadline = time.time() + 300
    while not target.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.is_dir(), "the run never wrote the checkpoint to resume from"
    assert not (cut / "export").exists(), "killed too late: the run had already finished"
    for later in (cut / "checkpoints").glob("step_*"):
        if later.name > target.name:
            shutil.rmtree(later)  # resume from step 20 itself, mid-epoch
    resumed = run_train(tmp_path, *RESUME, "--output", str(cut), "--resume", "latest")
    assert "resumed from" in resumed.stdout and "epoch 1, 4 batches in" in resumed.stdout
    a = load_weights(full / "export" / "model.safetensors")
    b = load_weights(cut / "export" / "model.safetensors")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _launch_two() -> list[str]:
    """`accelerate launch` of two CPU processes, on a free port (Accelerate's default, 29500, would be
    taken by a two-process run of the other test worker)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "train_scripts" / "configs" / "accelerate" / "cpu2.yaml"), "--num_processes", "2",
            "--main_process_port", str(free_port())]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=None)
def script_module(path: Path):
    """A script of train_scripts/ imported as a module (once per process)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _train_module():
    """train_scripts/train.py imported as a module (once)."""
    return script_module(TRAIN)


def test_timm_flag_names_are_aliases():
    train = _train_module()
    base = ["--model", "m", "--dataset", "d"]
    timm_style = train.parse_args(base + ["--aa", "rand-m9", "--amp", "--amp-dtype", "bfloat16",
                                          "--model-ema-decay", "0.99", "--initial-checkpoint", "w.safetensors",
                                          "--grad-accum-steps", "2", "--checkpoint-hist", "5",
                                          "--log-interval", "7", "-b", "96", "-j", "3", "--torchcompile",
                                          "--torchcompile-mode", "reduce-overhead"])
    ours = train.parse_args(base + ["--auto-augment", "rand-m9", "--mixed-precision", "bf16", "--ema-decay", "0.99",
                                    "--checkpoint", "w.safetensors", "--grad-accum", "2", "--keep-checkpoints",
                                    "5", "--log-every", "7", "--batch-size", "96", "--workers", "3",
                                    "--compile", "inductor", "--compile-mode", "reduce-overhead"])
    assert {k: v for k, v in vars(timm_style).items() if k not in ("amp", "amp_dtype")} == \
        {k: v for k, v in vars(ours).items() if k not in ("amp", "amp_dtype")}
    assert train.parse_args(base + ["--amp"]).mixed_precision == "fp16"  # timm's default amp dtype
    with pytest.raises(SystemExit):  # a mode is inductor's
        train.parse_args(base + ["--compile", "aot_eager", "--compile-mode", "reduce-overhead"])


# 20 images, micro-batches of 4: 5 per epoch, in groups of 2 + 2 + 1. Plain SGD (momentum 0) in
# float64, so the hand-computed reference below is exact up to summation order.
ACCUM = [*TINY, "--model-kwargs", '{"width": 0.125, "max_out": 1}', "--train-split", "train[:20]",
         "--val-split", "", "-b", "8", "--grad-accum-steps", "2", "--epochs", "2", "--dtype", "float64",
         "--opt", "momentum", "--momentum", "0", "--lr", "0.05", "--sched", "cosine", "--ema-decay", "0.5",
         "--export", "ema", "--log-every", "1", "--checkpoint-every", "1", "--keep-checkpoints", "100"]


def _accumulation_reference(tmp_path: Path, train):
    """(initial weights, weights, EMA weights, lr after each update) of ACCUM by hand: every group of micro-batches,
    the remainder too, is one update with the mean of its micro-batches' gradients."""
    from timm_bcos.data import load_split
    from timm_bcos.training.loaders import build_loaders
    from timm_bcos.training.losses import create_loss
    from timm_bcos.training.model import create_model

    args = train.parse_args(ACCUM + ["--workers", "0", "--output", str(tmp_path / "unused")])
    hf, info = load_split(str(CIFAR), "train[:20]", cache_dir=str(tmp_path / "hf_datasets"))
    torch.manual_seed(0)  # train.py's --seed 0 before creating the model
    model = create_model(args, info.num_classes).double()
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_ds, sampler, loader, _ = build_loaders(args, model, hf, None, info)
    criterion, params = create_loss("bce"), dict(model.named_parameters())
    ema, lrs, update, total = None, [], 0, 2 * 3  # epochs x ceil(5 / 2) updates
    lr = 0.05  # cosine from --lr at update 0
    for epoch in range(2):
        sampler.set_epoch(epoch)
        train_ds.set_epoch(epoch)
        batches = list(loader)
        assert len(batches) == 5
        for group in (batches[0:2], batches[2:4], batches[4:5]):
            model.zero_grad()
            for b in group:
                (criterion(model(b["images"].double()), b["labels"]) / len(group)).backward()
            with torch.no_grad():
                for p in params.values():
                    p -= lr * p.grad
            update += 1
            lr = 0.5 * 0.05 * (1 + math.cos(math.pi * update / total))
            lrs.append(lr)
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            ema = state if ema is None else {k: 0.5 * ema[k] + 0.5 * v for k, v in state.items()}
    return init, model.state_dict(), ema, lrs


def _gap_from_reference(got: dict, want: dict, init: dict) -> float:
    """|got - want| relative to how far `want` moved from `init` (float64 summation order: ~2e-12)."""
    moved = torch.cat([(want[k] - init[k]).flatten() for k in want])
    apart = torch.cat([(got[k] - want[k]).flatten() for k in want])
    assert moved.norm() > 1e-3, "did not train"
    return float(apart.norm() / moved.norm())


@needs_cifar
def test_grad_accumulation_remainder_is_one_update_of_its_own_mean(tmp_path):
    """5 micro-batches per epoch with --grad-accum-steps 2: 3 updates per epoch (the last of one
    micro-batch, weighted as a whole update), counted by the schedule, the EMA, the log and the
    checkpoints alike; a run resumed before the remainder group ends where the whole run does."""
    full = tmp_path / "full"
    proc = run_train(tmp_path, *ACCUM, "--output", str(full))
    assert "3 steps/epoch" in proc.stdout
    lines = [d for d in json_lines(proc.stdout) if "train/loss" in d]
    assert [d["step"] for d in lines] == [1, 2, 3, 4, 5, 6]
    steps = sorted(p.name for p in (full / "checkpoints").glob("step_*"))
    assert steps == [f"step_{i:09d}" for i in range(1, 7)]
    init, weights, ema, lrs = _accumulation_reference(tmp_path, _train_module())
    assert [d["train/lr"] for d in lines] == pytest.approx(lrs, abs=1e-6)  # the log rounds to 6 places
    got = load_weights(full / "checkpoints" / steps[-1] / "model.safetensors")
    assert _gap_from_reference(got, weights, init) < 1e-9
    assert _gap_from_reference(load_weights(full / "export" / "model.safetensors"), ema, init) < 1e-9
    cut = tmp_path / "cut"  # resume mid-epoch 1 with only the remainder group left
    shutil.copytree(full / "checkpoints" / steps[4], cut / "checkpoints" / steps[4])
    resumed = run_train(tmp_path, *ACCUM, "--output", str(cut), "--resume", "latest")
    assert "epoch 1, 4 batches in, step 5" in resumed.stdout
    again = load_weights(cut / "checkpoints" / steps[-1] / "model.safetensors")
    assert all(torch.equal(again[k], got[k]) for k in got)


def test_accumulation_from_accelerates_config_is_refused(tmp_path, monkeypatch):
    """train.py counts the accumulation itself: Accelerate's own would divide every loss once more."""
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(tmp_path), check=False)
    assert proc.returncode == 2 and "gradient accumulation 4 in Accelerate's config" in proc.stderr
    assert "--grad-accum" in proc.stderr


@needs_cifar
def test_compile_channels_last_sync_bn_and_smoothing_keep_plain_checkpoints(tmp_path):
    out = tmp_path / "run"
    run_train(tmp_path, *TINY, "--model-kwargs", '{"width": 0.125, "norm": true}', "--train-split", "train[:64]",
              "--val-split", "test[:16]", "-b", "16", "--epochs", "1", "--export", "last", "--compile", "aot_eager",
              "--channels-last", "--smoothing", "0.1", "--img-size", "32", "--grad-checkpointing", "--sync-bn",
              "--checkpoint-every", "2", "--output", str(out))
    import timm

    import timm_bcos  # noqa: F401

    plain = timm.create_model("bcos_cifar10", width=0.125, norm=True).state_dict().keys()
    assert load_weights(out / "checkpoints" / "step_000000002" / "model.safetensors").keys() == plain
    assert load_weights(out / "export" / "model.safetensors").keys() == plain
    model = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True)
    assert type(model.features[0][1]) is timm_bcos.layers.BatchNormUncentered2d  # exported un-synchronised


@needs_cifar
def test_two_processes_step_together_when_one_batch_is_all_undecodable(tmp_path):
    """A process whose slice of the global batch is all undecodable still takes the step
    (with weight 0): otherwise the processes' gradient all-reduces go out of step and the run
    hangs or crashes."""
    from timm_bcos.data import EpochSampler

    data = make_parquet_dataset(tmp_path / "d", {"train": 16, "test": 16}, corrupt=12)
    order = list(iter(EpochSampler(16, seed=0)))
    halves = [(order[i:i + 2], order[i + 2:i + 4]) for i in range(0, 16, 4)]  # global batch 4, 2 per process
    assert any(all(j < 12 for j in a) != all(j < 12 for j in b) for a, b in halves), "scenario not exercised"
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125, "norm": true}',
                     "--dataset", str(data), "--val-split", "test", "-b", "4", "--epochs", "1", "--sync-bn",
                     "--cpu", "--output", str(tmp_path / "o"), "--export", "none", "--log-every", "1",
                     launcher=_launch_two(), timeout=240)
    lines = json_lines(proc.stdout)
    assert [d["step"] for d in lines if "train/loss" in d] == [1, 2, 3, 4]
    assert [d["skipped_images"] for d in lines if "top1" in d] == [12]


# ---------------------------------------------------------------- bad input


def make_parquet_dataset(root: Path, splits: dict[str, int], *, image_col="image", label_col="label",
                         corrupt: int = 0) -> Path:
    """A local data set in the Hub parquet layout from the first CIFAR-10 test images."""
    import datasets
    import pyarrow.parquet as pq

    table = pq.read_table(CIFAR / "data" / "test-00000-of-00001.parquet").slice(0, max(splits.values()))
    rows = table.to_pylist()
    for name, n in splits.items():
        images = [dict(r["image"]) for r in rows[:n]]
        for i in range(corrupt):
            images[i] = {"bytes": b"not an image at all", "path": None}
        data = {image_col: images, label_col: [r["label"] for r in rows[:n]]}
        ds = datasets.Dataset.from_dict(data).cast_column(image_col, datasets.Image())
        (root / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(root / "data" / f"{name}-00000-of-00001.parquet"))
    return root


def test_help_shows_the_way_from_install_to_multi_gpu(tmp_path):
    proc = run_train(tmp_path, "--help")
    out = proc.stdout
    for needle in ("accelerate launch", "pip install", "8gpu.yaml", "--pretrained", "--resume", "--bcosify-from"):
        assert needle in out


def test_unknown_model_suggests_close_names(tmp_path):
    proc = run_train(tmp_path, "--model", "bcos_resnet5", "--dataset", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert "unknown model 'bcos_resnet5'" in proc.stderr and "bcos_resnet50" in proc.stderr


@needs_cifar
def test_dataset_without_label_column(tmp_path):
    data = make_parquet_dataset(tmp_path / "d", {"train": 8}, label_col="category")
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(data), "--val-split", "", check=False)
    assert proc.returncode == 2
    assert "no label column found" in proc.stderr and "'category'" in proc.stderr
    named = run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125}', "--dataset",
                      str(data), "--val-split", "", "--label-column", "category", "--batch-size", "8",
                      "--epochs", "1", "--output", str(tmp_path / "o"), "--export", "none")
    assert '"epoch": 0' in named.stdout


@needs_cifar
def test_missing_split(tmp_path):
    data = make_parquet_dataset(tmp_path / "d", {"train": 8})
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(data), "--val-split", "validation",
                     check=False)
    assert proc.returncode == 2
    assert "no split 'validation'" in proc.stderr and "['train']" in proc.stderr


def test_missing_dataset_folder(tmp_path):
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--dataset", str(tmp_path / "nope"), check=False)
    assert proc.returncode == 2 and "data set folder not found" in proc.stderr


@needs_cifar
def test_undecodable_images_are_skipped_and_counted(tmp_path):
    data = make_parquet_dataset(tmp_path / "d", {"train": 32, "test": 16}, corrupt=3)
    proc = run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125}', "--dataset",
                     str(data), "--val-split", "test", "--batch-size", "16", "--epochs", "1",
                     "--output", str(tmp_path / "o"), "--export", "none")
    epoch = [d for d in json_lines(proc.stdout) if "top1" in d][0]
    assert epoch["skipped_images"] == 3
    assert epoch["n"] == 13  # the 3 undecodable test images are not scored either


@needs_cifar
def test_checkpoint_of_another_model(tmp_path):
    data = make_parquet_dataset(tmp_path / "d", {"train": 16})
    base = ["--dataset", str(data), "--val-split", "", "--batch-size", "8", "--epochs", "1"]
    run_train(tmp_path, "--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.125}', *base,
              "--output", str(tmp_path / "a"), "--export", "last")
    other = ["--model", "bcos_cifar10", "--model-kwargs", '{"width": 0.25}', *base]
    proc = run_train(tmp_path, *other, "--output", str(tmp_path / "a"), "--resume", "latest", check=False)
    assert proc.returncode == 2 and "is from another run" in proc.stderr and "width" in proc.stderr
    proc = run_train(tmp_path, *other, "--output", str(tmp_path / "b"),
                     "--checkpoint", str(tmp_path / "a" / "export" / "model.safetensors"), check=False)
    assert proc.returncode == 2 and "does not fit model bcos_cifar10" in proc.stderr
    assert "shape mismatches" in proc.stderr


# ---------------------------------------------------------------- units


def test_bce_loss_is_eq16_and_v2_off_labels():
    from timm_bcos.training.losses import BcosBCELoss

    logits = torch.tensor([[2.0, -1.0, 0.5]])
    target = torch.tensor([0])
    p = torch.sigmoid(logits)[0]
    expected = -(torch.log(p[0]) + torch.log(1 - p[1]) + torch.log(1 - p[2])) / 3
    assert torch.allclose(BcosBCELoss()(logits, target), expected)
    t = torch.tensor([1.0, 1 / 3, 1 / 3])
    expected_v2 = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    assert torch.allclose(BcosBCELoss("uniform")(logits, target), expected_v2)
    with pytest.raises(ValueError, match="targets must be"):
        BcosBCELoss()(logits, torch.zeros(1, 4))


def test_top_k_correct():
    from timm_bcos.eval.accuracy import top_k_correct

    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.4]])
    labels = torch.tensor([1, 2, 0])
    got = top_k_correct(logits, labels, ks=(1, 2, 5))
    assert (int(got[1]), int(got[2]), int(got[5])) == (1, 2, 3)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    from timm_bcos.data import EpochSampler

    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) and sorted(a) == list(range(50))
    b.set_epoch(3)
    assert list(a) != list(b)
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_augmentation_is_seeded_per_sample_and_leaves_global_rng_alone():
    from PIL import Image

    from timm_bcos.data import ImageDatasetInfo, ImageClassificationDataset, PadCropFlip

    img = Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy())
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    rows = {"image": [{"bytes": buf.getvalue(), "path": None}] * 4, "label": [0, 1, 2, 3]}

    class Rows(list):
        def __getitem__(self, idx):
            return {k: [v[i] for i in idx] for k, v in rows.items()} if isinstance(idx, list) else \
                {k: v[idx] for k, v in rows.items()}

    ds = ImageClassificationDataset(Rows([0] * 4), ImageDatasetInfo("image", "label", 4, None),
                                    PadCropFlip((32, 32), pad=4))
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    first = ds.__getitems__([0, 1, 2, 3])
    assert torch.equal(torch.rand(3), before)  # the global RNG did not move
    again = [ds[i] for i in range(4)]
    assert all(torch.equal(x[0], y[0]) for x, y in zip(first, again))
    assert not all(torch.equal(first[0][0], x[0]) for x in first[1:])  # different samples, different crops
    ds.set_epoch(1)
    assert not all(torch.equal(ds[i][0], first[i][0]) for i in range(4))


def test_numpy_drawing_transforms_are_seeded_per_sample_too():
    import numpy as np

    from timm_bcos.data import ImageDatasetInfo, ImageClassificationDataset

    class Rows(list):
        def __getitem__(self, idx):
            return {"image": [np.zeros((2, 2, 3), np.uint8)] * len(idx), "label": list(idx)}

    ds = ImageClassificationDataset(Rows([0] * 4), ImageDatasetInfo("image", "label", 4, None),
                                    lambda img: float(np.random.rand()))
    np.random.seed(7)
    before = np.random.rand()
    np.random.seed(7)
    first = [x for x, _ in ds.__getitems__([0, 1, 2, 3])]
    assert np.random.rand() == before  # the caller's numpy RNG did not move
    assert [x for x, _ in ds.__getitems__([3, 2, 1, 0])][::-1] == first  # per sample, not per call
    assert len(set(first)) == 4
    ds.set_epoch(1)
    assert [x for x, _ in ds.__getitems__([0, 1, 2, 3])] != first


def test_collate_counts_undecodable():
    from timm_bcos.data import collate_skipping

    batch = collate_skipping([(torch.zeros(3, 2, 2), 1), None, (torch.ones(3, 2, 2), 0)])
    assert batch["images"].shape == (2, 3, 2, 2) and batch["labels"].tolist() == [1, 0]
    assert int(batch["skipped"]) == 1
