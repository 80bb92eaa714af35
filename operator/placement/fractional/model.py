"""Nodes, pods and the mutable cluster of the fractional-sharing (FGD) track.

A GPU is shared in milli-GPU: 1000 is a whole GPU.  A pod asks for
``num_gpu`` GPUs with ``gpu_milli`` each; only a one-GPU pod may ask for part
of a GPU (``gpu_milli < 1000``, a *sharing* pod).  Several sharing pods may
share one GPU as long as their milli-GPU sum stays within 1000.

:class:`FractionalCluster` is the engine's working state.  It keeps, per node,
the free CPU, the free memory and the free milli-GPU of every physical GPU (in
device-index order), and it groups nodes whose free resources are identical
(same model, CPU, memory and multiset of free GPU shares) so that a policy can
evaluate each distinct state once instead of once per node.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

MILLI = 1000
"""Milli-GPU in one whole GPU."""

KNOWN_GPU_MODELS: frozenset[str] = frozenset(
    {
        # models in the Alibaba GPU trace v2023 (G1-G3 are undisclosed codes)
        "G1", "G2", "G3", "T4", "P100", "V100M16", "V100M32", "A10",
        # further models the FGD simulator knows (MapGpuTypeMemoryMiB)
        "P4", "2080", "1080", "M40", "3090", "A100",
        # current data-centre GPUs
        "A30", "L4", "L40S", "H100", "H200",
    }
)  # fmt: skip
"""GPU models a trace may name; anything else is rejected as a typo."""

GpuState = tuple[int, ...]
"""Free milli-GPU of a node's GPUs, sorted in decreasing order (the canonical form)."""


class PlacementError(ValueError):
    """A placement that would break a capacity constraint."""


# --------------------------------------------------------------------------- pod classes

PodShape = tuple[int, int, int, frozenset[str] | None]
"""(cpu_milli, num_gpu, gpu_milli, gpu_spec): a pod's resource shape without memory."""

_CLASS_IDS: dict[PodShape, int] = {}


