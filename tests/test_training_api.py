"""timm_bcos.training as a Python API: TrainConfig is train.py's command line (one source of truth),
`train` from a notebook through Accelerate's notebook_launcher reaches the CLI's weights, and bad
input is an exception, not an exit."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import pytest
from test_train import ACCUM, ROOT, _env, _gap_from_reference, free_port, load_weights, needs_cifar, run_train

from timm_bcos.training import ConfigError, TrainConfig, TrainError, build_parser, parse_args, train
from timm_bcos.utils.options import flag

CONFIGS = sorted((ROOT / "train_scripts" / "configs").glob("*.yaml"))


def test_every_config_field_is_an_option_with_its_default():
    parser = build_parser()
    actions = {a.dest: a for a in parser._actions}
    for f in dataclasses.fields(TrainConfig):
        assert f.name in actions, f"{f.name} has no option"
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        assert actions[f.name].default == default, f.name
        assert flag(f.name) in actions[f.name].option_strings
    assert set(actions) - {f.name for f in dataclasses.fields(TrainConfig)} == {"help", "config"}


def test_command_line_and_config_are_the_same_run():
    argv = ["--model", "bcos_resnet18", "--dataset", "d", "--model-kwargs", '{"b": 1.5}', "-b", "32", "--aa",
            "rand-m9", "--scale", "0.5", "1", "--decay-milestones", "3", "7", "--amp", "--pretrained"]
    want = TrainConfig(model="bcos_resnet18", dataset="d", model_kwargs={"b": 1.5}, batch_size=32,
                       auto_augment="rand-m9", scale=[0.5, 1.0], decay_milestones=[3, 7], amp=True, pretrained=True)
    assert parse_args(argv) == want
    assert want.mixed_precision == "fp16"  # --amp's dtype, as on the command line
    assert TrainConfig(model="m", dataset="wds:shards").streaming  # tar shards are always streamed


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_yaml_recipes_load_as_configs(path):
    text = path.read_text()  # a fine-tuning recipe leaves the model and data to the command line
    extra = {k: v for k, v in (("model", "bcos_resnet50"), ("dataset", "d")) if f"\n{k}:" not in f"\n{text}"}
    config = TrainConfig.from_yaml(path, **extra)
    argv = [x for k, v in extra.items() for x in (f"--{k}", v)]
    assert parse_args(["--config", str(path), *argv]) == config


def test_bad_options_are_config_errors_naming_them(tmp_path):
    with pytest.raises(ConfigError, match="--dataset is required"):
        TrainConfig(model="bcos_cifar10")
    with pytest.raises(ConfigError, match="--compile-mode is inductor's"):
        TrainConfig(model="m", dataset="d", compile="aot_eager", compile_mode="reduce-overhead")
    with pytest.raises(ConfigError, match="exactly one of --mask-column or --boxes-column"):
        TrainConfig(model="m", dataset="d", guidance="energy")
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("epoch: 3\n")
    with pytest.raises(ConfigError, match="unknown options \\['epoch'\\]"):
        TrainConfig.from_yaml(recipe, model="m", dataset="d")


def test_a_run_that_cannot_start_raises_train_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TrainError, match="data set folder not found"):
        train(TrainConfig(model="bcos_cifar10", dataset=str(tmp_path / "nowhere/"), output=str(tmp_path / "out"),
                          no_tensorboard=True, no_progress=True, workers=0, cpu=True))


NOTEBOOK = """
import sys

from accelerate import notebook_launcher

from timm_bcos.training import parse_args, train

# a notebook builds its TrainConfig in Python; here it is the CLI's, so that both runs are one recipe
config = parse_args(sys.argv[2:])
notebook_launcher(train, (config,), num_processes=2, use_port=sys.argv[1])
"""


@needs_cifar
def test_api_in_a_notebook_launcher_reaches_the_cli_weights(tmp_path):
    """ACCUM (float64, plain SGD, micro-batches of 4 in groups of 2 + 2 + 1) through the CLI on one process
    and through `train` under Accelerate's notebook_launcher on two (each micro-batch split 2 + 2, the
    gradients all-reduced only in the backward that closes a group): the same weights after every
    update and the same export. The one-process run equals the hand-computed reference
    (test_grad_accumulation_remainder_is_one_update_of_its_own_mean), so the two-process one does too.
    Were every micro-batch run under no_sync, each process would step on its own half: a gap of 3.0;
    a lost option or another seed gives gaps of order 1 too."""
    cli = tmp_path / "cli"
    run_train(tmp_path, *ACCUM, "--output", str(cli))
    api = tmp_path / "api"
    script = tmp_path / "notebook.py"
    script.write_text(textwrap.dedent(NOTEBOOK))
    argv = [*ACCUM, "--cpu", "--workers", "0", "--no-progress", "--no-tensorboard", "--output", str(api)]
    proc = subprocess.run([sys.executable, str(script), str(free_port()), *argv], capture_output=True, text=True,
                          env=_env(tmp_path), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "2 process(es)" in proc.stdout
    steps = sorted(p.name for p in (cli / "checkpoints").glob("step_*"))
    assert steps == sorted(p.name for p in (api / "checkpoints").glob("step_*")) and len(steps) == 6
    init = load_weights(cli / "checkpoints" / steps[0] / "model.safetensors")  # after update 1: the gap's scale
    for step in steps[1:]:
        got = load_weights(api / "checkpoints" / step / "model.safetensors")
        assert _gap_from_reference(got, load_weights(cli / "checkpoints" / step / "model.safetensors"), init) < 1e-9
    got, want = (load_weights(run / "export" / "model.safetensors") for run in (api, cli))
    assert _gap_from_reference(got, want, init) < 1e-9


def test_cli_is_thin():
    """train.py and evaluate.py: argument parsing and one call each."""
    for script in ("train.py", "evaluate.py"):
        assert len((ROOT / "train_scripts" / script).read_text().splitlines()) <= 250, script

