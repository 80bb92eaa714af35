"""The local cluster's processes (spawn, stop, reap, pid files) and its kubectl and ctr."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conspirator_e2e.constants import (
    COMPONENTS,
    DEFAULT_SPEC,
)
from conspirator_e2e.paths import Paths
from conspirator_e2e.procs import (
    ClusterError,
    log,
    pid_alive,
    proc_cmdline,
    run,
    tail,
    wait_for,
)


class ClusterBase:
    """What every part of :class:`~conspirator_e2e.cluster.LocalCluster` shares."""

    def __init__(self, paths: Paths | None = None, spec_path: Path | None = None,
                 kubeconfig: Path | None = None) -> None:
        self.paths = paths or Paths.from_env()
        # Another cluster's kubeconfig (kind), for the commands that only talk to the API.
        self.kubeconfig = kubeconfig or self.paths.kubeconfig
        self.spec_path = spec_path or Path(os.environ.get("CONSPIRATOR_E2E_SPEC", DEFAULT_SPEC))
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    # ---- process bookkeeping ------------------------------------------------------------

    def pid(self, name: str) -> int | None:
        try:
            pid = int(self.paths.pid_file(name).read_text().strip())
        except (OSError, ValueError):
            return None
        # Guard against pid reuse: the process must still be the binary we started.
        cmd = proc_cmdline(pid)
        if not cmd or not pid_alive(pid):
            return None
        ok = Path(cmd[0]).name == name
        return pid if ok and str(self.paths.state) in " ".join(cmd) else None

    def running(self) -> dict[str, int | None]:
        return {name: self.pid(name) for name in COMPONENTS}

    def _spawn(self, name: str, argv: Sequence[str | Path], env: dict[str, str] | None = None
               ) -> None:
        self.paths.logs.mkdir(parents=True, exist_ok=True)
        self.paths.run.mkdir(parents=True, exist_ok=True)
        logf = self.paths.log_file(name).open("ab")
        logf.write(f"\n===== {time.strftime('%F %T')} starting {name}\n".encode())
        logf.flush()
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(
            [str(a) for a in argv],
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.paths.state,
            env=full_env,
            start_new_session=True,
        )
        logf.close()
        self._children[name] = proc
        self.paths.pid_file(name).write_text(f"{proc.pid}\n")

    def _stop(self, name: str, timeout: float = 15) -> None:
        pid = self.pid(name)
        if pid is None:
            self.paths.pid_file(name).unlink(missing_ok=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and pid_alive(pid):
            self._reap(name)
            time.sleep(0.1)
        if pid_alive(pid):
            log(f"{name} ignored SIGTERM for {timeout:.0f}s: killing")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_for(f"{name} to exit", lambda: not pid_alive(pid), 10, 0.1)
        self._reap(name)
        self.paths.pid_file(name).unlink(missing_ok=True)

    def _reap(self, name: str) -> None:
        child = self._children.get(name)
        if child is not None and child.poll() is not None:
            del self._children[name]

    def _expect_alive(self, name: str) -> str:
        if self.pid(name) is None:
            raise ClusterError(
                f"{name} exited; last lines of {self.paths.log_file(name)}:\n"
                + tail(self.paths.log_file(name))
            )
        return ""

    def _log_hint(self, name: str) -> str:
        return f"\nlast lines of {self.paths.log_file(name)}:\n{tail(self.paths.log_file(name))}"

    # ---- kubectl ------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True,
                timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run(
            [self.paths.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input, check=check, timeout=timeout,
        )

    def kubectl_json(self, *args: str) -> Any:
        return json.loads(self.kubectl(*args, "-o", "json").stdout)

    def ctr(self, *args: str, check: bool = True, timeout: float = 120
            ) -> subprocess.CompletedProcess[str]:
        return run([self.paths.binary("ctr"), "--address", self.paths.containerd_sock,
                    "-n", "k8s.io", *args], check=check, timeout=timeout)
