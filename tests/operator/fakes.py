"""An in-memory API server for the operator's unit tests: the real
:class:`~conspirator.operator.kubeapi.KubeAPI` Protocol over dicts, with resourceVersions,
404s, 409s and injectable failures, so the controller, writer and data path run without a
cluster.  (The same flows on the real API server: e2e/tests/test_operator*.py.)"""

from __future__ import annotations

import asyncio
import base64
import copy
from collections.abc import Callable, Mapping
from typing import Any

from conspirator.operator.datapath import decode_data
from conspirator.operator.kubeapi import ConflictError, KubeAPI, NotFoundError

from .builders import API

OP_NS = "conspirator-system"
AGG = "conspirator-agent-tokens"


class FakeSecrets:
    """Secrets as the API server keeps them (resourceVersion checks, 404, 409)."""

    def __init__(self, namespaces: tuple[str, ...] = ("ns", OP_NS)) -> None:
        self.namespaces = set(namespaces)
        self.store: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 100
        self.calls: list[tuple[str, str]] = []
        self.before_replace: Callable[[dict[str, Any]], object] | None = None

    def _bump(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.rv)
        body["metadata"].setdefault("uid", f"secret-{self.rv}")
        self.store[(body["metadata"]["namespace"], body["metadata"]["name"])] = body
        return copy.deepcopy(body)

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any]:
        self.calls.append(("get", name))
        await asyncio.sleep(0)
        if (namespace, name) not in self.store:
            raise NotFoundError(name)
        return copy.deepcopy(self.store[(namespace, name)])

    async def create_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body["metadata"]["name"]))
        await asyncio.sleep(0)
        meta = body["metadata"]
        if meta["namespace"] not in self.namespaces:
            raise NotFoundError(meta["namespace"])
        if (meta["namespace"], meta["name"]) in self.store:
            raise ConflictError(meta["name"])
        return self._bump(body)

    async def replace_secret(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("update", body["metadata"]["name"]))
        await asyncio.sleep(0)
        if self.before_replace is not None:
            hook, self.before_replace = self.before_replace, None
            hook(body)
        meta = body["metadata"]
        cur = self.store.get((meta["namespace"], meta["name"]))
        if cur is None:
            raise NotFoundError(meta["name"])
        if meta.get("resourceVersion") != cur["metadata"]["resourceVersion"]:
            raise ConflictError(meta["name"])
        return self._bump(body)

    # test helpers
    def put(self, namespace: str, name: str, data: Mapping[str, str],
            **meta: Any) -> dict[str, Any]:
        return self._bump({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                           "metadata": {"name": name, "namespace": namespace, **meta},
                           "data": {k: base64.b64encode(v.encode()).decode()
                                    for k, v in data.items()}})

    def data(self, namespace: str, name: str) -> dict[str, str]:
        return decode_data(self.store.get((namespace, name)))

    def writes(self) -> int:
        return sum(1 for verb, _ in self.calls if verb in ("create", "update"))


