"""ResourceClaims as the driver reads them: the :class:`ClaimReader` interface and the
allocation results of this driver in a claim (``status.allocation.devices.results``).

The kubelet's NodePrepareResources names a claim only (namespace, name, UID); what was
allocated is in the claim's status on the API server, so the driver reads the claim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from conspirator.deviceplugin.dra.slices import DRIVER


@dataclass(frozen=True, slots=True)
class ClaimRef:
    """A claim as the kubelet names it."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} ({self.uid})"


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One ``status.allocation.devices.results[]`` entry."""

    request: str
    driver: str
    pool: str
    device: str
    share_id: str | None = None


class ClaimReader(Protocol):
    """Reads ResourceClaims (resource.k8s.io/v1) from the API server."""

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The claim as a dict, or None when there is no such claim."""
        ...


class ClaimError(ValueError):
    """A claim this driver cannot prepare (the message goes into the kubelet's reply)."""


def allocated_devices(claim: Mapping[str, Any], ref: ClaimRef, driver: str = DRIVER
                      ) -> list[AllocatedDevice]:
    """This driver's allocation results in ``claim``, checked to be the claim ``ref``
    names (same UID) and allocated."""
    uid = claim.get("metadata", {}).get("uid")
    if uid != ref.uid:
        raise ClaimError(f"claim {ref.namespace}/{ref.name} has UID {uid}, not {ref.uid} "
                         f"(deleted and created again?)")
    allocation = (claim.get("status") or {}).get("allocation")
    if not allocation:
        raise ClaimError(f"claim {ref} is not allocated")
    out = []
    for r in (allocation.get("devices") or {}).get("results") or []:
        if r.get("driver") != driver:
            continue
        out.append(AllocatedDevice(request=str(r.get("request", "")), driver=driver,
                                   pool=str(r.get("pool", "")), device=str(r.get("device", "")),
                                   share_id=r.get("shareID")))
    return out


def consumer_pods(claim: Mapping[str, Any]) -> tuple[str, ...]:
    """UIDs of the pods ``status.reservedFor`` names (the scheduler reserves the claim for
    its pod before binding, so they are there when the kubelet prepares it)."""
    return tuple(sorted(str(r["uid"]) for r in (claim.get("status") or {}).get(
        "reservedFor") or [] if r.get("resource") == "pods" and r.get("uid")))


__all__ = ["AllocatedDevice", "ClaimError", "ClaimReader", "ClaimRef", "allocated_devices",
           "consumer_pods"]
