"""Processes of the local cluster: running commands, waiting, pids, log tails."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


class ClusterError(RuntimeError):
    """The cluster could not be started, stopped or queried."""


def log(msg: str) -> None:
    print(f"[e2e {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Small helpers


def run(
    argv: Sequence[str | Path],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    data = input.decode() if isinstance(input, bytes) else input
    proc = subprocess.run(
        [str(a) for a in argv],
        input=data,
        capture_output=capture,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode != 0:
        cmd = " ".join(str(a) for a in argv)
        raise ClusterError(f"{cmd} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc


def wait_for(what: str, probe: Any, timeout: float, interval: float = 0.5,
             on_timeout: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as e:  # a probe may fail in any way until the thing is ready
            last = e
            value = None
        else:
            value = last
        if value:
            return value
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}: {last!r}{on_timeout}")


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # state is the field after the parenthesised command name
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def proc_cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def all_pids() -> Iterator[int]:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            yield int(entry)


def tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-200_000:].decode(errors="replace").splitlines()
    except OSError:
        return f"(no {path})"
    return "\n".join(data[-lines:])
