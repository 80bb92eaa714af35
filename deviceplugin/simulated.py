"""The simulated GPU backend: GPUs described by a node spec file, MIG by NVML's rules.

A node spec file (YAML or JSON) says which GPUs the node has::

    node: kwok-a100-0            # seeds the GPU UUIDs (default: the file's stem)
    gpus:
      - model: A100-80GB         # a model of the catalog (conspirator.mig)
        count: 2                 # default 1
        migEnabled: true         # default: true on MIG-capable models
        instances:               # optional initial layout
          - {profile: 1g.10gb, start: 0}
    dpu: {present: true, model: BlueField-2}   # optional
    opDelaySeconds: 0.5          # how long each MIG operation takes (default 0)

The GPUs' state lives in a *state file* (JSON, written atomically under an exclusive
lock after every operation), not in the daemon: like real GPUs, the instances outlive a
daemon that is killed, and a daemon that restarts finds them as they were, half-made
instances (a GPU instance without its compute instance) included.

Semantics follow NVML: creating at an invalid placement fails ``INVALID_ARGUMENT``, at a
taken one ``INSUFFICIENT_RESOURCES``; destroying a compute instance a process uses, or a
GPU instance that still has a compute instance, fails ``IN_USE``.  A *holder* is a PID
using a MIG device (:meth:`SimulatedBackend.claim`); the device is in use while a
holder process is alive, as NVML lists running processes.  XID errors can be injected
(:meth:`SimulatedBackend.inject_xid`) and are reported by :meth:`poll_health`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from conspirator.deviceplugin.backend import (
    APPLICATION_XIDS,
    BackendError,
    ErrorCode,
    GpuBackend,
    GpuInfo,
    GpuInstance,
    HealthEvent,
)
from conspirator.mig import (
    GpuModel,
    LayoutFault,
    MigLayoutError,
    Placement,
    check_layout,
    gpu_model,
)

_UUID_NS = uuid.UUID("6f1c1f5e-58a4-4a55-9d0e-2f1b8b7c0c11")


class SpecError(ValueError):
    """A node spec file the simulated backend cannot use."""


@dataclass(frozen=True)
class DpuSpec:
    present: bool = False
    model: str | None = None


@dataclass(frozen=True)
class NodeSpec:
    """What a node spec file declares."""

    node: str
    gpus: tuple[tuple[str, bool, tuple[tuple[str, int], ...]], ...]
    """Per GPU: model name, MIG enabled, initial (profile, start) instances."""
    dpu: DpuSpec
    op_delay: float = 0.0

    @classmethod
    def load(cls, path: Path) -> NodeSpec:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"{path}: {exc}") from exc
        return cls.from_dict(doc, str(path), default_node=path.stem)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "spec", default_node: str = "node"
                  ) -> NodeSpec:
        if not isinstance(doc, dict):
            raise SpecError(f"{where}: expected a mapping")
        gpus: list[tuple[str, bool, tuple[tuple[str, int], ...]]] = []
        for i, g in enumerate(doc.get("gpus") or []):
            try:
                model = gpu_model(str(g["model"]))
            except KeyError as exc:
                raise SpecError(f"{where}: gpus[{i}]: {exc.args[0]}") from exc
            mig = bool(g.get("migEnabled", model.mig_capable))
            if mig and not model.mig_capable:
                raise SpecError(f"{where}: gpus[{i}]: {model.name} is not MIG-capable")
            insts = tuple((str(x["profile"]), int(x["start"])) for x in g.get("instances") or [])
            if insts:
                if not mig:
                    raise SpecError(f"{where}: gpus[{i}]: instances need migEnabled")
                try:
                    check_layout(model, [Placement(model.profile(p), s) for p, s in insts])
                except (KeyError, MigLayoutError) as exc:
                    raise SpecError(f"{where}: gpus[{i}]: {exc}") from exc
            count = int(g.get("count", 1))
            if count < 1:
                raise SpecError(f"{where}: gpus[{i}]: count must be >= 1")
            gpus.extend([(model.name, mig, insts)] * count)
        if len(gpus) > 16:
            raise SpecError(f"{where}: at most 16 GPUs per node")
        d = doc.get("dpu") or {}
        return cls(
            node=str(doc.get("node", default_node)),
            gpus=tuple(gpus),
            dpu=DpuSpec(present=bool(d.get("present", False)), model=d.get("model")),
            op_delay=float(doc.get("opDelaySeconds", 0.0)),
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes (it holds no device).
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


class SimulatedBackend(GpuBackend):
    """GPUs from a :class:`NodeSpec`, their state in ``state_file``."""

    name = "simulated"

    def __init__(self, spec: NodeSpec, state_file: Path | None) -> None:
        """``state_file=None`` keeps the state in memory (for property tests)."""
        self.spec = spec
        self.state_file = state_file
        self._memory: dict[str, Any] = {}
        self._mem_lock = threading.RLock()
        self._last_health: dict[str, tuple[bool, str, int | None]] = {}
        if state_file is not None:
            state_file.parent.mkdir(parents=True, exist_ok=True)
        with self._locked() as st:
            if not st:
                st.update(self._initial_state())

    @classmethod
    def from_file(cls, spec_file: Path, state_file: Path | None = None) -> SimulatedBackend:
        spec = NodeSpec.load(spec_file)
        if state_file is None:
            state_file = spec_file.with_name(spec_file.stem + ".state.json")
        return cls(spec, state_file)

    # ---- state ----------------------------------------------------------------------

    def _initial_state(self) -> dict[str, Any]:
        gpus = []
        gi = 1
        for index, (model, mig, insts) in enumerate(self.spec.gpus):
            instances = []
            for profile, start in insts:
                instances.append({
                    "profile": profile, "start": start, "giId": gi, "ciId": 0,
                    "uuid": self._mig_uuid(), "holders": [],
                })
                gi += 1
            gpus.append({
                "index": index,
                "uuid": f"GPU-{uuid.uuid5(_UUID_NS, f'{self.spec.node}/{index}')}",
                "model": model,
                "migEnabled": mig,
                "instances": instances,
            })
        return {"version": 1, "node": self.spec.node, "gpus": gpus, "nextGiId": gi,
                "health": {}, "operations": 0}

    @staticmethod
    def _mig_uuid() -> str:
        return f"MIG-{uuid.uuid4()}"

    @contextlib.contextmanager
    def _locked(self, write: bool = True) -> Iterator[dict[str, Any]]:
        if self.state_file is None:
            with self._mem_lock:
                yield self._memory
            return
        lock_file = self.state_file.with_name(self.state_file.name + ".lock")
        with lock_file.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                st: dict[str, Any] = json.loads(self.state_file.read_text())
            except FileNotFoundError:
                st = {}
            before = json.dumps(st, sort_keys=True)
            yield st
            if write and json.dumps(st, sort_keys=True) != before:
                fd, tmp = tempfile.mkstemp(dir=self.state_file.parent,
                                           prefix=self.state_file.name + ".")
                with os.fdopen(fd, "w") as f:
                    json.dump(st, f, indent=1, sort_keys=True)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.state_file)

    def _gpu(self, st: dict[str, Any], index: int) -> dict[str, Any]:
        for g in st["gpus"]:
            if g["index"] == index:
                return dict[str, Any](g)
        raise BackendError(ErrorCode.NOT_FOUND, f"no GPU {index}")

    def _gpu_ref(self, st: dict[str, Any], index: int) -> dict[str, Any]:
        for g in st["gpus"]:
            if g["index"] == index:
                ref: dict[str, Any] = g
                return ref
        raise BackendError(ErrorCode.NOT_FOUND, f"no GPU {index}")

    def _mutating(self) -> None:
        if self.spec.op_delay > 0:
            time.sleep(self.spec.op_delay)

    @staticmethod
    def _bump(st: dict[str, Any]) -> None:
        st["operations"] = int(st.get("operations", 0)) + 1

    # ---- inventory ------------------------------------------------------------------

    def gpus(self) -> list[GpuInfo]:
        with self._locked(write=False) as st:
            out = []
            for g in st["gpus"]:
                model = gpu_model(g["model"])
                out.append(GpuInfo(
                    index=g["index"], uuid=g["uuid"], model=model,
                    memory_gib=model.memory_gib, mig_capable=model.mig_capable,
                    mig_enabled=bool(g["migEnabled"]),
                ))
            return out

    def _instance(self, index: int, raw: dict[str, Any]) -> GpuInstance:
        holders = tuple(int(p) for p in raw.get("holders", []) if _pid_alive(int(p)))
        return GpuInstance(
            gpu_index=index, profile=raw["profile"], start=int(raw["start"]),
            gi_id=int(raw["giId"]), uuid=raw.get("uuid"),
            ci_id=None if raw.get("ciId") is None else int(raw["ciId"]),
            in_use=bool(holders), holders=holders,
        )

    def instances(self, index: int) -> list[GpuInstance]:
        with self._locked(write=False) as st:
            g = self._gpu(st, index)
            return sorted((self._instance(index, i) for i in g["instances"]),
                          key=lambda i: i.start)

    def model(self, index: int) -> GpuModel:
        with self._locked(write=False) as st:
            return gpu_model(self._gpu(st, index)["model"])

    def possible_placements(self, index: int, profile: str) -> list[int]:
        with self._locked(write=False) as st:
            model = gpu_model(self._gpu(st, index)["model"])
            return list(model.profile(profile).starts) if model.has_profile(profile) else []

    # ---- MIG operations -------------------------------------------------------------

    def create_gpu_instance(self, index: int, profile: str, start: int) -> GpuInstance:
        self._mutating()
        with self._locked() as st:
            g = self._gpu_ref(st, index)
            model = gpu_model(g["model"])
            if not model.mig_capable:
                raise BackendError(ErrorCode.NOT_SUPPORTED,
                                   f"GPU {index} ({model.name}) has no MIG")
            if not g["migEnabled"]:
                raise BackendError(ErrorCode.NOT_SUPPORTED, f"MIG mode is off on GPU {index}")
            if not model.has_profile(profile):
                raise BackendError(ErrorCode.INVALID_ARGUMENT,
                                   f"profile {profile} does not exist on {model.name}")
            existing = [Placement(model.profile(i["profile"]), int(i["start"]))
                        for i in g["instances"]]
            try:
                check_layout(model, [*existing, Placement(model.profile(profile), start)])
            except MigLayoutError as exc:
                code = (ErrorCode.INVALID_ARGUMENT if exc.fault == LayoutFault.INVALID_PLACEMENT
                        else ErrorCode.INSUFFICIENT_RESOURCES)
                raise BackendError(code, f"GPU {index}: {exc}") from exc
            gi = int(st["nextGiId"])
            st["nextGiId"] = gi + 1
            raw = {"profile": profile, "start": start, "giId": gi, "ciId": None, "uuid": None,
                   "holders": []}
            g["instances"].append(raw)
            g["instances"].sort(key=lambda i: i["start"])
            self._bump(st)
            return self._instance(index, raw)

    def _find(self, g: dict[str, Any], index: int, start: int) -> dict[str, Any]:
        for raw in g["instances"]:
            if int(raw["start"]) == start:
                found: dict[str, Any] = raw
                return found
        raise BackendError(ErrorCode.NOT_FOUND, f"GPU {index} has no GPU instance at {start}")

    def create_compute_instance(self, index: int, start: int) -> GpuInstance:
        self._mutating()
        with self._locked() as st:
            g = self._gpu_ref(st, index)
            raw = self._find(g, index, start)
            if raw.get("ciId") is not None:
                raise BackendError(ErrorCode.INSUFFICIENT_RESOURCES,
                                   f"GPU {index} GI at {start} already has its compute instance")
            raw["ciId"] = 0
            raw["uuid"] = self._mig_uuid()
            self._bump(st)
            return self._instance(index, raw)

    def destroy_compute_instance(self, index: int, start: int) -> None:
        self._mutating()
        with self._locked() as st:
            g = self._gpu_ref(st, index)
            raw = self._find(g, index, start)
            if raw.get("ciId") is None:
                raise BackendError(ErrorCode.NOT_FOUND,
                                   f"GPU {index} GI at {start} has no compute instance")
            alive = [p for p in raw.get("holders", []) if _pid_alive(int(p))]
            if alive:
                raise BackendError(ErrorCode.IN_USE,
                                   f"{raw['uuid']} is used by process(es) {alive}")
            raw["ciId"] = None
            raw["uuid"] = None
            raw["holders"] = []
            self._bump(st)

    def destroy_gpu_instance(self, index: int, start: int) -> None:
        self._mutating()
        with self._locked() as st:
            g = self._gpu_ref(st, index)
            raw = self._find(g, index, start)
            if raw.get("ciId") is not None:
                raise BackendError(ErrorCode.IN_USE,
                                   f"GPU {index} GI at {start} still has a compute instance")
            g["instances"].remove(raw)
            self._bump(st)

    def set_mig_mode(self, index: int, enabled: bool) -> bool:
        self._mutating()
        with self._locked() as st:
            g = self._gpu_ref(st, index)
            model = gpu_model(g["model"])
            if not model.mig_capable:
                raise BackendError(ErrorCode.NOT_SUPPORTED, f"{model.name} has no MIG")
            if bool(g["migEnabled"]) == enabled:
                return True
            if g["instances"]:
                raise BackendError(ErrorCode.IN_USE, f"GPU {index} still has GPU instances")
            alive = [p for p in g.get("holders", []) if _pid_alive(int(p))]
            if alive:
                raise BackendError(ErrorCode.IN_USE, f"GPU {index} is used by {alive}")
            g["migEnabled"] = enabled
            self._bump(st)
            return True

    # ---- simulation controls (what processes and hardware do to real GPUs) -----------

    def claim(self, device_uuid: str, pid: int) -> None:
        """Process ``pid`` starts using the MIG device (or whole GPU) ``device_uuid``."""
        with self._locked() as st:
            for g in st["gpus"]:
                targets = [g] if g["uuid"] == device_uuid else [
                    i for i in g["instances"] if i.get("uuid") == device_uuid]
                for t in targets:
                    if pid not in t.setdefault("holders", []):
                        t["holders"].append(pid)
                    return
        raise BackendError(ErrorCode.NOT_FOUND, f"no device {device_uuid}")

    def release(self, device_uuid: str, pid: int) -> None:
        with self._locked() as st:
            for g in st["gpus"]:
                for t in [g, *g["instances"]]:
                    if t.get("uuid") == device_uuid and pid in t.get("holders", []):
                        t["holders"].remove(pid)

    def inject_xid(self, device_uuid: str, xid: int) -> None:
        """An XID error on a GPU or MIG device (as the driver would report it)."""
        with self._locked() as st:
            st.setdefault("health", {})[device_uuid] = {"xid": xid}

    def clear_health(self, device_uuid: str) -> None:
        with self._locked() as st:
            st.setdefault("health", {}).pop(device_uuid, None)

    def operations(self) -> int:
        """MIG operations performed so far (on this state file, by any process)."""
        with self._locked(write=False) as st:
            return int(st.get("operations", 0))

    def poll_health(self, timeout: float) -> list[HealthEvent]:
        with self._locked(write=False) as st:
            now: dict[str, tuple[bool, str, int | None]] = {}
            for dev, h in (st.get("health") or {}).items():
                xid = int(h["xid"])
                if xid in APPLICATION_XIDS:
                    continue
                now[dev] = (False, f"XID {xid}", xid)
        events = [HealthEvent(uuid=d, healthy=False, reason=r, xid=x)
                  for d, (_, r, x) in now.items() if self._last_health.get(d) != now[d]]
        events += [HealthEvent(uuid=d, healthy=True, reason="recovered")
                   for d in self._last_health if d not in now]
        self._last_health = now
        if not events and timeout > 0:
            time.sleep(min(timeout, 0.2))
        return events


__all__ = ["DpuSpec", "NodeSpec", "SimulatedBackend", "SpecError"]
