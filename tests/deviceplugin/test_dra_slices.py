"""The DRA driver's ResourceSlices: counters, devices, attributes, the API's limits, and the
publisher's diff against a pool kept in memory."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from conspirator.deviceplugin.backend import GpuInfo
from conspirator.deviceplugin.dra import slices as sl
from conspirator.deviceplugin.dra.publish import SlicePublisher, diff_slices
from conspirator.mig import WHOLE, catalog, check_layout, gpu_model, is_valid_layout

from .conftest import make_backend

MIG_MODELS = sorted(name for name, m in catalog().items() if m.mig_capable)


def gpu(index: int, model: str, mig: bool = True) -> GpuInfo:
    m = gpu_model(model)
    return GpuInfo(index=index, uuid=f"GPU-{model}-{index}", model=m, memory_gib=m.memory_gib,
                   mig_capable=m.mig_capable, mig_enabled=mig and m.mig_capable)


def devices(slices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices for d in s["spec"].get("devices", [])}


def counter_sets(slices: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {cs["name"]: {k: int(v["value"]) for k, v in cs["counters"].items()}
            for s in slices for cs in s["spec"].get("sharedCounters", [])}


@pytest.mark.parametrize("model", MIG_MODELS)
def test_one_device_per_placement_and_one_for_the_gpu(model: str) -> None:
    m = gpu_model(model)
    out = sl.build_slices("node-a", [gpu(0, model)])
    sl.validate_pool(out)
    devs = devices(out)
    placements = sum(len(p.starts) for p in m.profiles)
    assert len(devs) == placements + 1
    assert "gpu-0" in devs
    for p in m.profiles:
        for start in p.starts:
            d = devs[sl.device_name(0, p.name, start)]
            attrs = d["attributes"]
            assert attrs["profile"] == {"string": p.name}
            assert attrs["start"] == {"int": start}
            assert attrs["parentUUID"] == {"string": f"GPU-{model}-0"}
            assert attrs["productName"] == {"string": model}
            assert attrs["type"] == {"string": "mig"}
            assert attrs["node"] == {"string": "node-a"}
            assert attrs["index"] == {"int": 0}
            assert int(d["capacity"]["memory"]["value"]) == round(p.memory_gib * 2**30)


def test_counts_per_model() -> None:
    # The catalog's placements: A100/H100/H200 have 7+7+4+3+2+1+1, the A30 4+4+2+2+1.
    counts = {model: len(devices(sl.build_slices("n", [gpu(0, model)])))
              for model in ("A100-40GB", "A100-80GB", "H100-80GB", "A30-24GB")}
    assert counts == {"A100-40GB": 26, "A100-80GB": 26, "H100-80GB": 26, "A30-24GB": 14}


@pytest.mark.parametrize("model", MIG_MODELS)
def test_counters_cover_exactly_the_memory_slices(model: str) -> None:
    m = gpu_model(model)
    out = sl.build_slices("n", [gpu(0, model)])
    (cs,) = counter_sets(out).values()
    assert {k for k in cs if k.startswith("memory-slice-")} == {
        f"memory-slice-{i}" for i in range(m.memory_slices)}
    assert cs["compute-slices"] == m.compute_slices
    for d in devices(out).values():
        (use,) = d["consumesCounters"]
        assert use["counterSet"] == "gpu-0-counters"
        got = {int(k.rsplit("-", 1)[1]) for k in use["counters"] if k.startswith("memory-slice-")}
        profile, start = d["attributes"]["profile"]["string"], d["attributes"]["start"]["int"]
        if profile == WHOLE:
            assert got == set(range(m.memory_slices))
            assert {k: int(v["value"]) for k, v in use["counters"].items()} == cs
        else:
            p = m.profile(profile)
            assert got == set(range(start, start + p.memory_slices))
            assert int(use["counters"]["compute-slices"]["value"]) == p.compute_slices


@pytest.mark.parametrize("model", ["A100-80GB", "A30-24GB", "H200-141GB"])
def test_counters_admit_exactly_the_valid_layouts(model: str) -> None:
    """Every pair (and a full greedy packing) of placements fits the counters exactly when
    MIG accepts it: the counters say what check_layout says."""
    m = gpu_model(model)
    out = sl.build_slices("n", [gpu(0, model)])
    (cs,) = counter_sets(out).values()
    devs = [d for d in devices(out).values() if d["attributes"]["type"]["string"] == "mig"]

    def fits(ds: list[dict[str, Any]]) -> bool:
        used: dict[str, int] = {}
        for d in ds:
            for k, v in d["consumesCounters"][0]["counters"].items():
                used[k] = used.get(k, 0) + int(v["value"])
        return all(used[k] <= cs[k] for k in used)

    def layout(ds: list[dict[str, Any]]) -> bool:
        return is_valid_layout(m, [next(pl for pl in m.placements
                                        if pl.profile.name == d["attributes"]["profile"]["string"]
                                        and pl.start == d["attributes"]["start"]["int"])
                                   for d in ds])

    for i, a in enumerate(devs):
        for b in devs[i + 1:]:
            assert fits([a, b]) == layout([a, b]), (a["name"], b["name"])
    smallest = [d for d in devs if d["attributes"]["profile"]["string"] == m.profiles[0].name]
    assert fits(smallest) and layout(smallest)
    check_layout(m, [pl for pl in m.placements if pl.profile == m.profiles[0]])


def test_unhealthy_gpu_is_left_out() -> None:
    gpus = [gpu(0, "A100-80GB"), gpu(1, "A100-80GB")]
    out = sl.build_slices("n", gpus, unhealthy={"GPU-A100-80GB-1"})
    sl.validate_pool(out)
    names = set(devices(out))
    assert "gpu-0" in names and not any(n.startswith("gpu-1") for n in names)
    assert set(counter_sets(out)) == {"gpu-0-counters"}


def test_gpu_without_mig_is_one_device_consuming_nothing() -> None:
    out = sl.build_slices("n", [gpu(0, "T4"), gpu(1, "A100-80GB", mig=False)])
    sl.validate_pool(out)
    assert counter_sets(out) == {}
    devs = devices(out)
    assert set(devs) == {"gpu-0", "gpu-1"}
    assert all("consumesCounters" not in d for d in devs.values())
    assert devs["gpu-1"]["attributes"]["migEnabled"] == {"bool": False}
    assert devs["gpu-0"]["attributes"]["uuid"] == {"string": "GPU-T4-0"}


def test_counter_sets_have_slices_of_their_own_and_the_limits_hold() -> None:
    gpus = [gpu(i, "A100-80GB") for i in range(16)] + [gpu(16, "T4")]
    out = sl.build_slices("big-node", gpus, generation=3)
    sl.validate_pool(out)
    kinds = [("sharedCounters" in s["spec"], "devices" in s["spec"]) for s in out]
    assert all(a != b for a, b in kinds)  # never both in one slice
    counter_slices = [s for s in out if "sharedCounters" in s["spec"]]
    assert [len(s["spec"]["sharedCounters"]) for s in counter_slices] == [8, 8]
    for s in out:
        assert len(s["spec"].get("devices", [])) <= sl.MAX_DEVICES_CONSUMING
        assert s["spec"]["pool"] == {"name": "big-node", "generation": 3,
                                     "resourceSliceCount": len(out)}
        assert s["spec"]["nodeName"] == "big-node"
        assert s["spec"]["driver"] == "conspirator.io"
        assert s["apiVersion"] == "resource.k8s.io/v1"
    assert len(devices(out)) == 16 * 26 + 1


def test_names_are_dns_labels_and_attributes_fit() -> None:
    out = sl.build_slices("n", [gpu(i, m) for i, m in enumerate(MIG_MODELS)])
    for name, d in devices(out).items():
        assert sl.is_dns_label(name), name
        assert len(d["attributes"]) + len(d["capacity"]) <= sl.MAX_ATTRIBUTES_AND_CAPACITIES
    assert sl.device_name(0, "1g.10gb+me", 3) == "gpu-0-mig-1g-10gb-me-3"
    assert sl.device_name(2) == "gpu-2"


def test_validation_refuses_what_the_api_server_refuses() -> None:
    good = sl.build_slices("n", [gpu(0, "A100-80GB")])
    sl.validate_pool(good)

    def broken(edit: Any) -> list[dict[str, Any]]:
        out = copy.deepcopy(good)
        edit(out)
        return out

    cases = [
        lambda o: o[1]["spec"].update(sharedCounters=o[0]["spec"]["sharedCounters"]),
        lambda o: o[1]["spec"]["devices"][0].update(name="GPU_0"),
        lambda o: o[0]["spec"].update(sharedCounters=o[0]["spec"]["sharedCounters"] * 9),
        lambda o: o[1]["spec"]["devices"].extend(
            copy.deepcopy(o[1]["spec"]["devices"][0]) | {"name": f"x-{i}"} for i in range(40)),
        lambda o: o[1]["spec"]["devices"][0]["attributes"].update(
            {f"a{i}": {"int": i} for i in range(30)}),
        lambda o: o[1]["spec"]["devices"][0]["consumesCounters"][0]["counters"].update(
            {"memory-slice-9": {"value": "1"}}),
        lambda o: o[0]["spec"]["pool"].update(resourceSliceCount=5),
    ]
    for edit in cases:
        with pytest.raises(sl.SliceError):
            sl.validate_pool(broken(edit))


def test_placeholder_uuids_are_deterministic_and_distinct() -> None:
    a = devices(sl.build_slices("n", [gpu(0, "A100-80GB")]))
    b = devices(sl.build_slices("n", [gpu(0, "A100-80GB")]))
    assert a == b
    uuids = [d["attributes"]["uuid"]["string"] for d in a.values()]
    assert len(set(uuids)) == len(uuids)


def test_built_from_the_simulated_backend(tmp_path: Path) -> None:
    backend = make_backend(tmp_path, [{"model": "A100-80GB", "count": 2}, {"model": "A30"}])
    out = sl.build_slices("test-node", backend.gpus())
    sl.validate_pool(out)
    assert len(devices(out)) == 26 * 2 + 14
    table = sl.device_table(backend.gpus())
    p = table["gpu-2-mig-2g-12gb-2"]
    assert (p.gpu_index, p.profile, p.start, p.memory_slices) == (2, "2g.12gb", 2, (2, 3))


# ---- the publisher --------------------------------------------------------------------


class MemorySlices:
    """A SliceClient over a dict, as the API server would keep them (resourceVersion)."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []
        self._rv = 0

    def _store(self, body: dict[str, Any]) -> None:
        self._rv += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[body["metadata"]["name"]] = stored

    def list(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.objects.values()))

    def create(self, body: dict[str, Any]) -> None:
        assert body["metadata"]["name"] not in self.objects
        self.writes.append(("create", body["metadata"]["name"]))
        self._store(body)

    def replace(self, body: dict[str, Any]) -> None:
        cur = self.objects[body["metadata"]["name"]]
        assert body["metadata"]["resourceVersion"] == cur["metadata"]["resourceVersion"]
        self.writes.append(("replace", body["metadata"]["name"]))
        self._store(body)

    def delete(self, name: str) -> None:
        self.writes.append(("delete", name))
        del self.objects[name]