class FakeKube(FakeSecrets):
    """Every call the operator makes, over dicts.  ``fail[method] = error`` makes the next
    call of that method raise ``error`` (once)."""

    def __init__(self, namespaces: tuple[str, ...] = ("ns", OP_NS)) -> None:
        super().__init__(namespaces)
        self.jobs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.claim_templates: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.fail: dict[str, Exception] = {}
        self.lists = 0
        """Full listings made (one per resync)."""
        self.writes_made: list[tuple[str, str]] = []
        """(method, object) of every write that succeeded, in order."""

    def _maybe_fail(self, method: str) -> None:
        err = self.fail.pop(method, None)
        if err is not None:
            raise err

    def _touch(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        body["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(body)

    async def list_jobs(self) -> list[dict[str, Any]]:
        self._maybe_fail("list_jobs")
        self.lists += 1
        return copy.deepcopy(list(self.jobs.values()))

    async def list_nodes(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.nodes.values()))

    async def list_profiles(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.profiles.values()))

    async def list_workers(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.deployments.values()))

    async def patch_profile_status(self, name: str, status: dict[str, Any]
                                   ) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("patch_profile_status")
        try:
            body = self.profiles[name]
        except KeyError:
            raise NotFoundError(name) from None
        merged = {**(body.get("status") or {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.writes_made.append(("patch_profile_status", name))
        return self._touch(body)

    async def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]
                               ) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("patch_job_status")
        try:
            body = self.jobs[f"{namespace}/{name}"]
        except KeyError:
            raise NotFoundError(name) from None
        merged = {**(body.get("status") or {}), **status}
        body["status"] = {k: v for k, v in merged.items() if v is not None}
        self.writes_made.append(("patch_job_status", f"{namespace}/{name}"))
        return self._touch(body)

    async def patch_node_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("patch_node_spec")
        try:
            body = self.nodes[name]
        except KeyError:
            raise NotFoundError(name) from None
        body["spec"] = spec
        self.writes_made.append(("patch_node_spec", name))
        return self._touch(body)

    async def create_claim_template(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("create_claim_template")
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if key in self.claim_templates:
            raise ConflictError(key)
        self.claim_templates[key] = copy.deepcopy(body)
        self.writes_made.append(("create_claim_template", key))
        return body

    async def create_deployment(self, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("create_deployment")
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        if key in self.deployments:
            raise ConflictError(key)
        self.rv += 1
        body = copy.deepcopy(body)
        body["metadata"].update(resourceVersion=str(self.rv), uid=f"d{self.rv}", generation=1)
        self.deployments[key] = body
        self.writes_made.append(("create_deployment", key))
        return copy.deepcopy(body)

    async def update_deployment(self, body: dict[str, Any], resource_version: str
                                ) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("update_deployment")
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        cur = self.deployments.get(key)
        if cur is None:
            raise NotFoundError(key)
        if cur["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(key)
        for part in ("labels", "annotations"):
            cur["metadata"][part] = copy.deepcopy(body["metadata"][part])
        cur["spec"] = copy.deepcopy(body["spec"])
        return self._touch(cur)

    async def scale_deployment(self, namespace: str, name: str, replicas: int,
                               resource_version: str) -> dict[str, Any]:
        await asyncio.sleep(0)
        self._maybe_fail("scale_deployment")
        key = f"{namespace}/{name}"
        cur = self.deployments.get(key)
        if cur is None:
            raise NotFoundError(key)
        if cur["metadata"]["resourceVersion"] != resource_version:
            raise ConflictError(key)
        cur["spec"]["replicas"] = replicas
        return self._touch(cur)

    async def read_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return copy.deepcopy(self.deployments[f"{namespace}/{name}"])
        except KeyError:
            raise NotFoundError(name) from None

    async def delete_deployment(self, namespace: str, name: str, uid: str | None = None
                                ) -> None:
        self._maybe_fail("delete_deployment")
        if self.deployments.pop(f"{namespace}/{name}", None) is not None:
            self.writes_made.append(("delete_deployment", f"{namespace}/{name}"))

    async def set_pod_deletion_cost(self, namespace: str, name: str, cost: int) -> None:
        self._maybe_fail("set_pod_deletion_cost")
        self.writes_made.append(("set_pod_deletion_cost", f"{namespace}/{name}={cost}"))

    async def delete_pod(self, namespace: str, name: str) -> None:
        self._maybe_fail("delete_pod")
        self.writes_made.append(("delete_pod", f"{namespace}/{name}"))

    async def post_event(self, body: dict[str, Any]) -> None:
        self.events.append(body)

    # test helpers
    def reasons(self, key: str | None = None) -> list[str]:
        """The Events' reasons, in order (those about job ``key`` only, if given)."""
        out = []
        for e in self.events:
            obj = e.get("involvedObject") or {}
            if key is None or f"{obj.get('namespace')}/{obj.get('name')}" == key:
                out.append(str(e["reason"]))
        return out


def _conforms(api: KubeAPI) -> None:
    """FakeKube is a KubeAPI (checked by mypy)."""


_conforms(FakeKube())


def gpunode(name: str, dpu: dict[str, Any] | None = None,
            instances: list[tuple[str, int]] | None = None, gpus: int = 1,
            model: str = "A100-80GB") -> dict[str, Any]:
    """A GPUNode body with ``gpus`` MIG-enabled GPUs; ``instances`` on GPU 0."""
    status: dict[str, Any] = {"gpus": [{
        "index": i, "uuid": f"GPU-{name}-{i}", "model": model, "memoryGiB": 80,
        "migCapable": True, "migEnabled": True,
        "instances": [{"profile": p, "start": s, "uuid": f"MIG-{name}-{i}-{s}"}
                      for p, s in (instances or [] if i == 0 else [])]}
        for i in range(gpus)]}
    if dpu is not None:
        status["dpu"] = dpu["dpu"]
        status["conditions"] = dpu["conditions"]
    return {"apiVersion": API, "kind": "GPUNode",
            "metadata": {"name": name, "generation": 1, "resourceVersion": "1"},
            "spec": {}, "status": status}


def apply_layouts(api: FakeKube) -> None:
    """Play the node daemons: every GPUNode's status shows the instances its spec asks for."""
    for name, body in api.nodes.items():
        want = {g["index"]: g.get("instances") or [] for g in (body.get("spec") or {}).get(
            "gpus", [])}
        for g in body["status"]["gpus"]:
            if g["index"] in want:
                g["instances"] = [{"profile": i["profile"], "start": i["start"],
                                   "uuid": f"MIG-{name}-{g['index']}-{i['start']}"}
                                  for i in want[g["index"]]]
        api.rv += 1
        body["metadata"]["resourceVersion"] = str(api.rv)
