"""A stand-in for the node daemon on the kwok GPU nodes, for the operator's e2e tests.

Until the real node daemon (``conspirator.deviceplugin``) drives the simulated nodes, this
plays its part with the simulated semantics of DESIGN section 4:

* :meth:`FakeNodeDaemon.install` creates one GPUNode per kwok node of the cluster spec,
  whose status reports the node's GPUs (deterministic UUIDs) and the MIG instances of its
  spec layout;
* a background thread applies ``GPUNode.spec``: it creates the missing instances and
  destroys the others, except instances in use (a pod bound to the node holds one of that
  profile; those are kept and reported ``inUse``, and new instances overlapping them wait),
  writes ``GPUNode.status`` (``observedGeneration``, ``LayoutApplied``) and sets the kwok
  Node's capacity and allocatable to the instances, by the node daemon's resource rule
  (an instance reserved for a job under the job's ``conspirator.io/mig-<profile>-r<tag>``,
  a free one on a GPU with reservations under none, others under
  ``conspirator.io/mig-<profile>``), so the real scheduler binds the workers;
* :meth:`FakeNodeDaemon.uninstall` deletes the GPUNodes and restores the Nodes' capacity.

It needs the installed ``conspirator`` package (MIG geometry from the placement catalog).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from kubernetes import client

from conspirator.mig import profile_of_resource, reserved_resource_name, resource_name
from conspirator.operator.placement.gpus import GpuModel, gpu_model
from conspirator_e2e.cluster import MIG_RESOURCE_PREFIX, GPUNodeSpec

log = logging.getLogger("conspirator_e2e.fakenode")
GROUP, VERSION, PLURAL = "conspirator.io", "v1alpha1", "gpunodes"
Inst = tuple[str, int]  # (profile, start)


def gpu_uuid(node: str, index: int) -> str:
    return f"GPU-{uuid.uuid5(uuid.NAMESPACE_URL, f'conspirator-e2e/{node}/{index}')}"


def mig_uuid(node: str, index: int, profile: str, start: int) -> str:
    name = f"conspirator-e2e/{node}/{index}/{profile}@{start}"
    return f"MIG-{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def initial_instances(model: GpuModel, profiles: Sequence[str]) -> list[Inst]:
    """Starts for a spec layout (profile names only): largest first, lowest start."""
    used = 0
    out: list[Inst] = []
    for name in sorted(profiles, key=lambda p: -model.profile(p).memory_slices):
        prof = model.profile(name)
        for s in prof.starts:
            if not prof.mask(s) & used:
                used |= prof.mask(s)
                out.append((name, s))
                break
        else:
            raise ValueError(f"{model.name}: layout {list(profiles)} does not fit")
    return sorted(out, key=lambda i: i[1])


def _mask(model: GpuModel, inst: Inst) -> int:
    return model.profile(inst[0]).mask(inst[1])


@dataclass
class _Node:
    spec: GPUNodeSpec
    model: GpuModel
    gpus: list[list[Inst]]  # current instances per GPU index
    in_use: list[set[Inst]]
    owners: list[dict[Inst, str]] | None = None  # reservedFor of the spec, per GPU index

    def resources(self) -> dict[str, int]:
        """Instances by the resource the node daemon would advertise them under."""
        out: dict[str, int] = {}
        for idx, insts in enumerate(self.gpus):
            owners = self.owners[idx] if self.owners else {}
            for inst in insts:
                owner = owners.get(inst)
                if owner is not None:
                    res = reserved_resource_name(inst[0], owner)
                elif owners:
                    continue  # a free instance on a GPU with reservations: offered to nobody
                else:
                    res = resource_name(inst[0])
                out[res] = out.get(res, 0) + 1
        return out


def apply_layout(model: GpuModel, have: list[Inst], want: list[Inst], busy: dict[str, int]
                 ) -> tuple[list[Inst], set[Inst]]:
    """One GPU: the instances after applying ``want`` when ``busy[profile]`` are held.

    Instances in ``want`` that exist stay; the others are destroyed unless needed to keep
    the held count of their profile (those stay, in use); missing ones of ``want`` are
    created where they overlap nothing that stays.  Returns (instances, in use).
    """
    keep = [i for i in have if i in want]
    extra = [i for i in have if i not in want]
    held: set[Inst] = set()
    for prof, n in busy.items():
        mine = [i for i in keep if i[0] == prof] + [i for i in extra if i[0] == prof]
        for i in mine[:n]:
            held.add(i)
    stay = keep + [i for i in extra if i in held]
    used = 0
    for i in stay:
        used |= _mask(model, i)
    for i in want:
        if i in stay:
            continue
        m = _mask(model, i)
        if not m & used:
            stay.append(i)
            used |= m
    return sorted(stay, key=lambda i: i[1]), held


class FakeNodeDaemon:
    """See the module docstring."""

    def __init__(self, api: client.ApiClient, nodes: Iterable[GPUNodeSpec],
                 interval: float = 0.3) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.nodes: dict[str, _Node] = {}
        for spec in nodes:
            model = gpu_model(spec.gpu_model)
            gpus = [initial_instances(model, layout) for layout in spec.gpus]
            self.nodes[spec.name] = _Node(spec, model, gpus, [set() for _ in gpus])
        self.interval = interval
        self.applied = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[str, int] = {}

    # --- objects ------------------------------------------------------------------------

    def _status(self, name: str, generation: int | None, blocked: bool) -> dict[str, Any]:
        n = self.nodes[name]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        gpus = []
        for idx, insts in enumerate(n.gpus):
            gpus.append({
                "index": idx, "uuid": gpu_uuid(name, idx), "model": n.model.name,
                "memoryGiB": n.model.memory_gib, "migCapable": True, "migEnabled": True,
                "instances": [{"profile": p, "start": s, "uuid": mig_uuid(name, idx, p, s),
                               "inUse": (p, s) in n.in_use[idx]} for p, s in insts],
            })
        status: dict[str, Any] = {
            "gpus": gpus, "gpuCount": len(gpus),
            "dpu": {"present": False},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Simulated",
                 "message": "e2e stand-in for the node daemon", "lastTransitionTime": now},
                {"type": "LayoutApplied", "status": "False" if blocked else "True",
                 "reason": "InstancesInUse" if blocked else "Applied",
                 "message": "instances in use block the layout" if blocked else "",
                 "lastTransitionTime": now},
            ],
        }
        if generation is not None:
            status["observedGeneration"] = generation
            for c in status["conditions"]:
                c["observedGeneration"] = generation
        return status

    def _set_capacity(self, name: str, counts: dict[str, int] | None = None) -> None:
        """The Node's capacity: ``counts`` by resource (default: the instances)."""
        if counts is None:
            counts = self.nodes[name].resources()
        node = self.core.read_node(name).to_dict()
        cap = dict(node["status"]["capacity"] or {})
        res: dict[str, Any] = {k: None for k in cap if k.startswith(MIG_RESOURCE_PREFIX)}
        for r, c in counts.items():
            res[r] = str(c)
        self.core.patch_node_status(name, {"status": {"capacity": res, "allocatable": res}})

    def install(self) -> None:
        """Create the GPUNodes (status = the spec layouts) and advertise those instances."""
        for name in self.nodes:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GPUNode",
                    "metadata": {"name": name, "labels": {"conspirator.io/e2e": "fake-daemon"}}}
            try:
                self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
            except client.ApiException as e:
                if e.status != 409:
                    raise
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name, {"status": self._status(name, None, False)})
            self._set_capacity(name)

    def uninstall(self) -> None:
        """Delete the GPUNodes and give the Nodes back the capacity of their spec layouts."""
        self.stop()
        for name, n in self.nodes.items():
            try:
                self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
            except client.ApiException as e:
                if e.status != 404:
                    raise
            self._set_capacity(name, {resource_name(p): c
                                      for p, c in n.spec.mig_capacity().items()})

    # --- the loop -----------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fake-node-daemon", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # keep playing the daemon; the test sees the effects
                log.warning("fake node daemon: %s", e)
            self._stop.wait(self.interval)

    def _busy(self) -> dict[str, dict[str, int]]:
        """Node -> profile -> instances held by pods bound there and not finished."""
        r: Any = self.core.list_pod_for_all_namespaces(_preload_content=False)
        out: dict[str, dict[str, int]] = {}
        for pod in json.loads(r.data)["items"]:
            node = (pod.get("spec") or {}).get("nodeName")
            if node not in self.nodes:
                continue
            if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                continue
            for c in pod["spec"].get("containers", []):
                for k, v in ((c.get("resources") or {}).get("limits") or {}).items():
                    if k.startswith(MIG_RESOURCE_PREFIX):
                        p = profile_of_resource(k)
                        out.setdefault(node, {})[p] = out.setdefault(node, {}).get(p, 0) + int(v)
        return out

    def tick(self) -> None:
        """Apply every GPUNode spec that changed (or is blocked) since the last tick."""
        items = cast(dict[str, Any], self.custom.list_cluster_custom_object(
            GROUP, VERSION, PLURAL))["items"]
        todo = []
        for obj in items:
            name = obj["metadata"]["name"]
            if name not in self.nodes:
                continue
            gen = int(obj["metadata"].get("generation") or 0)
            blocked = any(c.get("type") == "LayoutApplied" and c.get("status") == "False"
                          for c in (obj.get("status") or {}).get("conditions") or [])
            if self._seen.get(name) != gen or blocked:
                todo.append((name, gen, (obj.get("spec") or {}).get("gpus") or []))
        if not todo:
            return
        busy = self._busy()
        for name, gen, spec_gpus in todo:
            n = self.nodes[name]
            node_busy = dict(busy.get(name, {}))
            still_blocked = False
            if n.owners is None:
                n.owners = [{} for _ in n.gpus]
            for g in spec_gpus:
                idx = int(g["index"])
                if idx >= len(n.gpus):
                    continue
                want = [(i["profile"], int(i["start"])) for i in g.get("instances") or []]
                n.owners[idx] = {(i["profile"], int(i["start"])): i["reservedFor"]
                                 for i in g.get("instances") or [] if i.get("reservedFor")}
                # Pods hold instances of a profile anywhere on the node: charge this GPU
                # with the share of holders its kept instances can take.
                mine = {p: min(c, sum(1 for i in n.gpus[idx] if i[0] == p))
                        for p, c in node_busy.items()}
                insts, held = apply_layout(n.model, n.gpus[idx], want, mine)
                for p, _ in held:
                    node_busy[p] = node_busy.get(p, 0) - 1
                n.gpus[idx] = insts
                n.in_use[idx] = held
                if sorted(insts) != sorted(want):
                    still_blocked = True
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, PLURAL, name,
                {"status": self._status(name, gen, still_blocked)})
            self._set_capacity(name)
            self._seen[name] = gen
            self.applied += 1
