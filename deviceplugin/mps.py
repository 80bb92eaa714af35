"""MPS inside MIG: one MPS control daemon per MIG instance that runs several processes.

A plan's *segment* may put ``processes > 1`` MPS processes of one model in one MIG
instance (docs/parvagpu-track.md).  CUDA's MPS needs a control daemon per instance for
that: ``nvidia-cuda-mps-control -d`` started with ``CUDA_VISIBLE_DEVICES`` set to the
instance's MIG UUID and its own ``CUDA_MPS_PIPE_DIRECTORY`` and
``CUDA_MPS_LOG_DIRECTORY`` (clients of that instance find it through the same pipe
directory); ``quit`` on its control pipe stops it.

:class:`MpsControl` is the interface the node daemon drives: :meth:`MpsControl.reconcile`
makes a daemon run for exactly the instances whose wanted process count is above one.
:class:`NvidiaMpsControl` is the real one (the binary on ``PATH``, a GPU with MIG
instances); :class:`SimulatedMpsControl` keeps the same bookkeeping without a GPU.
"""

from __future__ import annotations

import abc
import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MPS_CONTROL = "nvidia-cuda-mps-control"
DEFAULT_ROOT = Path("/run/conspirator/mps")


class MpsError(RuntimeError):
    """An MPS control daemon that would not start or stop."""


@dataclass(frozen=True, slots=True)
class MpsDaemon:
    """A running control daemon: the instance it serves and where its clients connect."""

    instance_uuid: str
    pipe_dir: Path
    log_dir: Path

    def client_env(self) -> dict[str, str]:
        """What a worker process of this instance sets to become the daemon's client."""
        return {"CUDA_VISIBLE_DEVICES": self.instance_uuid,
                "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
                "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}


class MpsControl(abc.ABC):
    """Starts and stops one MPS control daemon per MIG instance."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        self.root = root
        self._running: dict[str, MpsDaemon] = {}

    def daemon_for(self, instance_uuid: str) -> MpsDaemon:
        safe = instance_uuid.replace("/", "_")
        return MpsDaemon(instance_uuid, self.root / safe / "pipe", self.root / safe / "log")

    @property
    def running(self) -> dict[str, MpsDaemon]:
        return dict(self._running)

    def start(self, instance_uuid: str) -> MpsDaemon:
        if instance_uuid in self._running:
            return self._running[instance_uuid]
        d = self.daemon_for(instance_uuid)
        d.pipe_dir.mkdir(parents=True, exist_ok=True)
        d.log_dir.mkdir(parents=True, exist_ok=True)
        self._start(d)
        self._running[instance_uuid] = d
        return d

    def stop(self, instance_uuid: str) -> None:
        d = self._running.pop(instance_uuid, None)
        if d is not None:
            self._stop(d)

    def reconcile(self, wanted: Mapping[str, int]) -> tuple[list[str], list[str]]:
        """Run a daemon for exactly the instances wanting more than one process.

        ``wanted``: MIG instance UUID -> MPS processes the plan runs there.  Returns the
        instances started and stopped (stops first: an instance re-cut for another job
        must lose its old daemon before a new one starts).
        """
        need = {u for u, n in wanted.items() if n > 1}
        stopped = sorted(set(self._running) - need)
        for u in stopped:
            self.stop(u)
        started = sorted(need - set(self._running))
        for u in started:
            self.start(u)
        return started, stopped

    @abc.abstractmethod
    def _start(self, daemon: MpsDaemon) -> None: ...

    @abc.abstractmethod
    def _stop(self, daemon: MpsDaemon) -> None: ...


class NvidiaMpsControl(MpsControl):
    """The real control daemons, through ``nvidia-cuda-mps-control``."""

    def __init__(self, root: Path = DEFAULT_ROOT, binary: str = MPS_CONTROL,
                 timeout_s: float = 10.0) -> None:
        super().__init__(root)
        found = shutil.which(binary)
        if found is None:
            raise MpsError(f"{binary} is not on PATH (no NVIDIA driver here)")
        self.binary = found
        self.timeout_s = timeout_s

    def _run(self, daemon: MpsDaemon, args: list[str], stdin: str | None) -> None:
        env = {**os.environ, **daemon.client_env()}
        try:
            res = subprocess.run([self.binary, *args], input=stdin, env=env, text=True,
                                 capture_output=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise MpsError(f"{self.binary} {' '.join(args)} for {daemon.instance_uuid} "
                           f"did not return within {self.timeout_s} s") from None
        if res.returncode != 0:
            raise MpsError(f"{self.binary} {' '.join(args)} for {daemon.instance_uuid} "
                           f"exited {res.returncode}: {res.stderr.strip()}")

    def _start(self, daemon: MpsDaemon) -> None:
        self._run(daemon, ["-d"], None)

    def _stop(self, daemon: MpsDaemon) -> None:
        self._run(daemon, [], "quit\n")


class SimulatedMpsControl(MpsControl):
    """The bookkeeping of :class:`MpsControl` with no GPU: records starts and stops."""

    def __init__(self, root: Path = DEFAULT_ROOT) -> None:
        super().__init__(root)
        self.log: list[tuple[str, str]] = []

    def _start(self, daemon: MpsDaemon) -> None:
        self.log.append(("start", daemon.instance_uuid))

    def _stop(self, daemon: MpsDaemon) -> None:
        self.log.append(("stop", daemon.instance_uuid))


__all__ = ["DEFAULT_ROOT", "MPS_CONTROL", "MpsControl", "MpsDaemon", "MpsError",
           "NvidiaMpsControl", "SimulatedMpsControl"]
