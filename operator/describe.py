"""How the planner names replicas, reservations and moves in Events, and the slot keys it
compares statuses with: pure text and tuples."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from conspirator.api.v1alpha1 import ReplicaStatus
from conspirator.operator.views import Replica


def where(r: Replica) -> str:
    return f"{r.profile}@{r.start} on {r.node}/GPU {r.gpu_index}"


def profile_counts(reps: Iterable[Replica]) -> str:
    """``2x1g.10gb,1x3g.40gb``: most frequent first."""
    counts: Counter[str] = Counter(r.profile for r in reps)
    return ",".join(f"{n}x{p}" for p, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def move_text(old: list[Replica], new: list[Replica], n: int, note: str) -> str:
    """A re-plan's move of a job: which instances go, which come, and the re-plan's note."""
    gone = [r for r in old if r.slot not in {x.slot for x in new}]
    came = [r for r in new if r.slot not in {x.slot for x in old}]

    def fmt(rs: list[Replica]) -> str:
        return ", ".join(where(r) for r in rs) or "-"
    return f"global re-plan moves {n} replica(s): {fmt(gone)} -> {fmt(came)} ({note})"


def status_slot(rs: ReplicaStatus) -> tuple[str, str, str, int]:
    return (rs.node, rs.gpu_uuid or "", rs.mig_profile, rs.start_slice or 0)


def replica_slot(r: Replica) -> tuple[str, str, str, int]:
    return (r.node, r.gpu_uuid, r.profile, r.start)