def test_publisher_writes_changes_only_and_bumps_the_generation() -> None:
    api = MemorySlices()
    pub = SlicePublisher(api)
    gpus = [gpu(i, "A100-80GB") for i in range(3)]
    first = pub.publish(sl.build_slices("n", gpus))
    assert len(first.create) == 3 and not first.update and not first.delete
    assert pub.generation == 1
    sl.validate_pool(api.list())

    api.writes.clear()
    assert pub.publish(sl.build_slices("n", gpus)).empty
    assert api.writes == [] and pub.generation == 1

    # GPU 2 turns unhealthy: its slice goes, every remaining slice moves to generation 2.
    diff = pub.publish(sl.build_slices("n", gpus, unhealthy={"GPU-A100-80GB-2"}))
    assert [n for op, n in api.writes if op == "delete"] == ["n-conspirator.io-devices-1"]
    assert len(diff.update) == 2
    assert {s["spec"]["pool"]["generation"] for s in api.list()} == {2}
    sl.validate_pool(api.list())
    assert api.writes.index(("delete", "n-conspirator.io-devices-1")) == len(api.writes) - 1

    names = sorted(api.objects)
    assert pub.withdraw() == names
    assert api.objects == {}


def test_diff_by_name() -> None:
    a = sl.build_slices("n", [gpu(0, "A100-80GB")], generation=1)
    b = sl.build_slices("n", [gpu(0, "A100-80GB"), gpu(1, "A30-24GB")], generation=1)
    d = diff_slices(b, a)
    assert [s["metadata"]["name"] for s in d.update] == ["n-conspirator.io-counters-0",
                                                          "n-conspirator.io-devices-0"]
    assert d.create == [] and d.delete == []
    assert diff_slices(a, a).empty


