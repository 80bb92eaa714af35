"""pytest fixtures of the operator's e2e tests (imported by ``e2e/tests/test_operator*.py``).

* ``operator_crds``: the project's CRDs and kopf's peering CRD, applied;
* ``fake_nodes``: a GPUNode per kwok node, driven by :class:`FakeNodeDaemon` (the
  stand-in for the node daemon), removed afterwards with the Nodes' capacity restored;
* ``resnet_profile``: the example ModelProfile ``resnet50``, deleted afterwards unless it
  was there before (it is cluster-scoped; ``test_crds`` creates it and expects it absent);
* ``operators``: a factory of :class:`OperatorProcess`; on teardown, every InferenceJob of
  the e2e namespaces is deleted while an operator runs (their finalizer needs one), then
  the operators stop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from conspirator_e2e.cluster import REPO, ClusterSpec, LocalCluster
from conspirator_e2e.fakenode import FakeNodeDaemon
from conspirator_e2e.operator_testing import EXAMPLES, OperatorProcess, delete_all_jobs, jobs
from conspirator_e2e.testing import wait_until

OperatorFactory = Callable[..., OperatorProcess]


def e2e_namespaces(core: client.CoreV1Api) -> list[str]:
    return [str(n.metadata.name) for n in core.list_namespace(
        label_selector="conspirator.io/e2e=true").items if n.metadata is not None]


@pytest.fixture(scope="session")
def operator_crds(cluster: LocalCluster, api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    files = [*sorted((REPO / "crds").glob("*.yaml")), REPO / "operator" / "deploy" / "peering.yaml"]
    for f in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts",
                        "--field-manager=conspirator-e2e", "-f", str(f))
    for name in ("inferencejobs.conspirator.io", "gpunodes.conspirator.io",
                 "modelprofiles.conspirator.io", "clusterkopfpeerings.kopf.dev",
                 "kopfpeerings.kopf.dev"):
        def established(name: str = name) -> bool:
            status = ext.read_custom_resource_definition(name).status
            conds = (status.conditions if status else None) or []
            return any(c.type == "Established" and c.status == "True" for c in conds)
        wait_until(f"CRD {name}", established, 30)


@pytest.fixture(scope="module")
def fake_nodes(cluster: LocalCluster, api: client.ApiClient, operator_crds: None
               ) -> Iterator[FakeNodeDaemon]:
    daemon = FakeNodeDaemon(api, ClusterSpec.load(cluster.spec_path).gpu_nodes)
    daemon.install()
    daemon.start()
    yield daemon
    daemon.uninstall()


@pytest.fixture
def resnet_profile(cluster: LocalCluster, operator_crds: None) -> Iterator[None]:
    had = cluster.kubectl("get", "modelprofile", "resnet50", check=False).returncode == 0
    cluster.kubectl("apply", "-f", str(EXAMPLES / "modelprofile-resnet50.yaml"))
    yield
    if not had:
        cluster.kubectl("delete", "modelprofile", "resnet50", "--ignore-not-found", check=False)


@pytest.fixture
def operators(cluster: LocalCluster, api: client.ApiClient, core: client.CoreV1Api,
              tmp_path: Path) -> Iterator[OperatorFactory]:
    made: list[OperatorProcess] = []

    def make(*args: str, env: dict[str, str] | None = None) -> OperatorProcess:
        p = OperatorProcess(cluster.paths.kubeconfig, tmp_path / f"operator-{len(made)}.log",
                            *args, env=env)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()
    namespaces = e2e_namespaces(core)
    if jobs(api, namespaces):
        # Their finalizer needs an operator: a fresh standalone one releases them.
        cleaner = make("--standalone", "--replan-interval", "0").start()
        try:
            delete_all_jobs(api, namespaces)
        finally:
            cleaner.stop()
    for p in made:
        print(f"--- {p.log_path} (last lines)\n{p.tail(15)}")
