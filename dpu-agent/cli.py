"""``conspirator dpu-agent``: run the DPU agent (being built, issue 6)."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    p = subparsers.add_parser("dpu-agent", help="run the data-path agent of a node's DPU")
    p.set_defaults(func=lambda args: 2)
