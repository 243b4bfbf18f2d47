"""One source of truth for a command's options: the fields of a dataclass carry their flags, help and
parsing, and the argparse parser is derived from them (`add_options`), so a Python API that takes the
dataclass and the command line that fills it cannot drift apart."""
from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any


def option(default: Any = None, help: str = "", *aliases: str, group: str = "", parse: Callable | None = None,
           choices=None, nargs=None, const=None, metavar: str | None = None, factory: Callable | None = None,
           required: bool = False) -> Any:
    """A dataclass field that is also a command-line option `--<field-name>` (underscores as dashes).

    `aliases`: more flags for it (timm's names, short flags); `parse`: argparse's `type` (default: the
    default value's type, when it is an int or float); a bool field with default False is a switch;
    `factory` gives a mutable default (a dict or list) for each instance; `required`: the option must be
    given (as an error of its own, after a --config file had its say)."""
    meta = {"help": help, "aliases": aliases, "group": group, "parse": parse, "choices": choices,
            "nargs": nargs, "const": const, "metavar": metavar, "required": required}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag(name: str) -> str:
    """The command-line flag of field `name`."""
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def add_options(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add one option per field of `config_class` to `parser`, in argument groups named by the fields."""
    groups: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):
        meta = f.metadata
        if "help" not in meta:
            continue  # a field that is not an option
        name = meta["group"]
        if name not in groups:
            groups[name] = parser.add_argument_group(name) if name else parser
        default = _default(f)
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
        if default is False and meta["parse"] is None:
            kwargs["action"] = "store_true"
        else:
            parse = meta["parse"] or (type(default) if type(default) in (int, float) else None)
            kwargs.update({k: v for k, v in (("type", parse), ("choices", meta["choices"]), ("nargs", meta["nargs"]),
                                             ("const", meta["const"]), ("metavar", meta["metavar"])) if v is not None})
        groups[name].add_argument(flag(f.name), *meta["aliases"], **kwargs)


def missing_required(config_class: type, values: dict[str, Any]) -> list[str]:
    """The flags of required options that `values` leaves unset."""
    return [flag(f.name) for f in dataclasses.fields(config_class)
            if f.metadata.get("required") and values.get(f.name) in (None, "")]


def option_names(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class) if "help" in f.metadata}


def command_line(config: Any, program: str) -> str:
    """The command line that fills `config`: `program` and a flag for each option not at its default."""
    import shlex

    parts = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "help" not in f.metadata or value == _default(f):
            continue
        if value is True and _default(f) is False:
            parts.append(flag(f.name))
        else:
            parts += [flag(f.name), *map(str, value if isinstance(value, (list, tuple)) else [value])]
    return " ".join([program, shlex.join(parts)])
