"""Polling helpers for the e2e tests (needs the kubernetes client)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from kubernetes import client

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], T | None], timeout: float = 120,
               interval: float = 0.5) -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def pod_phase_in(core: client.CoreV1Api, ns: str, name: str,
                 phases: set[str]) -> Callable[[], client.V1Pod | None]:
    def probe() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, ns)
        return pod if pod.status is not None and pod.status.phase in phases else None

    return probe


def scheduled_condition(pod: client.V1Pod) -> client.V1PodCondition | None:
    for cond in (pod.status.conditions if pod.status else None) or []:
        if cond.type == "PodScheduled":
            return cond
    return None


def as_dict(obj: Any) -> dict[str, Any]:
    """A kubernetes client model as a plain dict (snake_case keys), for terse, typed access."""
    return cast(dict[str, Any], obj.to_dict())