def _intern_class(key: PodShape) -> int:
    cid = _CLASS_IDS.get(key)
    if cid is None:
        cid = len(_CLASS_IDS)
        _CLASS_IDS[key] = cid
    return cid


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A node of the trace: its capacity and GPU model (``None``: no GPU)."""

    name: str
    cpu_milli: int
    memory_mib: int
    gpu_count: int
    model: str | None

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.gpu_count < 0:
            raise ValueError(f"node {self.name}: negative capacity")
        if (self.gpu_count > 0) != (self.model is not None):
            raise ValueError(f"node {self.name}: a GPU model goes with gpu_count > 0 only")


@dataclass(frozen=True, slots=True)
class PodSpec:
    """A pod (task) of the trace.

    ``gpu_spec`` is the set of GPU models the pod accepts; ``None`` accepts any.
    ``class_id`` identifies the resource shape without memory and name (the
    key of FGD's target workload), interned process-wide for fast memo keys.
    """

    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int
    gpu_spec: frozenset[str] | None = None
    class_id: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.cpu_milli < 0 or self.memory_mib < 0 or self.num_gpu < 0:
            raise ValueError(f"pod {self.name}: negative request")
        if self.num_gpu == 0:
            if self.gpu_milli != 0:
                raise ValueError(f"pod {self.name}: gpu_milli must be 0 without GPUs")
        elif not 0 < self.gpu_milli <= MILLI:
            raise ValueError(f"pod {self.name}: gpu_milli must be in 1..{MILLI}")
        elif self.num_gpu > 1 and self.gpu_milli != MILLI:
            raise ValueError(f"pod {self.name}: only one-GPU pods may share a GPU")
        if self.gpu_spec is not None and not self.gpu_spec:
            raise ValueError(f"pod {self.name}: empty gpu_spec (use None for any model)")
        object.__setattr__(self, "class_id", _intern_class(self.shape))

    @property
    def shape(self) -> PodShape:
        """The memory-free resource key (FGD's task type)."""
        return (self.cpu_milli, self.num_gpu, self.gpu_milli, self.gpu_spec)

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def is_sharing(self) -> bool:
        """A one-GPU pod asking for part of a GPU."""
        return self.num_gpu == 1 and self.gpu_milli < MILLI

    def __reduce__(self) -> tuple[type[PodSpec], tuple[object, ...]]:
        # rebuild through the constructor so that class_id is interned in the
        # receiving process (ids are process-local)
        return (
            PodSpec,
            (
                self.name,
                self.cpu_milli,
                self.memory_mib,
                self.num_gpu,
                self.gpu_milli,
                self.gpu_spec,
            ),
        )

    def renamed(self, name: str) -> PodSpec:
        return PodSpec(
            name, self.cpu_milli, self.memory_mib, self.num_gpu, self.gpu_milli, self.gpu_spec
        )

    @property
    def affinity_tag(self) -> str | None:
        """FGD's GPU-affinity tag: ``share-gpu``, ``<n>-gpu``, or ``None`` without GPUs."""
        if self.num_gpu == 0:
            return None
        return "share-gpu" if self.is_sharing else f"{self.num_gpu}-gpu"

    def accepts(self, model: str | None) -> bool:
        """Whether a node of GPU ``model`` may host the pod (model constraint only)."""
        if self.num_gpu == 0:
            return True
        if model is None:
            return False
        return self.gpu_spec is None or model in self.gpu_spec


def gpus_fit(gpus: GpuState, num_gpu: int, gpu_milli: int) -> bool:
    """Whether ``num_gpu`` GPUs of ``gpus`` (canonical, decreasing) have ``gpu_milli`` free."""
    return num_gpu == 0 or (len(gpus) >= num_gpu and gpus[num_gpu - 1] >= gpu_milli)


def gpu_moves(gpus: GpuState, num_gpu: int, gpu_milli: int) -> list[tuple[GpuState, int]]:
    """Distinct ways to take a pod's GPU share from ``gpus``, tightest first.

    Each move is ``(gpus after, free milli-GPU of the GPU used before)``; the second
    item is 0 for a pod without GPUs.  A sharing pod may use any GPU with enough
    free share (GPUs with the same free share are interchangeable); a whole-GPU
    pod takes fully free GPUs.
    """
    if num_gpu == 0:
        return [(gpus, 0)]
    if not gpus_fit(gpus, num_gpu, gpu_milli):
        return []
    if gpu_milli == MILLI:
        return [(gpus[num_gpu:] + (0,) * num_gpu, MILLI)]
    moves: list[tuple[GpuState, int]] = []
    seen = -1
    # walk from the tightest usable GPU to the freest one
    for pos in range(len(gpus) - 1, -1, -1):
        free = gpus[pos]
        if free < gpu_milli or free == seen:
            continue
        seen = free
        after = list(gpus)
        after[pos] = free - gpu_milli
        after.sort(reverse=True)
        moves.append((tuple(after), free))
    return moves


# --------------------------------------------------------------------------- cluster


@dataclass(frozen=True, slots=True)
class Choice:
    """Where a policy puts a pod: a node index and the GPU indices on it (empty: none)."""

    node: int
    gpus: tuple[int, ...] = ()


@dataclass(slots=True)
class Group:
    """The nodes sharing one free-resource state.

    ``memo`` is scratch space for policies: whatever they derive from the state
    alone (a score for a pod class, say) stays valid as long as the group lives.
    """

    model: str | None
    cpu_left: int
    mem_left: int
    gpus: GpuState
    members: dict[int, None] = field(default_factory=dict)
    memo: dict[object, object] = field(default_factory=dict)
    first: int = -1
    """The member that comes first in the cluster's node order (-1: none)."""

    def add(self, node: int) -> None:
        self.members[node] = None
        if self.first < 0 or node < self.first:
            self.first = node

    def remove(self, node: int) -> None:
        del self.members[node]
        if node == self.first:
            self.first = min(self.members) if self.members else -1

    @property
    def gpu_left(self) -> int:
        return sum(self.gpus)

    @property
    def size(self) -> int:
        return len(self.members)


class FractionalCluster:
    """Free resources of every node, grouped by identical state.

    Only :meth:`place` changes the state; it checks every capacity constraint
    and raises :class:`PlacementError` instead of over-allocating.
    """

    def __init__(self, nodes: Sequence[NodeSpec]) -> None:
        self.nodes: tuple[NodeSpec, ...] = tuple(nodes)
        self.cpu_left: list[int] = [n.cpu_milli for n in self.nodes]
        self.mem_left: list[int] = [n.memory_mib for n in self.nodes]
        self.gpu_left: list[list[int]] = [[MILLI] * n.gpu_count for n in self.nodes]
        self.total_gpu_milli: int = MILLI * sum(n.gpu_count for n in self.nodes)
        self.used_gpu_milli: int = 0
        self.affinity: list[dict[str, int]] = [{} for _ in self.nodes]
        """Per node: how many placed pods carry each GPU-affinity tag."""
        self.groups: dict[tuple[str | None, int, int, GpuState], Group] = {}
        self._group_of: list[Group] = []
        for i in range(len(self.nodes)):
            group = self._group_for(i)
            group.add(i)
            self._group_of.append(group)

    # -- views -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.nodes)

    def gpu_state(self, node: int) -> GpuState:
        """Canonical (decreasing) free milli-GPU of ``node``'s GPUs."""
        return tuple(sorted(self.gpu_left[node], reverse=True))

    def group_of(self, node: int) -> Group:
        return self._group_of[node]

    def iter_groups(self) -> Iterator[Group]:
        return iter(self.groups.values())

    @property
    def free_gpu_milli(self) -> int:
        return self.total_gpu_milli - self.used_gpu_milli

    def fits(self, node: int, pod: PodSpec) -> bool:
        """Whether ``pod`` fits on ``node`` now (model, CPU, memory and GPU shares)."""
        spec = self.nodes[node]
        return (
            pod.accepts(spec.model)
            and self.cpu_left[node] >= pod.cpu_milli
            and self.mem_left[node] >= pod.memory_mib
            and gpus_fit(self._group_of[node].gpus, pod.num_gpu, pod.gpu_milli)
        )

    def gpu_indices(self, node: int, pod: PodSpec, free_before: int) -> tuple[int, ...]:
        """Physical GPU indices for a move chosen on the canonical state.

        ``free_before`` is the free share of the GPU a sharing pod goes to (see
        :func:`gpu_moves`); whole-GPU pods take the lowest-index free GPUs.
        """
        if pod.num_gpu == 0:
            return ()
        left = self.gpu_left[node]
        if pod.gpu_milli == MILLI:
            free = [i for i, v in enumerate(left) if v == MILLI]
            return tuple(free[: pod.num_gpu])
        for i, v in enumerate(left):
            if v == free_before:
                return (i,)
        raise PlacementError(f"node {self.nodes[node].name} has no GPU with {free_before} free")

    def choice_for(self, node: int, pod: PodSpec, free_before: int) -> Choice:
        return Choice(node, self.gpu_indices(node, pod, free_before))

    # -- mutation ----------------------------------------------------------------------

    def place(self, pod: PodSpec, choice: Choice) -> None:
        """Allocate ``pod`` as ``choice`` says, or raise :class:`PlacementError`."""
        i = choice.node
        if not 0 <= i < len(self.nodes):
            raise PlacementError(f"pod {pod.name}: no node with index {i}")
        spec = self.nodes[i]
        if not pod.accepts(spec.model):
            raise PlacementError(f"pod {pod.name}: node {spec.name} has GPU model {spec.model}")
        if self.cpu_left[i] < pod.cpu_milli or self.mem_left[i] < pod.memory_mib:
            raise PlacementError(f"pod {pod.name}: not enough CPU or memory on {spec.name}")
        if len(choice.gpus) != pod.num_gpu or len(set(choice.gpus)) != pod.num_gpu:
            raise PlacementError(f"pod {pod.name}: needs {pod.num_gpu} distinct GPU(s)")
        left = self.gpu_left[i]
        for g in choice.gpus:
            if not 0 <= g < len(left) or left[g] < pod.gpu_milli:
                raise PlacementError(f"pod {pod.name}: GPU {g} of {spec.name} lacks share")
        self._leave_group(i)
        self.cpu_left[i] -= pod.cpu_milli
        self.mem_left[i] -= pod.memory_mib
        for g in choice.gpus:
            left[g] -= pod.gpu_milli
        self.used_gpu_milli += pod.total_gpu_milli
        tag = pod.affinity_tag
        if tag is not None:
            self.affinity[i][tag] = self.affinity[i].get(tag, 0) + 1
        group = self._group_for(i)
        group.add(i)
        self._group_of[i] = group

    def _group_for(self, i: int) -> Group:
        model = self.nodes[i].model
        gpus = tuple(sorted(self.gpu_left[i], reverse=True))
        key = (model, self.cpu_left[i], self.mem_left[i], gpus)
        group = self.groups.get(key)
        if group is None:
            group = Group(model, key[1], key[2], gpus)
            self.groups[key] = group
        return group

    def _leave_group(self, i: int) -> None:
        group = self._group_of[i]
        group.remove(i)
        if not group.members:
            del self.groups[(group.model, group.cpu_left, group.mem_left, group.gpus)]


def total_gpus(nodes: Iterable[NodeSpec]) -> int:
    return sum(n.gpu_count for n in nodes)
