"""CSV loading: good files load; bad ones name the file, row and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from conspirator.operator.placement.fractional.model import NodeSpec, PodSpec
from conspirator.operator.simulator.traces import TraceError, load_nodes, load_pods

NODE_HEADER = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEADER = "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_nodes_and_pods(tmp_path: Path) -> None:
    nodes = write(tmp_path, "n.csv", NODE_HEADER + "a,32000,1024,0,\nb,96000,2048,8,G2\n")
    pods = write(
        tmp_path,
        "p.csv",
        POD_HEADER + "x,1000,10,1,500,,LS\ny,2000,20,2,1000,V100M16|T4,BE\nz,300,1,0,0,,LS\n",
    )
    assert load_nodes(nodes) == [
        NodeSpec("a", 32000, 1024, 0, None),
        NodeSpec("b", 96000, 2048, 8, "G2"),
    ]
    assert load_pods(pods) == [
        PodSpec("x", 1000, 10, 1, 500),
        PodSpec("y", 2000, 20, 2, 1000, frozenset({"V100M16", "T4"})),
        PodSpec("z", 300, 1, 0, 0),
    ]


def test_gpu_spec_column_is_optional(tmp_path: Path) -> None:
    pods = write(tmp_path, "p.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\nx,1,1,1,5\n")
    assert load_pods(pods) == [PodSpec("x", 1, 1, 1, 5)]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "ok,1,1,1,500,,LS\nbad,1,1,1,abc,,LS\n",
            "openb_pod_list_x.csv row 3, field gpu_milli: expected an integer 0..1000, got 'abc'",
        ),
        (
            "bad,1,1,1,1200,,LS\n",
            "openb_pod_list_x.csv row 2, field gpu_milli: expected an integer 0..1000, got '1200'",
        ),
        (
            "bad,-5,1,1,100,,LS\n",
            "openb_pod_list_x.csv row 2, field cpu_milli: expected an integer >= 0, got '-5'",
        ),
        ("bad,1,1,,100,,LS\n", "row 2, field num_gpu: expected an integer >= 0, got ''"),
        ("bad,1,1,2,500,,LS\n", "row 2, field gpu_milli: a pod with 2 GPUs must take whole"),
        ("bad,1,1,0,500,,LS\n", "row 2, field gpu_milli: expected 0 for a pod with num_gpu 0"),
        ("bad,1,1,1,0,,LS\n", "row 2, field gpu_milli: expected 1..1000 for a pod with GPUs"),
        (",1,1,1,100,,LS\n", "row 2, field name: empty pod name"),
        (
            "bad,1,1,1,100,V100|T4,LS\n",
            "openb_pod_list_x.csv row 2, field gpu_spec: unknown GPU model 'V100'",
        ),
        ("bad,1,1,1,100,T4,LS,extra\n", "row 2: more fields than columns"),
    ],
)
def test_bad_pod_rows(tmp_path: Path, rows: str, message: str) -> None:
    path = write(tmp_path, "openb_pod_list_x.csv", POD_HEADER + rows)
    with pytest.raises(TraceError) as info:
        load_pods(path)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ("a,1,1,2,H800\n", "nodes.csv row 2, field model: unknown GPU model 'H800'"),
        ("a,1,1,2,\n", "nodes.csv row 2, field model: a node with 2 GPU(s) needs a GPU model"),
        ("a,1,1,0,T4\n", "row 2, field model: GPU model 'T4' given for a node without GPUs"),
        ("a,1,1,1,T4\na,1,1,1,T4\n", "nodes.csv row 3, field sn: duplicate node name 'a'"),
        ("a,1.5,1,1,T4\n", "nodes.csv row 2, field cpu_milli: expected an integer >= 0, got '1.5'"),
    ],
)
def test_bad_node_rows(tmp_path: Path, rows: str, message: str) -> None:
    path = write(tmp_path, "nodes.csv", NODE_HEADER + rows)
    with pytest.raises(TraceError) as info:
        load_nodes(path)
    assert message in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=r"nodes\.csv row 1: missing column\(s\) model"):
        load_nodes(write(tmp_path, "nodes.csv", "sn,cpu_milli,memory_mib,gpu\n"))
    with pytest.raises(TraceError, match="empty file"):
        load_pods(write(tmp_path, "empty.csv", ""))
    with pytest.raises(TraceError, match="no pods"):
        load_pods(write(tmp_path, "header.csv", POD_HEADER))
    with pytest.raises(TraceError, match="cannot read"):
        load_nodes(tmp_path / "missing.csv")
