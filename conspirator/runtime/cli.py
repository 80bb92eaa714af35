"""``conspirator worker``: the reference worker (being built, issue 6)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("worker", help="run the reference data-path worker")
    p.set_defaults(func=lambda args: 2)
