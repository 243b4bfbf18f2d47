"""`python -m timm_bcos <command>`."""
from __future__ import annotations

import argparse
import sys


def _demo(args: argparse.Namespace) -> int:
    from .cli.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    """`python -m timm_bcos`'s parser: one subcommand per job."""
    parser = argparse.ArgumentParser(prog="python -m timm_bcos", allow_abbrev=False)
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the whole traceback (without it: one line saying what failed)")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="the shipped CIFAR-10 B-cos model explains sample images (PNG grid)")
    demo.add_argument("--out", default="outputs/demo.png")
    demo.set_defaults(func=_demo)
    from .cli.explain import add_explain_parser

    add_explain_parser(sub)
    from .app.cli import add_app_parser
    from .atlas.cli import add_atlas_parser
    from .export.cli import add_export_parser

    add_app_parser(sub)
    add_atlas_parser(sub)
    add_export_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # taken anywhere on the line, before or after the command
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except ImportError as e:  # an optional dependency: say what to install, in one line
        if debug:
            raise
        raise SystemExit(f"error: {e}") from None
    except Exception as e:  # what no command turned into a message of its own: one line, not a traceback
        if debug:
            raise
        from .utils.errors import one_line

        raise SystemExit(f"error: {one_line(e)} (--debug shows the traceback)") from None


if __name__ == "__main__":
    sys.exit(main())
