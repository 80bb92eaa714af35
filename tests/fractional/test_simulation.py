"""The fractional-track simulator end to end, on a small synthetic trace."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conspirator.operator.placement.fractional.model import NodeSpec, PodSpec
from conspirator.operator.simulator.fractional import (
    LOADS,
    METRICS,
    SUMMARY_COLUMNS,
    SummaryRow,
    arrival_order,
    compare_with_published,
    comparison_markdown,
    discretize,
    node_order,
    read_summary,
    run_fractional,
    run_fractional_runs,
    simulate,
    write_summary,
)


def synthetic_trace(tmp_path: Path) -> tuple[Path, Path]:
    """15 nodes (60 GPUs) and 80 pods asking for 44 GPUs, none more than one GPU,
    so that arrived demand moves in steps under 2% and every load gets a value."""
    nodes = tmp_path / "nodes.csv"
    kinds = [("G2", 8, 64000), ("V100M16", 4, 32000), ("T4", 2, 64000), ("P100", 2, 16000)]
    lines = ["sn,cpu_milli,memory_mib,gpu,model"]
    for model, gpus, cpu in kinds:
        for j in range(4 if model != "P100" else 2):
            lines.append(f"{model}-{j},{cpu},65536,{gpus},{model}")
    lines.append("cpu-0,32000,65536,0,")
    nodes.write_text("\n".join(lines) + "\n", encoding="utf-8")
    shapes = [(2000, 1, 500), (4000, 1, 1000), (1000, 1, 250), (3000, 0, 0), (6000, 1, 1000)]
    rows = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec"]
    for i in range(80):
        cpu, num, milli = shapes[i % len(shapes)]
        spec = "T4|P100" if i % 7 == 0 and num else ""
        rows.append(f"pod-{i:02d},{cpu},{1024 + i},{num},{milli},{spec}")
    pods = tmp_path / "synthetic_pods.csv"
    pods.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return nodes, pods


def test_run_fractional_end_to_end(tmp_path: Path) -> None:
    nodes, pods = synthetic_trace(tmp_path)
    calls: list[tuple[int, int, str]] = []
    rows = run_fractional(
        nodes,
        pods,
        ["conspirator", "fgd", "bestfit"],
        seeds=2,
        progress=lambda done, total, label: calls.append((done, total, label)),
        workers=1,
    )
    assert [c[:2] for c in calls] == [(i, 6) for i in range(1, 7)]
    assert calls[0][2] == "conspirator seed 42"
    keys = {(r.policy, r.metric, r.arrived_gpu_demand_pct) for r in rows}
    policies = ("conspirator", "fgd", "bestfit")
    # 0% may have no arrival within a point of it (the first pod may bring 1.7%)
    assert keys >= {(p, m, k) for p in policies for m in METRICS for k in LOADS if k}
    assert keys <= {(p, m, k) for p in policies for m in METRICS for k in LOADS}
    assert all(r.workload == "synthetic_pods" and r.n_seeds == 2 for r in rows)
    alloc = {
        (r.policy, r.arrived_gpu_demand_pct): r.mean_over_seeds
        for r in rows
        if r.metric == METRICS[0]
    }
    for policy in policies:
        assert 0 < alloc[(policy, 10)] <= alloc[(policy, 130)] <= 100
    # rows come metric by metric, as in the published file
    assert [r.metric for r in rows] == sorted((r.metric for r in rows), key=METRICS.index)

    out = tmp_path / "out" / "fractional_summary.csv"
    write_summary(rows, out)
    with out.open(encoding="utf-8") as handle:
        assert next(csv.reader(handle)) == list(SUMMARY_COLUMNS)
    assert read_summary(out) == rows


def test_runs_record_failures_with_reasons(tmp_path: Path) -> None:
    nodes, pods = synthetic_trace(tmp_path)
    (run,) = run_fractional_runs(nodes, pods, ["fgd"], seeds=1, workers=1)
    assert run.arrivals > 80  # tuned up to 130% of the 60 GPUs
    assert run.placed + len(run.failed) == run.arrivals
    assert run.failed and all(f.reason.startswith("no ") for f in run.failed)


def test_unknown_policy_fails_before_running(tmp_path: Path) -> None:
    nodes, pods = synthetic_trace(tmp_path)
    with pytest.raises(ValueError, match="unknown fractional policy nope"):
        run_fractional(nodes, pods, ["nope"], seeds=1, workers=1)


def test_arrival_order_shuffles_then_tunes_up_to_the_target() -> None:
    pods = [PodSpec(f"p{i}", 1000, 1, 1, 500) for i in range(10)]  # 5 GPUs of demand
    order = arrival_order(pods, total_gpu_milli=10_000, seed=42, tune_ratio=1.3)
    assert sorted(p.name for p in order[:10]) == sorted(p.name for p in pods)
    assert order[:10] == arrival_order(pods, 10_000, 42, 1.3)[:10]
    assert order[:10] != arrival_order(pods, 10_000, 43, 1.3)[:10]
    assert all("-tuned-" in p.name for p in order[10:])
    assert sum(p.total_gpu_milli for p in order) == 13_000
    # too much demand: random pods are dropped down to the target
    cut = arrival_order(pods, total_gpu_milli=2_000, seed=1, tune_ratio=1.0)
    assert sum(p.total_gpu_milli for p in cut) == 2_000


def test_node_order_is_a_seeded_permutation() -> None:
    nodes = [NodeSpec(f"n{i}", 1, 1, 0, None) for i in range(20)]
    assert sorted(n.name for n in node_order(nodes, 42)) == sorted(n.name for n in nodes)
    assert node_order(nodes, 42) == node_order(list(reversed(nodes)), 42)
    assert node_order(nodes, 42) != node_order(nodes, 43)


def test_discretize_averages_the_arrivals_of_each_load() -> None:
    total = 10_000
    arrived = [0, 40, 60, 1_000, 1_040]  # 0%, 0.4%, 0.6%, 10%, 10.4%
    used = [0, 40, 60, 1_000, 1_000]
    frag = [1_000.0, 1_000.0, 1_000.0, 900.0, 800.0]
    series = discretize(arrived, used, frag, total)
    alloc = series["gpu_alloc_ratio_pct"]
    assert alloc[0] == pytest.approx(0.2)  # arrivals at 0% and 0.4%
    assert alloc[1] == pytest.approx(0.6)  # exactly 1%: the 0.6% one
    assert alloc[10] == pytest.approx(10.0)
    assert 5 not in alloc  # nothing within one point of 5%
    assert alloc[11] == pytest.approx(10.0)  # none at 11%: the 10% ones
    # per arrival: 100 * frag / idle, rounded to 2 decimals, as FGD logs it
    assert series["frag_ratio_pct_of_idle"][10] == pytest.approx((10.0 + 8.89) / 2)
    assert series["frag_amount_pct"][10] == pytest.approx(8.5)


def test_comparison_with_published(tmp_path: Path) -> None:
    ours = [
        SummaryRow("w", "fgd", "gpu_alloc_ratio_pct", 130, 95.0, 10),
        SummaryRow("w", "conspirator", "gpu_alloc_ratio_pct", 130, 96.0, 10),
        SummaryRow("w", "bestfit", "gpu_alloc_ratio_pct", 90, 89.0, 10),
        SummaryRow("w", "random", "gpu_alloc_ratio_pct", 90, 85.0, 10),
    ]
    published = [
        SummaryRow("w", "06-FGD", "gpu_alloc_ratio_pct", 130, 95.5, 10),
        SummaryRow("w", "05-BestFit", "gpu_alloc_ratio_pct", 90, 90.0, 10),
    ]
    joined = compare_with_published(ours, published)
    assert [(c.policy, c.published_policy, c.difference) for c in joined] == [
        ("fgd", "06-FGD", -0.5),
        ("conspirator", "06-FGD", 0.5),
        ("bestfit", "05-BestFit", -1.0),
    ]
    table = comparison_markdown(joined, loads=(130,))
    line = "| w | conspirator | 06-FGD | gpu_alloc_ratio_pct | 96.00 / 95.50 (+0.50) |"
    assert line in table
    assert "bestfit" not in table


def test_simulate_is_reproducible(tmp_path: Path) -> None:
    from conspirator.operator.simulator.traces import load_nodes, load_pods

    nodes_csv, pods_csv = synthetic_trace(tmp_path)
    nodes, pods = load_nodes(nodes_csv), load_pods(pods_csv)
    a = simulate(nodes, pods, "conspirator", 42)
    b = simulate(nodes, pods, "conspirator", 42)
    assert a.series == b.series and a.failed == b.failed
