"""Each policy's choice on tiny hand-built clusters."""

from __future__ import annotations

import random

import pytest

from conspirator.operator.placement.fractional.conspirator import (
    ConspiratorPolicy,
    cpu_per_gpu_milli,
)
from conspirator.operator.placement.fractional.feasibility import unschedulable_reason
from conspirator.operator.placement.fractional.frag import FragMeasure
from conspirator.operator.placement.fractional.model import (
    Choice,
    FractionalCluster,
    NodeSpec,
    PodSpec,
)
from conspirator.operator.placement.fractional.policies import FractionalPolicy
from conspirator.operator.placement.fractional.policy_names import POLICIES, make_policy
from conspirator.operator.placement.fractional.workload import TargetWorkload, TaskType

SHARE_THEN_WHOLE = TargetWorkload(
    (TaskType(2000, 1, 500, None, 0.5), TaskType(2000, 1, 1000, None, 0.5))
)
WHOLE_AND_CPU = TargetWorkload(
    (TaskType(2000, 1, 1000, None, 0.8), TaskType(1000, 0, 0, None, 0.2))
)


def policy(
    name: str, workload: TargetWorkload = SHARE_THEN_WHOLE, seed: int = 0
) -> FractionalPolicy:
    return make_policy(name, FragMeasure(workload), random.Random(seed))


def t4(name: str, cpu: int = 32000, gpus: int = 2) -> NodeSpec:
    return NodeSpec(name, cpu, 262144, gpus, "T4")


def half_used_cluster() -> FractionalCluster:
    """n0 idle; n1 with 500 milli-GPU taken on GPU 0."""
    cluster = FractionalCluster([t4("n0"), t4("n1")])
    cluster.place(PodSpec("old", 1000, 1024, 1, 500), Choice(1, (0,)))
    return cluster


SHARE_POD = PodSpec("new", 1000, 1024, 1, 500)


@pytest.mark.parametrize("name", ["fgd", "bestfit", "conspirator"])
def test_sharing_pod_completes_the_half_used_gpu(name: str) -> None:
    # FGD by hand: on n1's half GPU the fragmentation falls by 250 (score 56);
    # on any whole GPU it rises by 250 (score 43)
    assert policy(name).choose(half_used_cluster(), SHARE_POD) == Choice(1, (0,))


@pytest.mark.parametrize("name", ["fgd", "bestfit", "dotprod", "gpupacking", "conspirator"])
def test_ties_go_to_the_first_node_in_order(name: str) -> None:
    cluster = FractionalCluster([t4("a"), t4("b"), t4("c")])
    assert policy(name).choose(cluster, SHARE_POD) == Choice(0, (0,))


def test_gpupacking_prefers_shared_gpus_then_used_nodes() -> None:
    cluster = half_used_cluster()
    assert policy("gpupacking").choose(cluster, PodSpec("s", 1000, 1, 1, 300)) == Choice(1, (0,))
    # a whole GPU: the used node's free GPU beats the idle node
    assert policy("gpupacking").choose(cluster, PodSpec("w", 1000, 1, 1, 1000)) == Choice(1, (1,))


def test_dotprod_prefers_the_node_with_less_free() -> None:
    cluster = FractionalCluster([t4("n0", gpus=8), t4("n1", gpus=8)])
    for gpu in range(7):
        cluster.place(PodSpec(f"old{gpu}", 1000, 1, 1, 1000), Choice(1, (gpu,)))
    # 100 * (1 - dot / 2): 93 on the idle node, 99 on the one with one GPU left
    whole = PodSpec("w", 1000, 1, 1, 1000)
    assert policy("dotprod").choose(cluster, whole) == Choice(1, (7,))


