"""The layout applier: fewest changes, in-use protection, idempotence, crash safety.

Hand-checked cases first, then hypothesis over random sequences of layouts, in-use
instances and crash points.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conspirator.api.v1alpha1 import GPUNodeSpec
from conspirator.deviceplugin.applier import Applier, plan
from conspirator.deviceplugin.backend import GpuInstance
from conspirator.deviceplugin.simulated import NodeSpec, SimulatedBackend
from conspirator.mig import Placement, check_layout, gpu_model, is_valid_layout

from .conftest import make_backend

Layout = list[tuple[str, int]]


def spec(*gpus: Layout | None, **by_index: Any) -> GPUNodeSpec:
    items = [{"index": i, "instances": [{"profile": p, "start": s} for p, s in lay]}
             for i, lay in enumerate(gpus) if lay is not None]
    for k, v in by_index.items():
        items.append({"index": int(k[1:]), **v})
    return GPUNodeSpec.model_validate({"gpus": items})


def layout_of(b: SimulatedBackend, index: int) -> Layout:
    return [(i.profile, i.start) for i in b.instances(index) if i.complete]


def test_creates_a_layout_then_does_nothing(a100x2: SimulatedBackend) -> None:
    s = spec([("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)], [("7g.80gb", 0)])
    r = Applier(a100x2).apply(s)
    assert r.converged and not r.failures and not r.blocked
    assert len(r.done) == 4
    assert layout_of(a100x2, 0) == [("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)]
    ops = a100x2.operations()
    again = Applier(a100x2).apply(s)
    assert again.converged and again.done == [] and a100x2.operations() == ops


def test_only_what_differs_is_changed(a100x2: SimulatedBackend) -> None:
    Applier(a100x2).apply(spec([("3g.40gb", 0), ("3g.40gb", 4)]))
    keep = a100x2.instances(0)[0]
    r = Applier(a100x2).apply(spec([("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)]))
    assert r.converged
    assert r.done[0].startswith("destroy 3g.40gb@4")
    assert r.done[1:] == ["create 2g.20gb@4 on GPU 0", "create 1g.10gb@6 on GPU 0"]
    assert a100x2.instances(0)[0] == keep  # same instance, same UUID: untouched


def test_an_instance_in_use_is_never_destroyed(a100x2: SimulatedBackend) -> None:
    Applier(a100x2).apply(spec([("3g.40gb", 0), ("3g.40gb", 4)]))
    busy = a100x2.instances(0)[1]
    held = {busy.uuid}
    applier = Applier(a100x2, in_use=lambda i: i.uuid in held)
    target = spec([("4g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5), ("1g.10gb", 6)])
    r = applier.apply(target)
    assert not r.converged
    assert [(b.profile, b.start, b.uuid) for b in r.blocked] == [("3g.40gb", 4, busy.uuid)]
    # The free instance was replaced; what overlaps the busy one waits.
    assert layout_of(a100x2, 0) == [("4g.40gb", 0), ("3g.40gb", 4)]
    assert sorted(plan(target, *applier.snapshot(), applier.in_use)[0].deferred) == [
        ("1g.10gb", 4), ("1g.10gb", 5), ("1g.10gb", 6)]
    held.clear()
    r = applier.apply(target)
    assert r.converged and not r.blocked
    assert layout_of(a100x2, 0) == [("4g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5),
                                    ("1g.10gb", 6)]


@pytest.mark.parametrize(("gpu", "reason", "message"), [
    ({"index": 0, "instances": [{"profile": "1g.20gb", "start": 0},
                                {"profile": "1g.10gb", "start": 1}]},
     "InvalidLayout", "overlaps"),
    ({"index": 0, "instances": [{"profile": "1g.5gb", "start": 0}]},
     "InvalidLayout", "no MIG profile '1g.5gb'"),
    ({"index": 0, "uuid": "GPU-someone-else", "instances": []}, "UUIDMismatch", "GPU-some"),
    ({"index": 5, "instances": []}, "UnknownGPU", "no GPU 5"),
])
def test_refused_layouts_change_nothing(a100x2: SimulatedBackend, gpu: dict[str, Any],
                                        reason: str, message: str) -> None:
    Applier(a100x2).apply(spec([("7g.80gb", 0)]))
    ops = a100x2.operations()
    r = Applier(a100x2).apply(GPUNodeSpec.model_validate({"gpus": [gpu]}))
    assert not r.converged
    [(why, text)] = r.errors
    assert why == reason and message in text
    assert a100x2.operations() == ops


def test_gpus_the_spec_does_not_list_are_left_alone(a100x2: SimulatedBackend) -> None:
    Applier(a100x2).apply(spec([("7g.80gb", 0)], [("7g.80gb", 0)]))
    r = Applier(a100x2).apply(spec(None, [("3g.40gb", 0)]))
    assert r.converged
    assert layout_of(a100x2, 0) == [("7g.80gb", 0)]
    assert layout_of(a100x2, 1) == [("3g.40gb", 0)]


def test_mig_mode_changes(tmp_path: Path) -> None:
    b = make_backend(tmp_path, [{"model": "A100-80GB", "instances": [
        {"profile": "7g.80gb", "start": 0}]}, {"model": "H100-80GB", "migEnabled": False}])
    r = Applier(b).apply(spec(g0={"migEnabled": False},
                              g1={"instances": [{"profile": "3g.40gb", "start": 4}]}))
    assert r.converged, r
    gpus = b.gpus()
    assert not gpus[0].mig_enabled and gpus[1].mig_enabled
    assert b.instances(0) == [] and layout_of(b, 1) == [("3g.40gb", 4)]


def test_half_made_instances_are_finished_or_removed(a100x2: SimulatedBackend) -> None:
    a100x2.create_gpu_instance(0, "3g.40gb", 0)  # killed before its compute instance
    a100x2.create_gpu_instance(0, "1g.10gb", 4)  # and one the spec does not want
    r = Applier(a100x2).apply(spec([("3g.40gb", 0), ("3g.40gb", 4)]))
    assert r.converged
    assert r.done[:2] == ["destroy half-made 1g.10gb@4 on GPU 0", "complete 3g.40gb@0 on GPU 0"]
    assert layout_of(a100x2, 0) == [("3g.40gb", 0), ("3g.40gb", 4)]


# ---- properties ------------------------------------------------------------------------

MODELS = ("A100-80GB", "A30-24GB", "H200-141GB")


@st.composite
def layouts(draw: st.DrawFn, model_name: str) -> Layout:
    """A random valid layout: placements drawn one by one, kept when they still fit."""
    model = gpu_model(model_name)
    chosen: list[Placement] = []
    for pl in draw(st.permutations(model.placements))[: draw(st.integers(0, 10))]:
        if is_valid_layout(model, [*chosen, pl]):
            chosen.append(pl)
    return sorted(((p.profile.name, p.start) for p in chosen), key=lambda x: x[1])


class KilledError(Exception):
    """The daemon was killed here."""


class Recorder(SimulatedBackend):
    """Checks every operation: no overlap ever, no in-use instance ever destroyed."""

    def __init__(self, node: NodeSpec, busy: Callable[[GpuInstance], bool]) -> None:
        super().__init__(node, None)
        self.busy = busy
        self.crash_after: int | None = None
        self.ops = 0

    def _tick(self) -> None:
        self.ops += 1
        if self.crash_after is not None and self.ops > self.crash_after:
            raise KilledError
        for g in self.gpus():
            insts = self.instances(g.index)
            check_layout(g.model, [Placement(g.model.profile(i.profile), i.start)
                                   for i in insts])

    def destroy_compute_instance(self, index: int, start: int) -> None:
        inst = next(i for i in self.instances(index) if i.start == start)
        assert not self.busy(inst), f"destroyed {inst} in use"
        self._tick()
        super().destroy_compute_instance(index, start)

    def destroy_gpu_instance(self, index: int, start: int) -> None:
        self._tick()
        super().destroy_gpu_instance(index, start)

    def create_gpu_instance(self, index: int, profile: str, start: int) -> GpuInstance:
        self._tick()
        out = super().create_gpu_instance(index, profile, start)
        self._tick_after()
        return out

    def create_compute_instance(self, index: int, start: int) -> GpuInstance:
        self._tick()
        return super().create_compute_instance(index, start)

    def _tick_after(self) -> None:
        for g in self.gpus():
            check_layout(g.model, [Placement(g.model.profile(i.profile), i.start)
                                   for i in self.instances(g.index)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), model=st.sampled_from(MODELS))
def test_random_layout_sequences(data: st.DataObject, model: str) -> None:
    busy: set[str] = set()

    def in_use(inst: GpuInstance) -> bool:
        return inst.uuid in busy

    b = Recorder(NodeSpec.from_dict({"node": "p", "gpus": [{"model": model, "count": 2}]}),
                 in_use)
    for _ in range(data.draw(st.integers(1, 5), label="steps")):
        target = spec(data.draw(layouts(model), label="gpu0"),
                      data.draw(layouts(model), label="gpu1"))
        # Some existing instances are in use by containers.
        for g in (0, 1):
            for inst in b.instances(g):
                if inst.uuid and data.draw(st.booleans(), label="busy"):
                    busy.add(inst.uuid)
        # The daemon may be killed at any operation of this pass...
        b.crash_after = data.draw(st.one_of(st.none(), st.integers(0, 12)), label="crash")
        b.ops = 0
        with contextlib.suppress(KilledError):
            Applier(b, in_use).apply(target)
        b.crash_after = None
        # ...and a restarted one converges as far as the instances in use allow.
        r = Applier(b, in_use).apply(target)
        blocked = {(x.gpu_index, x.profile, x.start) for x in r.blocked}
        for g, want in enumerate(target.gpus):
            have = {(i.profile, i.start) for i in b.instances(g)}
            assert all(i.complete for i in b.instances(g))
            wanted = {(i.profile, i.start) for i in want.instances}
            extra = have - wanted
            assert extra == {(p, s) for gi, p, s in blocked if gi == g}
            assert all(inst.uuid in busy for inst in b.instances(g)
                       if (inst.profile, inst.start) in extra)
        assert r.converged == (not blocked)
        # Idempotent: a second pass changes nothing.
        assert Applier(b, in_use).apply(target).done == []
        # Once the containers are gone, it converges fully.
        busy.clear()
        done = Applier(b, in_use).apply(target)
        assert done.converged
        for g, want in enumerate(target.gpus):
            assert {(i.profile, i.start) for i in b.instances(g)} == {
                (i.profile, i.start) for i in want.instances}
