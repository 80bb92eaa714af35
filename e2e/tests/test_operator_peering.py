"""Several operator replicas with kopf peering: one is active, the other waits; when the
active one dies (SIGKILL, no goodbye), the standby takes over after the peering lifetime.
Cluster-wide (a ClusterKopfPeering) and namespace-scoped (``--namespace``: a KopfPeering in
the served namespace, created by the operator)."""

from __future__ import annotations

import time

import pytest
from conspirator_e2e.fakenode import FakeNodeDaemon
from conspirator_e2e.operator_fixtures import (  # noqa: F401  (pytest fixtures)
    OperatorFactory,
    fake_nodes,
    operator_crds,
    operators,
)
from conspirator_e2e.operator_testing import create, get, inference_job
from conspirator_e2e.testing import wait_until
from kubernetes import client

PEERING = "e2e-peering"
LIFETIME = 6


def running(api: client.ApiClient, ns: str, name: str) -> bool:
    return (get(api, ns, name).get("status") or {}).get("phase") == "Running"


@pytest.mark.parametrize("scope", ["cluster", "namespaced"])
def test_one_replica_active_and_a_standby_takes_over(
        api: client.ApiClient, namespace: str, operators: OperatorFactory,  # noqa: F811
        fake_nodes: FakeNodeDaemon, scope: str) -> None:  # noqa: F811
    args: tuple[str, ...] = ("--peering", PEERING, "--peering-lifetime", str(LIFETIME),
                             "--replan-interval", "0")
    if scope == "namespaced":
        args += ("--namespace", namespace)
    first = operators(*args).start()
    first.wait_healthy()
    time.sleep(2)  # first announces itself in the peering object
    second = operators(*args).start()
    second.wait_healthy()
    try:
        # kopf starts every replica paused; only the one no live peer outranks resumes.
        assert "Resuming operations" in first.log_text()
        if scope == "namespaced":  # the operator made the namespace's KopfPeering
            client.CustomObjectsApi(api).get_namespaced_custom_object(
                "kopf.dev", "v1", namespace, "kopfpeerings", PEERING)
        create(api, namespace, inference_job("while-first", 500))
        wait_until("while-first to run", lambda: running(api, namespace, "while-first"), 90)
        assert "synced:" in first.log_text()
        assert "synced:" not in second.log_text(), "the standby acted"
        assert "Resuming operations" not in second.log_text()

        first.kill()
        create(api, namespace, inference_job("after-first", 500))
        wait_until("after-first to run", lambda: running(api, namespace, "after-first"),
                   LIFETIME + 90)
        assert "Resuming operations" in second.log_text()
        assert "synced:" in second.log_text()
        assert running(api, namespace, "while-first")
    finally:
        co = client.CustomObjectsApi(api)
        try:
            if scope == "namespaced":
                co.delete_namespaced_custom_object("kopf.dev", "v1", namespace,
                                                   "kopfpeerings", PEERING)
            else:
                co.delete_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings",
                                                PEERING)
        except client.ApiException as e:
            if e.status != 404:
                raise
