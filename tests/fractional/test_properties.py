"""Invariants under random clusters and pod streams, for every policy."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import (
    MILLI,
    FractionalCluster,
    NodeSpec,
    PodSpec,
)
from conspirator.operator.placement.fractional.policies import fits_somewhere
from conspirator.operator.placement.fractional.policy_names import POLICIES, make_policy
from conspirator.operator.placement.fractional.workload import build_target_workload

MODELS = ("T4", "G2", "V100M16")


@st.composite
def nodes(draw: st.DrawFn) -> list[NodeSpec]:
    count = draw(st.integers(1, 5))
    out = []
    for i in range(count):
        gpus = draw(st.sampled_from((0, 1, 2, 4, 8)))
        out.append(
            NodeSpec(
                f"n{i}",
                draw(st.integers(0, 16)) * 1000,
                draw(st.integers(0, 8)) * 1024,
                gpus,
                draw(st.sampled_from(MODELS)) if gpus else None,
            )
        )
    return out


@st.composite
def pods(draw: st.DrawFn) -> list[PodSpec]:
    count = draw(st.integers(1, 30))
    out = []
    for i in range(count):
        num_gpu = draw(st.sampled_from((0, 1, 1, 1, 2, 4)))
        milli = 0 if num_gpu == 0 else MILLI
        if num_gpu == 1:
            milli = draw(st.sampled_from((100, 250, 470, 810, 1000)))
        spec = None
        if num_gpu and draw(st.booleans()):
            spec = frozenset(draw(st.lists(st.sampled_from(MODELS), min_size=1, max_size=2)))
        out.append(
            PodSpec(
                f"p{i}",
                draw(st.integers(0, 6)) * 1000,
                draw(st.integers(0, 4)) * 512,
                num_gpu,
                milli,
                spec,
            )
        )
    return out


def check_consistent(cluster: FractionalCluster) -> None:
    for i, spec in enumerate(cluster.nodes):
        assert all(0 <= g <= MILLI for g in cluster.gpu_left[i])
        assert 0 <= cluster.cpu_left[i] <= spec.cpu_milli
        assert 0 <= cluster.mem_left[i] <= spec.memory_mib
        group = cluster.group_of(i)
        assert i in group.members
        assert group.gpus == cluster.gpu_state(i)
        assert (group.cpu_left, group.mem_left) == (cluster.cpu_left[i], cluster.mem_left[i])
        assert group.first == min(group.members)
    assert sum(len(g.members) for g in cluster.iter_groups()) == len(cluster.nodes)
    free = sum(sum(left) for left in cluster.gpu_left)
    assert cluster.used_gpu_milli == cluster.total_gpu_milli - free


@settings(max_examples=40, deadline=None)
@given(nodes(), pods(), st.sampled_from(sorted(POLICIES)), st.integers(0, 3))
def test_policies_never_overallocate_and_account_for_every_pod(
    node_list: list[NodeSpec], pod_list: list[PodSpec], name: str, seed: int
) -> None:
    cluster = FractionalCluster(node_list)
    policy = make_policy(name, FragMeasure(build_target_workload(pod_list)), random.Random(seed))
    placed: list[PodSpec] = []
    failed: list[PodSpec] = []
    for pod in pod_list:
        could_fit = fits_somewhere(cluster, pod)
        choice = policy.choose(cluster, pod)
        if choice is None:
            assert not could_fit, f"{name} refused {pod} although a node fits it"
            failed.append(pod)
        else:
            assert cluster.fits(choice.node, pod)
            cluster.place(pod, choice)  # raises if the choice over-allocates
            placed.append(pod)
        check_consistent(cluster)
    assert len(placed) + len(failed) == len(pod_list)
    assert cluster.used_gpu_milli == sum(p.total_gpu_milli for p in placed)
