"""The job table the dispatcher's fast path reads: ``JobState.single`` and ``slot_max``."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from conspirator.dpu_agent.core import AgentConfig, AgentCore
from conspirator.dpu_agent.state import JobState


def replica(buffer_id: int, slot_bytes: int) -> Any:
    return SimpleNamespace(buffer_id=buffer_id, geometry=SimpleNamespace(slot_bytes=slot_bytes))


def test_single_follows_the_replicas() -> None:
    job = JobState("j")
    assert job.single is None
    a, b = replica(1, 4096), replica(2, 8192)
    job.add(a)
    assert job.single is a and job.slot_max == 4096
    job.add(b)
    assert job.single is None and job.slot_max == 8192
    job.remove(1)
    assert job.single is b and job.slot_max == 8192
    job.remove(2)
    assert job.single is None and job.slot_max == 0


def test_shutdown_leaves_no_replica_for_the_fast_path() -> None:
    core = AgentCore(AgentConfig())
    job = core.job("j")
    job.add(replica(1, 4096))
    core.shutdown()
    assert job.single is None and not job.replicas and job.slot_max == 0
