"""Fixtures of the end-to-end tests: a session-scoped real cluster and a namespace per test.

The cluster is the one ``e2e/cluster.sh up`` starts (etcd, kube-apiserver, scheduler,
controller-manager, a kubelet + containerd node, kwok GPU nodes).  If it is already up it is
reused and left running; if this session starts it, it stops it at the end unless
``CONSPIRATOR_E2E_KEEP=1``.  Run serially (no xdist): one cluster per machine.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# e2e/ (never the repository root, whose operator/ directory shadows the standard library)
E2E_DIR = Path(__file__).resolve().parents[1]
if str(E2E_DIR) not in sys.path:
    sys.path.insert(0, str(E2E_DIR))

from conspirator_e2e.cluster import LocalCluster  # noqa: E402

kubernetes = pytest.importorskip("kubernetes", reason="pip install kubernetes (the e2e extra)")
from kubernetes import client, config  # noqa: E402


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    if os.geteuid() != 0:
        pytest.skip("the e2e cluster needs root (kubelet, containerd, mounts, cgroups)")
    c = LocalCluster()
    # One e2e session at a time on this machine: a second one waits here rather than
    # sharing a cluster the first may stop under it.
    lock_path = Path(str(c.paths.state) + ".lock")
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        started = False
        if c.is_up():
            running = c.read_info().get("versions")
            if running != c.paths.versions:
                pytest.exit(f"a local cluster of other versions is up ({running}); these tests "
                            f"want {c.paths.versions}: run `e2e/cluster.sh down` first", 2)
        else:
            c.up(build=os.environ.get("CONSPIRATOR_E2E_BUILD", "1") != "0")
            started = True
        try:
            yield c
        finally:
            if started and os.environ.get("CONSPIRATOR_E2E_KEEP") != "1":
                c.down()


@pytest.fixture(scope="session")
def api(cluster: LocalCluster) -> client.ApiClient:
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(cluster.paths.kubeconfig))
    return api


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def cluster_info(cluster: LocalCluster) -> dict[str, Any]:
    return cluster.read_info()


def _ns_name(nodeid: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", nodeid.rsplit("::", maxsplit=1)[-1].lower()).strip("-")[:40]
    return f"e2e-{base}-{uuid.uuid4().hex[:6]}".replace("--", "-")


@pytest.fixture
def namespace(request: pytest.FixtureRequest, core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace, ready for pods (its default service account exists); deleted after."""
    name = _ns_name(request.node.nodeid)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(
        name=name, labels={"conspirator.io/e2e": "true"})))
    deadline = time.monotonic() + 60
    while True:
        try:
            core.read_namespaced_service_account("default", name)
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield name
    try:
        core.delete_namespace(name, body=client.V1DeleteOptions(grace_period_seconds=0))
    except client.ApiException as e:
        if e.status != 404:
            raise
