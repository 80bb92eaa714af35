"""Where the shared trace data lives when the user gives no path.

Looked up in order: ``$CONSPIRATOR_DATA`` (a ``data`` folder as in ``shared/data``),
then ``shared/data`` beside the current directory or any of its parents (the layout of
a checkout with ``../shared`` next to it).
"""

from __future__ import annotations

import os
from pathlib import Path

ALIBABA = "alibaba-gpu-v2023"


def data_root() -> Path | None:
    env = os.environ.get("CONSPIRATOR_DATA")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        for cand in (d / "shared" / "data", d.parent / "shared" / "data"):
            if (cand / ALIBABA).is_dir():
                return cand
    return None


def shared_dataset(name: str) -> Path | None:
    """``shared/data/<name>`` (e.g. ``parvagpu``) found as :func:`data_root` looks."""
    env = os.environ.get("CONSPIRATOR_DATA")
    if env:
        return Path(env) / name
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        for cand in (d / "shared" / "data", d.parent / "shared" / "data"):
            if (cand / name).is_dir():
                return cand / name
    return None


def alibaba(name: str) -> Path | None:
    root = data_root()
    return root / ALIBABA / name if root else None
