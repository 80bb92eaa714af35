"""The one interface every MIG-track placement policy implements.

``place`` is the incremental entry point: it places the arriving ``jobs`` into
``state`` without moving anything already there.  ``replan`` is the global one: it
plans every job already in ``state`` plus ``jobs`` (a job passed again replaces its
old definition) and may move at most ``migration_budget`` existing replicas
(``None``: no limit).
Both mutate ``state`` into the chosen plan and return the :class:`Decision`
describing it; departures are ``state.release(job_id)``.

Every job passed in ends up either with replicas covering its demand or in
``Decision.unplaced`` with a reason: never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.decision import Decision
from conspirator.operator.placement.jobs import Job
from conspirator.operator.placement.throughput import ThroughputTable


class PlacementPolicy(Protocol):
    name: str

    def place(self, state: ClusterState, jobs: Sequence[Job],
              table: ThroughputTable) -> Decision: ...

    def replan(self, state: ClusterState, jobs: Sequence[Job], table: ThroughputTable,
               migration_budget: int | None = None) -> Decision: ...
