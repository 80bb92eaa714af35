"""Publishing a node's ResourceSlices: the diff against what the API server holds, and the
publisher that applies it through a :class:`SliceClient`.

The pool's generation is the publisher's: when anything in the pool changes, every slice
is written again with the next generation (the API's rule: consumers consider only the
slices of a pool's highest generation, and ``resourceSliceCount`` of them make it
complete).  An unchanged pool is not written at all, so a periodic :meth:`publish` costs
one list.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from conspirator.deviceplugin.dra.slices import DRIVER

log = logging.getLogger(__name__)


class SliceClient(Protocol):
    """The ResourceSlices of one node and driver on the API server (resource.k8s.io/v1)."""

    def list(self) -> list[dict[str, Any]]:
        """This node's slices of driver ``conspirator.io``, with their metadata."""
        ...

    def create(self, body: dict[str, Any]) -> None: ...

    def replace(self, body: dict[str, Any]) -> None:
        """Replace the slice ``body['metadata']['name']`` (its resourceVersion set)."""
        ...

    def delete(self, name: str) -> None: ...


@dataclass
class SliceDiff:
    """What turns the existing slices into the desired ones."""

    create: list[dict[str, Any]] = field(default_factory=list)
    update: list[dict[str, Any]] = field(default_factory=list)
    delete: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)


def _content(obj: Mapping[str, Any]) -> tuple[Any, Any]:
    """What a slice says, the pool's generation aside (labels and spec)."""
    spec = copy.deepcopy(dict(obj.get("spec", {})))
    pool = dict(spec.get("pool", {}))
    pool.pop("generation", None)
    spec["pool"] = pool
    return (obj.get("metadata", {}).get("labels", {}), spec)


def pool_generation(existing: Sequence[Mapping[str, Any]]) -> int:
    """The highest generation among the existing slices (0 when none)."""
    return max((int(s["spec"]["pool"].get("generation", 0)) for s in existing), default=0)


def diff_slices(desired: Sequence[Mapping[str, Any]], existing: Sequence[Mapping[str, Any]]
                ) -> SliceDiff:
    """Creations, updates (carrying the existing resourceVersion) and deletions, by name.

    The pool generation is compared like everything else: give ``desired`` the generation
    it should have (:meth:`SlicePublisher.publish` does).
    """
    have = {s["metadata"]["name"]: s for s in existing}
    out = SliceDiff()
    for s in desired:
        name = s["metadata"]["name"]
        cur = have.get(name)
        if cur is None:
            out.create.append(copy.deepcopy(dict(s)))
        elif _content(cur) != _content(s) or (
                cur["spec"]["pool"].get("generation") != s["spec"]["pool"].get("generation")):
            body = copy.deepcopy(dict(s))
            rv = cur["metadata"].get("resourceVersion")
            if rv is not None:
                body["metadata"]["resourceVersion"] = rv
            out.update.append(body)
    wanted = {s["metadata"]["name"] for s in desired}
    out.delete = sorted(n for n in have if n not in wanted)
    return out


def with_generation(slices: Sequence[Mapping[str, Any]], generation: int
                    ) -> list[dict[str, Any]]:
    out = copy.deepcopy([dict(s) for s in slices])
    for s in out:
        s["spec"]["pool"]["generation"] = generation
    return out


class SlicePublisher:
    """Keeps one node's pool on the API server equal to the slices it is given."""

    def __init__(self, client: SliceClient) -> None:
        self.client = client
        self.generation: int | None = None
        """The pool generation last published (None before the first publish)."""

    def publish(self, slices: Sequence[Mapping[str, Any]]) -> SliceDiff:
        """Make the pool ``slices`` (from :func:`~.slices.build_slices`; their generation
        is replaced).  Writes nothing when the content is unchanged; otherwise creates,
        updates and deletes, every slice at the next generation, creations and updates
        before deletions.  Returns what it did."""
        existing = [s for s in self.client.list()
                    if s.get("spec", {}).get("driver") == DRIVER]
        gen = pool_generation(existing)
        same = {s["metadata"]["name"]: _content(s) for s in existing} == {
            s["metadata"]["name"]: _content(s) for s in slices}
        gens = {int(s["spec"]["pool"].get("generation", 0)) for s in existing}
        if same and len(gens) <= 1:
            self.generation = gen
            return SliceDiff()
        diff = diff_slices(with_generation(slices, gen + 1), existing)
        for body in diff.create:
            self.client.create(body)
        for body in diff.update:
            self.client.replace(body)
        for name in diff.delete:
            self.client.delete(name)
        self.generation = gen + 1
        log.info("published pool generation %d: %d created, %d updated, %d deleted",
                 gen + 1, len(diff.create), len(diff.update), len(diff.delete))
        return diff

    def withdraw(self) -> list[str]:
        """Delete every slice of the node (the driver stops serving); their names."""
        names = sorted(s["metadata"]["name"] for s in self.client.list()
                       if s.get("spec", {}).get("driver") == DRIVER)
        for name in names:
            self.client.delete(name)
        return names


__all__ = [
    "SliceClient",
    "SliceDiff",
    "SlicePublisher",
    "diff_slices",
    "pool_generation",
    "with_generation",
]
