"""The chart installed as one release on the real node, for the tests that run a job
through its pods (e2e/tests/test_helm.py in device-plugin mode, test_helm_dra.py in DRA
mode): images built and imported, ``helm install --wait``, the three components ready, and
on exit the jobs, the release and what it left on the host removed."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conspirator_e2e import chart
from conspirator_e2e.chart import NAMESPACE
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.datapath import build_dpserve_image
from conspirator_e2e.images import build_product_images


@dataclass
class Release:
    cluster: LocalCluster
    values: Path
    images: dict[str, str]
    worker_image: str
    home: Path

    def pods(self) -> dict[str, dict[str, Any]]:
        return chart.component_pods(self.cluster)

    def ready(self) -> bool:
        return chart.components_ready(self.cluster)

    def describe(self) -> str:
        return describe(self.cluster)


def describe(cluster: LocalCluster) -> str:
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False).stdout
    return f"\n{pods}\n{chart.component_logs(cluster, 30)}"


def cleanup_host(cluster: LocalCluster) -> None:
    cluster.kubectl("delete", "gpunode", str(cluster.read_info()["realNode"]),
                    "--ignore-not-found", "--wait=true", check=False)
    cluster.kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--wait=true",
                    "--timeout=120s", check=False)
    subprocess.run(["rm", "-rf", str(cluster.paths.state / "chart")], check=False)


@contextmanager
def installed_release(cluster: LocalCluster, home: Path, **values: Any) -> Iterator[Release]:
    """The chart installed with :func:`chart.local_values` (``values`` are its keyword
    arguments), ready; uninstalled and cleaned up on exit."""
    images = build_product_images(cluster)
    worker = build_dpserve_image(cluster)
    path = chart.write_values(home / "local.yaml", chart.local_values(cluster, images, **values))
    if chart.installed(cluster):
        chart.uninstall(cluster)
    cleanup_host(cluster)
    t0 = time.monotonic()
    proc = chart.install(cluster, path)
    assert proc.returncode == 0, proc.stdout + proc.stderr + describe(cluster)
    print(f"[timing] helm install --wait: {time.monotonic() - t0:.1f}s")
    rel = Release(cluster, path, images, worker, home)
    # helm --wait can see a DaemonSet before its controller counted the nodes (0 of 0 ready).
    chart.wait("the chart's three pods to be ready", rel.ready, 180, rel.describe)
    print(f"[timing] helm install -> all three components ready: "
          f"{time.monotonic() - t0:.1f}s")
    try:
        yield rel
    finally:
        for ns in cluster.kubectl("get", "ij", "-A", "-o",
                                  "jsonpath={.items[*].metadata.namespace}",
                                  check=False).stdout.split():
            cluster.kubectl("delete", "ij", "--all", "-n", ns, "--wait=true", "--timeout=60s",
                            check=False)
        if chart.installed(cluster):
            chart.uninstall(cluster)
        cleanup_host(cluster)


__all__ = ["Release", "cleanup_host", "describe", "installed_release"]
