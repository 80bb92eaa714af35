"""Pods, nodes, GPU moves and the grouped cluster state."""

from __future__ import annotations

import pickle

import pytest

from conspirator.operator.placement.fractional.model import (
    Choice,
    FractionalCluster,
    NodeSpec,
    PlacementError,
    PodSpec,
    gpu_moves,
    gpus_fit,
)


def test_pod_validation() -> None:
    with pytest.raises(ValueError, match="only one-GPU pods may share"):
        PodSpec("p", 1000, 0, 2, 500)
    with pytest.raises(ValueError, match="gpu_milli must be 0"):
        PodSpec("p", 1000, 0, 0, 500)
    with pytest.raises(ValueError, match=r"1\.\.1000"):
        PodSpec("p", 1000, 0, 1, 0)


def test_pods_of_one_shape_share_a_class_and_survive_pickling() -> None:
    a = PodSpec("a", 1000, 10, 1, 500)
    b = PodSpec("b", 1000, 99, 1, 500)
    assert a.class_id == b.class_id
    assert a.class_id != PodSpec("c", 1000, 10, 1, 400).class_id
    restored = pickle.loads(pickle.dumps(a))
    assert restored == a
    assert restored.class_id == a.class_id


def test_gpus_fit_and_moves() -> None:
    assert gpus_fit((1000, 600, 300), 1, 600)
    assert not gpus_fit((1000, 600, 300), 2, 1000)
    assert gpus_fit((), 0, 0)
    # tightest GPU first; equal free shares give one move
    assert gpu_moves((1000, 1000, 600, 300), 1, 500) == [
        ((1000, 1000, 300, 100), 600),
        ((1000, 600, 500, 300), 1000),
    ]
    assert gpu_moves((1000, 1000, 600), 2, 1000) == [((600, 0, 0), 1000)]
    assert gpu_moves((1000,), 0, 0) == [((1000,), 0)]
    assert gpu_moves((400,), 1, 500) == []


def test_cluster_groups_identical_nodes_and_places() -> None:
    nodes = [NodeSpec(f"n{i}", 8000, 1000, 2, "T4") for i in range(3)]
    cluster = FractionalCluster(nodes)
    assert len(cluster.groups) == 1
    pod = PodSpec("p", 1000, 100, 1, 300)
    cluster.place(pod, Choice(1, (1,)))
    assert cluster.gpu_left[1] == [1000, 700]
    assert cluster.cpu_left[1] == 7000
    assert cluster.mem_left[1] == 900
    assert cluster.used_gpu_milli == 300
    assert len(cluster.groups) == 2
    assert cluster.group_of(0).first == 0
    assert cluster.group_of(2).first == 0
    assert cluster.group_of(1).gpus == (1000, 700)
    assert cluster.affinity[1] == {"share-gpu": 1}
    # the GPU with 700 free is index 1
    assert cluster.gpu_indices(1, pod, 700) == (1,)


@pytest.mark.parametrize(
    ("choice", "message"),
    [
        (Choice(5, (0,)), "no node"),
        (Choice(0, ()), "distinct GPU"),
        (Choice(0, (0, 0)), "distinct GPU"),
        (Choice(0, (3,)), "lacks share"),
    ],
)
def test_place_rejects_bad_choices(choice: Choice, message: str) -> None:
    cluster = FractionalCluster([NodeSpec("n", 8000, 1000, 2, "T4")])
    with pytest.raises(PlacementError, match=message):
        cluster.place(PodSpec("p", 1000, 100, 1, 300), choice)


def test_place_never_over_allocates() -> None:
    cluster = FractionalCluster([NodeSpec("n", 2000, 1000, 1, "T4")])
    cluster.place(PodSpec("a", 1000, 100, 1, 700), Choice(0, (0,)))
    with pytest.raises(PlacementError, match="lacks share"):
        cluster.place(PodSpec("b", 1000, 100, 1, 400), Choice(0, (0,)))
    with pytest.raises(PlacementError, match="CPU or memory"):
        cluster.place(PodSpec("c", 1500, 100, 0, 0), Choice(0))
    with pytest.raises(PlacementError, match="GPU model"):
        cluster.place(PodSpec("d", 10, 1, 1, 100, frozenset({"A10"})), Choice(0, (0,)))
    assert cluster.gpu_left[0] == [300]
    assert cluster.cpu_left[0] == 1000
