"""``conspirator loadgen``: load generator for the data path (being built, issue 6)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("loadgen", help="send requests to a DPU agent and measure them")
    p.set_defaults(func=lambda args: 2)