def test_reservations_are_published_as_the_operators_selector_reads_them() -> None:
    from conspirator.mig import dra_selector, reservation_tag

    gpus = [gpu(0, "A100-80GB"), gpu(1, "A100-80GB"), gpu(2, "A100-80GB")]
    reserved = {(0, "3g.40gb", 4): "team-a/echo", (0, "1g.10gb", 0): "team-b/x",
                (2, WHOLE, 0): "team-c/big"}
    out = sl.build_slices("n", gpus, reservations=reserved)
    sl.validate_pool(out)
    devs = devices(out)
    # A GPU holding reservations publishes only its reserved devices; others all theirs.
    assert {n for n in devs if n.startswith("gpu-0")} == {"gpu-0-mig-3g-40gb-4",
                                                          "gpu-0-mig-1g-10gb-0"}
    assert {n for n in devs if n.startswith("gpu-2")} == {"gpu-2"}
    assert len([n for n in devs if n.startswith("gpu-1")]) == 26
    tag = devs["gpu-0-mig-3g-40gb-4"]["attributes"]["reservation"]["string"]
    assert tag == reservation_tag("team-a/echo")
    selector = dra_selector("3g.40gb", "team-a/echo")
    assert f'.reservation == "{tag}"' in selector and '.profile == "3g.40gb"' in selector
    assert all(d["attributes"]["reservation"] == {"string": ""}
               for n, d in devs.items() if n.startswith("gpu-1"))
    assert set(counter_sets(out)) == {"gpu-0-counters", "gpu-1-counters", "gpu-2-counters"}