def test_gpuclustering_groups_pods_of_the_same_affinity() -> None:
    cluster = FractionalCluster([t4("n0"), t4("n1")])
    cluster.place(PodSpec("whole", 1000, 1, 1, 1000), Choice(0, (0,)))
    cluster.place(PodSpec("share", 1000, 1, 1, 200), Choice(1, (0,)))
    assert policy("gpuclustering").choose(cluster, PodSpec("s", 1000, 1, 1, 300)) == Choice(1, (0,))
    assert policy("gpuclustering").choose(cluster, PodSpec("w", 1000, 1, 1, 1000)) == Choice(
        0, (1,)
    )


def test_random_is_feasible_and_reproducible() -> None:
    cluster = FractionalCluster([t4(f"n{i}") for i in range(6)])
    picks = [policy("random", seed=7).choose(cluster, SHARE_POD) for _ in range(2)]
    assert picks[0] == picks[1]
    assert picks[0] is not None and cluster.fits(picks[0].node, SHARE_POD)


def test_conspirator_keeps_cpu_pods_off_cpu_starved_gpu_nodes() -> None:
    # n0: 8 GPUs but only 16 cores; n1: 2 GPUs and 64 cores.  The workload's GPU
    # tasks bring 2 milli-CPU per milli-GPU, so n0 needs all its CPU.
    cluster = FractionalCluster([t4("n0", cpu=16000, gpus=8), t4("n1", cpu=64000)])
    cpu_pod = PodSpec("cpu", 8000, 1024, 0, 0)
    assert cpu_per_gpu_milli(WHOLE_AND_CPU) == pytest.approx(2.0)
    # FGD's measure sees no change on either node (every task still fits): tie, first node
    assert policy("fgd", WHOLE_AND_CPU).choose(cluster, cpu_pod) == Choice(0)
    assert policy("conspirator", WHOLE_AND_CPU).choose(cluster, cpu_pod) == Choice(1)
    conspirator = ConspiratorPolicy(FragMeasure(WHOLE_AND_CPU))
    assert conspirator.stranded(8000, (1000,) * 8) == pytest.approx(4000)


def test_model_constraint_and_memory_are_respected() -> None:
    cluster = FractionalCluster([t4("n0"), NodeSpec("v", 32000, 2048, 1, "V100M16")])
    only_v100 = PodSpec("v", 1000, 1024, 1, 500, frozenset({"V100M16"}))
    big_memory = PodSpec("m", 1000, 100_000, 1, 500)
    for name in POLICIES:
        assert policy(name).choose(cluster, only_v100) == Choice(1, (0,)), name
        choice = policy(name).choose(cluster, big_memory)
        assert choice is not None and choice.node == 0, name


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_pod_that_fits_nowhere_gets_none(name: str) -> None:
    cluster = FractionalCluster([t4("n0"), t4("n1")])
    three_gpus = PodSpec("big", 1000, 1, 3, 1000)
    assert policy(name).choose(cluster, three_gpus) is None
    assert unschedulable_reason(cluster, three_gpus) == (
        "no eligible node has 3 GPU(s) with 1000 milli-GPU free"
    )


def test_unschedulable_reasons() -> None:
    cluster = FractionalCluster([t4("n0", cpu=4000), NodeSpec("cpu", 64000, 4096, 0, None)])
    assert unschedulable_reason(cluster, PodSpec("a", 1, 1, 1, 100, frozenset({"A10"}))) == (
        "no node with GPU model A10"
    )
    assert "8000 milli-CPU" in unschedulable_reason(cluster, PodSpec("b", 8000, 1, 1, 100))
    assert unschedulable_reason(cluster, PodSpec("c", 3000, 300_000, 0, 0)) == (
        "no eligible node has 300000 MiB memory free"
    )
    # enough CPU only on the CPU node, enough memory only on the GPU node
    assert unschedulable_reason(cluster, PodSpec("d", 8000, 100_000, 0, 0)) == (
        "no node has 8000 milli-CPU free and 100000 MiB memory free at once"
    )


def test_unknown_policy_name() -> None:
    with pytest.raises(ValueError, match="unknown fractional policy 'nope'"):
        make_policy("nope", FragMeasure(SHARE_THEN_WHOLE), random.Random(0))
