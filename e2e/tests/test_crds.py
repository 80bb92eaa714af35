"""The project's CRDs (crds/*.yaml) are accepted by the real API server, the examples
(examples/*.yaml) are valid objects, and each bad object (tests/api/bad/*.yaml) is refused with
the message its ``# expect: <substring>`` comment names."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from conspirator_e2e.cluster import REPO, LocalCluster
from conspirator_e2e.testing import as_dict, wait_until
from kubernetes import client, dynamic
from kubernetes.dynamic.exceptions import DynamicApiError

CRD_DIR = REPO / "crds"
EXAMPLES_DIR = REPO / "examples"
BAD_DIR = REPO / "tests" / "api" / "bad"
EXPECT = re.compile(r"^\s*#\s*expect:\s*(.+?)\s*$", re.MULTILINE)
MIN_BAD_OBJECTS = 10


def yaml_files(d: Path) -> list[Path]:
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")]) if d.is_dir() else []


def crd_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for f in yaml_files(CRD_DIR):
        docs.extend(d for d in yaml.safe_load_all(f.read_text())
                    if d and d.get("kind") == "CustomResourceDefinition")
    return docs


@pytest.fixture(scope="module")
def crds(cluster: LocalCluster, api: client.ApiClient) -> Iterator[dict[str, dict[str, Any]]]:
    """Apply every CRD; map 'group/Kind' to its CRD.  Left installed (other tests use them)."""
    docs = crd_docs()
    if not docs:
        pytest.fail(f"no CustomResourceDefinition in {CRD_DIR}")
    ext = client.ApiextensionsV1Api(api)
    for doc in docs:
        proc = cluster.kubectl("apply", "--server-side", "--force-conflicts",
                               "--field-manager=conspirator-e2e", "-f", "-",
                               input=yaml.safe_dump(doc), check=False)
        assert proc.returncode == 0, f"{doc['metadata']['name']} refused: {proc.stderr}"

    def established(name: str) -> bool:
        crd = as_dict(ext.read_custom_resource_definition(name))
        conds = (crd.get("status") or {}).get("conditions") or []
        ok = {c["type"] for c in conds if c["status"] == "True"}
        return {"Established", "NamesAccepted"} <= ok

    for doc in docs:
        name = doc["metadata"]["name"]
        wait_until(f"CRD {name} to be established", partial(established, name), 60)
    yield {f"{d['spec']['group']}/{d['spec']['names']['kind']}": d for d in docs}


@pytest.fixture(scope="module")
def dyn(api: client.ApiClient, crds: dict[str, dict[str, Any]]) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(api)  # type: ignore[no-untyped-call]  # after the CRDs


def test_crds_exist() -> None:
    assert crd_docs(), f"no CRDs in {CRD_DIR}"


def test_crds_are_served(crds: dict[str, dict[str, Any]], dyn: dynamic.DynamicClient) -> None:
    for doc in crds.values():
        group = doc["spec"]["group"]
        for version in doc["spec"]["versions"]:
            if version.get("served"):
                res = dyn.resources.get(api_version=f"{group}/{version['name']}",
                                        kind=doc["spec"]["names"]["kind"])
                assert res.namespaced == (doc["spec"]["scope"] == "Namespaced")


def _create(dyn: dynamic.DynamicClient, crds: dict[str, dict[str, Any]], obj: dict[str, Any],
            namespace: str) -> Any:
    group = obj["apiVersion"].split("/")[0]
    res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    crd = crds.get(f"{group}/{obj['kind']}")
    if res.namespaced or (crd and crd["spec"]["scope"] == "Namespaced"):
        obj.setdefault("metadata", {})["namespace"] = namespace
        return res.create(body=obj, namespace=namespace)
    return res.create(body=obj)


def _cleanup(dyn: dynamic.DynamicClient, obj: dict[str, Any], namespace: str) -> None:
    res = dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    name = obj["metadata"]["name"]
    try:
        if res.namespaced:
            res.delete(name=name, namespace=namespace)
        else:
            res.delete(name=name)
    except DynamicApiError:
        pass


EXAMPLES = yaml_files(EXAMPLES_DIR)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted(path: Path, crds: dict[str, dict[str, Any]],
                             dyn: dynamic.DynamicClient, namespace: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    created = []
    try:
        for obj in docs:
            _create(dyn, crds, obj, namespace)
            created.append(obj)
    finally:
        for obj in created:
            _cleanup(dyn, obj, namespace)


BAD = yaml_files(BAD_DIR)


def test_enough_bad_objects() -> None:
    with_expect = [p for p in BAD if EXPECT.search(p.read_text())]
    assert len(with_expect) >= MIN_BAD_OBJECTS, (
        f"{BAD_DIR} holds {len(with_expect)} bad objects with '# expect:', want >= "
        f"{MIN_BAD_OBJECTS}"
    )


@pytest.mark.parametrize("path", BAD, ids=[p.name for p in BAD])
def test_bad_object_is_refused(path: Path, crds: dict[str, dict[str, Any]],
                               dyn: dynamic.DynamicClient, namespace: str) -> None:
    text = path.read_text()
    expected = EXPECT.findall(text)
    assert expected, f"{path} has no '# expect: <substring of the API server's message>' line"
    obj = yaml.safe_load(text)
    try:
        _create(dyn, crds, obj, namespace)
    except DynamicApiError as e:
        body: Any = e.body
        message = body.decode() if isinstance(body, bytes) else str(body)
        assert e.status in (400, 422), f"{path.name}: HTTP {e.status}: {message}"
        for want in expected:
            assert want in message, f"{path.name}: {want!r} not in the API server's {message}"
        return
    _cleanup(dyn, obj, namespace)
    pytest.fail(f"{path.name} was accepted; expected refusal with {expected}")


def test_kubectl_explains_the_crds(cluster: LocalCluster, crds: dict[str, dict[str, Any]]) -> None:
    """The published OpenAPI of each CRD reaches clients (kubectl explain reads it)."""
    for doc in crds.values():
        plural = doc["spec"]["names"]["plural"]
        group = doc["spec"]["group"]
        try:
            out = cluster.kubectl("explain", f"{plural}.{group}.spec").stdout
        except subprocess.SubprocessError as e:  # pragma: no cover - reported by assert below
            out = str(e)
        assert "FIELDS" in out or "DESCRIPTION" in out, out
