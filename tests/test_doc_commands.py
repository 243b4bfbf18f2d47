"""Every `--flag` of a command in the README's shell blocks (and docs/, once it exists) exists in the parser
that the command names: train.py's, evaluate.py's, `python -m timm_bcos <command>`'s (or `timm-bcos`'s),
`accelerate launch`'s before the script and the script's after it. A comment line right under a command
continues it (`#   [--format onnx | torch-export]`): its flags must exist in one of that command's parsers.
Commands of other tools (make, pip, huggingface-cli) are not checked."""
from __future__ import annotations

import argparse
import functools
import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FLAG = re.compile(r"(?<![\w-])(--[A-Za-z][\w-]*)")


def shell_commands(text: str) -> list[tuple[int, str, list[str]]]:
    """(line, command, comment lines continuing it) of every command in the page's bash blocks."""
    out, block, last = [], False, None
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("```"):
            block, last = line == "```bash", None
        elif block and not line:
            last = None
        elif block and line.startswith("#"):
            if last is not None:
                last[2].append(line)
        elif block:
            start, command = i + 1, line
            while command.endswith("\\") and i + 1 < len(lines):
                i += 1
                command = command[:-1] + " " + lines[i].strip()
            last = (start, command, [])
            out.append(last)
        i += 1
    return out


@functools.lru_cache(maxsize=None)
def _script_parser(name: str) -> argparse.ArgumentParser:
    if name == "train.py":
        from timm_bcos.training.config import build_parser

        return build_parser()
    spec = importlib.util.spec_from_file_location(f"doc_{name[:-3]}", ROOT / "train_scripts" / name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.build_parser()


@functools.lru_cache(maxsize=None)
def _subcommand_flags(name: str) -> set[str]:
    """The flags `python -m timm_bcos <name>` takes: its own and the top-level ones (--debug, anywhere)."""
    from timm_bcos.__main__ import build_parser

    parser = build_parser()
    choices = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert name in choices, f"no command {name!r} in python -m timm_bcos (has {sorted(choices)})"
    return _known(choices[name]) | _known(parser)


def flags_of(command: str) -> list[tuple[str, set[str]]] | None:
    """(the part of `command` that a parser reads, the flags it knows); None for another tool's command."""
    words = shlex.split(command, comments=True)
    if words[:3] == ["python", "-m", "timm_bcos"] or words[:1] == ["timm-bcos"]:
        rest = words[3:] if words[0] == "python" else words[1:]
        sub = next(w for w in rest if not w.startswith("-"))  # top-level options may come first
        return [(command, _subcommand_flags(sub))]
    scripts = [w for w in words if w.endswith(("train_scripts/train.py", "train_scripts/evaluate.py"))]
    if words[:2] == ["accelerate", "launch"] and scripts:
        from accelerate.commands.launch import launch_command_parser

        before, after = command.split(scripts[0], 1)
        return [(before, _known(launch_command_parser())), (after, _known(_script_parser(Path(scripts[0]).name)))]
    if words[:1] == ["python"] and scripts:
        return [(command.split(scripts[0], 1)[1], _known(_script_parser(Path(scripts[0]).name)))]
    return None


def _known(parser: argparse.ArgumentParser) -> set[str]:
    return set(parser._option_string_actions)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_of_a_documented_command_exists(page):
    unknown = []
    for line, command, comments in shell_commands(page.read_text()):
        parts = flags_of(command)
        if parts is None:
            continue
        for part, known in parts:
            unknown += [(line, flag) for flag in FLAG.findall(part.split(" #", 1)[0]) if flag not in known]
        either = set().union(*(known for _, known in parts))
        unknown += [(line, flag) for c in comments for flag in FLAG.findall(c) if flag not in either]
    assert not unknown, f"{page.name}: flags no parser knows (line, flag): {unknown}"


def test_the_pages_hold_the_commands_they_document():
    """A reader that finds nothing would pass every page: count what it finds over all of them."""
    counts = {str(p.relative_to(ROOT)): sum(flags_of(c) is not None for _, c, _ in shell_commands(p.read_text()))
              for p in PAGES}
    assert counts["README.md"] >= 4 and sum(counts.values()) >= 25, f"commands found per page: {counts}"


def test_the_reader_finds_commands_continuations_and_flags():
    text = ("```bash\n# a note\npython train_scripts/train.py --epochs 1 \\\n"
            "    --lr 1e-3   # trailing note --not-a-flag\n"
            "#   or --resume latest\n\nmake test\n```\n```python\npython -m timm_bcos demo --out x\n```\n")
    commands = shell_commands(text)
    assert [(n, c.split()[:2]) for n, c, _ in commands] == [(3, ["python", "train_scripts/train.py"]),
                                                             (7, ["make", "test"])]
    assert commands[0][2] == ["#   or --resume latest"]
    (part, known), = flags_of(commands[0][1])
    assert FLAG.findall(part.split(" #", 1)[0]) == ["--epochs", "--lr"] and "--epochs" in known
    assert flags_of("make test") is None
    for command in ("python -m timm_bcos export --model m --dynamic-batch --debug",
                    "python -m timm_bcos --debug export --model m --dynamic-batch"):
        (part, known), = flags_of(command)
        assert {"--dynamic-batch", "--debug"} <= known and "--epochs" not in known
