"""Which extended resource each device is advertised under (device-plugin mode).  Pure.

The kubelet hands a container *any* free device of the resource it requests, in whatever
order it admits pods.  So the plan's reservations are made part of the resource name:

* an instance the GPUNode spec reserves for a job (``reservedFor: namespace/name``) is
  advertised only under that job's resource, ``conspirator.io/mig-<profile>-r<tag>``
  (:func:`conspirator.mig.reserved_resource_name`), which only that job's workers request;
  a whole GPU reserved for a job likewise under ``conspirator.io/mig-whole-r<tag>``;
* a free instance on a GPU that holds a reservation is offered to nobody: it is the plan's
  spare room, and handing it to an arbitrary pod would put a second tenant on a GPU
  that may be dedicated to one;
* on a GPU without reservations (a layout written by hand, a node the operator does not
  manage) every instance is advertised under its profile's shared resource,
  ``conspirator.io/mig-<profile>``, as before.

The guarantee is the kubelet's own accounting: a pod can only get devices of the resource
it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from conspirator.api.v1alpha1 import GPUNodeSpec
from conspirator.mig import WHOLE, reserved_resource_name, resource_name


@dataclass(frozen=True, slots=True)
class Reservations:
    """The reservations of one GPUNode spec, by GPU."""

    instances: dict[tuple[int, str, int], str] = field(default_factory=dict)
    """(GPU index, profile, start) -> owner."""
    whole: dict[int, str] = field(default_factory=dict)
    """GPU index -> owner of the whole GPU."""

    @classmethod
    def of(cls, spec: GPUNodeSpec | None) -> Reservations:
        if spec is None:
            return cls()
        return cls(
            instances={(g.index, i.profile, i.start): i.reserved_for
                       for g in spec.gpus for i in g.instances if i.reserved_for},
            whole={g.index: g.reserved_for for g in spec.gpus if g.reserved_for})

    def gpu_reserved(self, gpu_index: int) -> bool:
        """Some device of the GPU is reserved for a job."""
        return gpu_index in self.whole or any(k[0] == gpu_index for k in self.instances)

    def instance_resource(self, gpu_index: int, profile: str, start: int) -> str | None:
        """The resource of a MIG instance, or ``None``: advertised to nobody."""
        owner = self.instances.get((gpu_index, profile, start))
        if owner is not None:
            return reserved_resource_name(profile, owner)
        return None if self.gpu_reserved(gpu_index) else resource_name(profile)

    def whole_resource(self, gpu_index: int) -> str:
        """The resource of a GPU used whole."""
        owner = self.whole.get(gpu_index)
        return resource_name(WHOLE) if owner is None else reserved_resource_name(WHOLE, owner)


__all__ = ["Reservations"]
