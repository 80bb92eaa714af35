"""The product images (conspirator_e2e/images.py) on the real node: they import into its
containerd and each runs its component's sub-command, as the user images/Dockerfile gives it,
with what the chart relies on (the console script on PATH, the C extension, the kubernetes
client's in-cluster config, a writable /tmp and HOME)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conspirator_e2e import images, oci
from conspirator_e2e.cluster import LocalCluster
from conspirator_e2e.testing import as_dict, pod_phase_in, wait_until
from kubernetes import client

# Run inside each image as its own user (the image's USER: the pod sets none).
PROBE = """
set -e
echo "uid=$(id -u) gid=$(id -g) home=$HOME"
echo "conspirator=$(command -v conspirator)"
touch /tmp/probe && echo tmp-writable
touch "$HOME/probe" && echo home-writable
python3 -c 'import conspirator._native as n; print("native", n.__file__)'
python3 -c '
from kubernetes import config
config.load_incluster_config()
print("incluster-config ok")
'
conspirator --version
"""


@pytest.fixture(scope="module")
def refs(cluster: LocalCluster) -> dict[str, str]:
    return images.build_product_images(cluster)


def test_images_are_imported_with_their_configs(cluster: LocalCluster,
                                                refs: dict[str, str]) -> None:
    version = images.project_version()
    assert refs == {c: f"conspirator.local/conspirator-{c}:{version}"
                    for c in ("operator", "node-daemon", "dpu-agent")}
    listed = cluster.ctr("images", "ls", "-q").stdout.split()
    assert set(refs.values()) <= set(listed)
    archive, _ = images.build_product_archive(cluster.paths)  # cached: the same archive
    index, blobs = oci.read_archive(archive)
    manifests = index["manifests"]
    assert isinstance(manifests, list)
    layer_sets = set()
    for desc in manifests:
        name = desc["annotations"]["io.containerd.image.name"]
        component = next(c for c, r in refs.items() if r == name)
        manifest = json.loads(blobs[desc["digest"]])
        layer_sets.add(tuple(ly["digest"] for ly in manifest["layers"]))
        config = json.loads(blobs[manifest["config"]["digest"]])["config"]
        assert config["Entrypoint"] == ["conspirator", component]
        assert config["User"] == images.COMPONENTS[component].user
        assert config["WorkingDir"] == images.WORKDIR
    # One set of three layers (os, python, app), shared by the three images.
    assert len(layer_sets) == 1 and len(next(iter(layer_sets))) == 3


def component_pod(component: str, image: str, node: str) -> client.V1Pod:
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=component),
        spec=client.V1PodSpec(
            restart_policy="Never",
            node_name=node,  # the real node: its containerd holds the images
            termination_grace_period_seconds=1,
            containers=[
                # The image's own entrypoint: conspirator <component> --help
                client.V1Container(name="help", image=image, image_pull_policy="Never",
                                   args=["--help"]),
                client.V1Container(name="probe", image=image, image_pull_policy="Never",
                                   command=["sh", "-c", PROBE]),
            ],
        ),
    )


@pytest.mark.parametrize("component", ["operator", "node-daemon", "dpu-agent"])
def test_image_runs_its_component_on_the_real_node(
    core: client.CoreV1Api, namespace: str, cluster_info: dict[str, Any],
    refs: dict[str, str], component: str,
) -> None:
    node = cluster_info["realNode"]
    core.create_namespaced_pod(namespace, component_pod(component, refs[component], node))
    pod = as_dict(wait_until(f"pod {component} to finish", pod_phase_in(
        core, namespace, component, {"Succeeded", "Failed"}), 180))
    logs = {c: core.read_namespaced_pod_log(component, namespace, container=c)
            for c in ("help", "probe")}
    print(f"--- {component}\n{logs['help'][:200]}\n{logs['probe']}")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], logs)
    assert f"usage: conspirator {component}" in logs["help"]

    probe = logs["probe"]
    uid = "0" if component == "node-daemon" else str(images.UID)
    assert f"uid={uid} gid={uid} home={images.WORKDIR}" in probe
    assert "conspirator=/usr/local/bin/conspirator" in probe
    assert "tmp-writable" in probe and "home-writable" in probe
    assert "native /usr/local/lib/python3" in probe and "_native.cpython" in probe
    assert "incluster-config ok" in probe
    assert f"conspirator {images.project_version()}" in probe
    statuses = {s["name"]: s for s in pod["status"]["container_statuses"]}
    for name in ("help", "probe"):
        assert statuses[name]["state"]["terminated"]["exit_code"] == 0
        assert statuses[name]["image"].endswith(refs[component].split("/", 1)[1])
