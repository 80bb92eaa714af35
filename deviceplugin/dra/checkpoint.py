"""The driver's prepared claims, in a JSON file written atomically (temporary file, fsync,
rename), so that a daemon restarted between NodePrepareResources and
NodeUnprepareResources answers both as before: Unprepare gets only a claim's identity, and
the kubelet may ask to prepare a claim again after the driver restarted."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

VERSION = 1


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One device of a prepared claim."""

    request: str
    pool: str
    device: str
    """The DRA device name (``gpu-0-mig-1g-10gb-3``)."""
    gpu_index: int
    gpu_uuid: str
    profile: str
    start: int
    uuid: str
    """The MIG device UUID (``MIG-...``), or the GPU's UUID for a whole GPU."""
    cdi_id: str
    """``conspirator.io/mig=<claim uid>-<device>``."""
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...]
    cdi_spec: str
    """Path of the claim's CDI spec file."""
    consumers: tuple[str, ...] = ()
    """UIDs of the pods the claim was reserved for when prepared (``status.reservedFor``):
    whose buffer registrations carry these devices."""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["devices"] = [asdict(x) for x in self.devices]
        d["consumers"] = list(self.consumers)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PreparedClaim:
        return cls(uid=d["uid"], namespace=d["namespace"], name=d["name"],
                   devices=tuple(PreparedDevice(**x) for x in d["devices"]),
                   cdi_spec=d["cdi_spec"], consumers=tuple(d.get("consumers") or ()))


class CheckpointError(RuntimeError):
    pass


class Checkpoint:
    """Prepared claims by UID, kept in ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.claims: dict[str, PreparedClaim] = self._load()

    def _load(self) -> dict[str, PreparedClaim]:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: {exc}") from exc
        if doc.get("version") != VERSION:
            raise CheckpointError(f"{self.path}: version {doc.get('version')}, want {VERSION}")
        try:
            return {uid: PreparedClaim.from_json(c) for uid, c in doc["claims"].items()}
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"{self.path}: {exc!r}") from exc

    def save(self) -> None:
        doc = {"version": VERSION,
               "claims": {uid: c.to_json() for uid, c in sorted(self.claims.items())}}
        write_atomic(self.path, json.dumps(doc, indent=1, sort_keys=True) + "\n")

    def put(self, claim: PreparedClaim) -> None:
        self.claims[claim.uid] = claim
        self.save()

    def remove(self, uid: str) -> PreparedClaim | None:
        gone = self.claims.pop(uid, None)
        if gone is not None:
            self.save()
        return gone


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old file or the new one: a
    temporary file in the same directory (a dot name without the final suffix, which CDI
    scanners skip), fsync, rename, fsync of the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


__all__ = ["Checkpoint", "CheckpointError", "PreparedClaim", "PreparedDevice", "write_atomic"]
