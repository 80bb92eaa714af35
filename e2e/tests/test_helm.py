"""The real helm binary (built by e2e/build.sh) lints and renders the chart, and the API server
accepts what it renders (server-side dry run; the CRDs are applied for real)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conspirator_e2e.cluster import REPO, Cluster

CHART = REPO / "charts" / "conspirator"


def helm(cluster: Cluster, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, HELM_CACHE_HOME=str(tmp / "cache"),
               HELM_CONFIG_HOME=str(tmp / "config"), HELM_DATA_HOME=str(tmp / "data"),
               KUBECONFIG=str(cluster.paths.kubeconfig))
    return subprocess.run([str(cluster.paths.binary("helm")), *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_helm_is_the_pinned_version(cluster: Cluster, tmp_path: Path) -> None:
    proc = helm(cluster, tmp_path, "version", "--short")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(cluster.paths.versions["HELM_VERSION"])


@pytest.mark.skipif(not (CHART / "Chart.yaml").exists(), reason=f"no chart at {CHART} yet")
def test_chart_lints_renders_and_is_accepted(cluster: Cluster, tmp_path: Path,
                                             namespace: str) -> None:
    lint = helm(cluster, tmp_path, "lint", str(CHART))
    assert lint.returncode == 0, lint.stdout + lint.stderr
    kube_version = cluster.paths.versions["KUBERNETES_VERSION"]
    rendered = helm(cluster, tmp_path, "template", "conspirator", str(CHART),
                    "--namespace", namespace, "--include-crds", "--kube-version", kube_version)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert docs, "the chart rendered nothing"
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    rest = [d for d in docs if d.get("kind") != "CustomResourceDefinition"]
    if crds:
        proc = cluster.kubectl("apply", "--server-side", "--force-conflicts",
                               "--field-manager=conspirator-e2e", "-f", "-",
                               input=yaml.safe_dump_all(crds), check=False)
        assert proc.returncode == 0, proc.stderr
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        *[f"crd/{d['metadata']['name']}" for d in crds])
    proc = cluster.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-",
                           input=yaml.safe_dump_all(rest), check=False)
    assert proc.returncode == 0, proc.stderr
