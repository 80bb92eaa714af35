"""The ``conspirator`` command line.

The core knows no component: sub-commands are found through the
``conspirator.commands`` entry-point group.  Each entry point names a
``register(subparsers)`` function that adds its parser and sets ``func`` on it;
``func(args)`` returns the process exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any

from conspirator import __version__

Register = Callable[["argparse._SubParsersAction[Any]"], None]


class UsageError(Exception):
    """An error in what the user gave us; printed without a traceback, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conspirator",
        description="Conspirator: heterogeneity-aware MIG placement and a DPU-aided data path.",
    )
    parser.add_argument("--version", action="version", version=f"conspirator {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for ep in sorted(entry_points(group="conspirator.commands"), key=lambda e: e.name):
        register: Register = ep.load()
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        code: int = func(args)
    except UsageError as exc:
        print(f"conspirator {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
