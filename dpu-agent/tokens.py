"""Where the agent finds the per-job tokens (and the node token of its registry).

The operator keeps each job's token in a Secret; the agent's DaemonSet projects them into a
directory, one file per job named ``<namespace>.<job>`` (a namespace has no dots, so the
split is unambiguous).  :class:`DirectoryTokens` reads that directory and picks up changes
(a new job, a rotated token) without a restart; :class:`StaticTokens` serves tests and
benchmarks.  The registry's node token is a file too (``--node-token-file``).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Protocol

from conspirator.wire.frames import Mode


class TokenStore(Protocol):
    def token_for(self, mode: Mode, name: str) -> str | None:
        """The token a client of job ``name`` (or the publisher of node ``name``) must
        prove, or None when there is none."""
        ...


class StaticTokens:
    def __init__(self, jobs: dict[str, str] | None = None,
                 nodes: dict[str, str] | None = None) -> None:
        self.jobs = dict(jobs or {})
        self.nodes = dict(nodes or {})

    def token_for(self, mode: Mode, name: str) -> str | None:
        return (self.nodes if mode is Mode.PUBLISHER else self.jobs).get(name)


class DirectoryTokens:
    """``<dir>/<namespace>.<job>`` files; node tokens from ``node_token_file``."""

    def __init__(self, directory: str | os.PathLike[str] | None,
                 node_token_file: str | os.PathLike[str] | None = None,
                 node: str = "") -> None:
        self.directory = Path(directory) if directory else None
        self.node_token_file = Path(node_token_file) if node_token_file else None
        self.node = node
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[float, str]] = {}

    def _read(self, path: Path) -> str | None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            return None
        with self._lock:
            hit = self._cache.get(path)
            if hit and hit[0] == mtime:
                return hit[1]
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        if not token:
            return None
        with self._lock:
            self._cache[path] = (mtime, token)
        return token

    def token_for(self, mode: Mode, name: str) -> str | None:
        if mode is Mode.PUBLISHER:
            if self.node_token_file is None or (self.node and name != self.node):
                return None
            return self._read(self.node_token_file)
        if self.directory is None or "/" not in name:
            return None
        ns, job = name.split("/", 1)
        return self._read(self.directory / f"{ns}.{job}")
