"""The MIG track under a SchedulingPolicy: cost, energy, fairness columns; spot nodes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from conspirator.api.v1alpha1 import SchedulingPolicySpec
from conspirator.operator.placement.cluster import ClusterState
from conspirator.operator.placement.gpus import gpu_model
from conspirator.operator.placement.policy_names import mig_policy
from conspirator.operator.placement.throughput import default_table
from conspirator.operator.plan_spec import (
    PolicyFileError,
    is_spot_node,
    load_policy_file,
    plan_from_spec,
)
from conspirator.operator.simulator import mig_report
from conspirator.operator.simulator.mig import run_mig
from conspirator.operator.simulator.mig_inputs import WorkloadSpec, generate_jobs, load_nodes
from conspirator.operator.simulator.mig_spot import SpotSpec, interruptions, take_down

TABLE = default_table()
ROOT = Path(__file__).resolve().parents[2]
PRICED = ROOT / "operator/simulator/data/mig_nodes_priced.csv"


def test_policy_file_to_plan(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("apiVersion: conspirator.io/v1alpha1\nkind: SchedulingPolicy\n"
                 "metadata: {name: default}\nspec:\n  objective: cost\n  prices:\n"
                 "  - {gpuModel: T4, onDemandUSDPerHour: 0.5, spotUSDPerHour: 0.1}\n"
                 "  fairness: {enabled: true, tenantWeights: [{tenant: a, weight: 3}]}\n"
                 "  preemption: PreemptLowerPriority\n")
    plan = plan_from_spec(load_policy_file(f).spec)
    assert plan.objective == "cost" and plan.fairness and plan.preemption
    assert plan.prices["T4"].spot == 0.1 and "H100-80GB" in plan.prices
    assert plan.tenant_weights == {"a": 3.0}
    f.write_text("kind: SchedulingPolicy\napiVersion: conspirator.io/v1alpha1\n"
                 "spec: {objective: speed}\n")
    with pytest.raises(PolicyFileError, match="objective"):
        load_policy_file(f)
    assert plan_from_spec(None).is_default
    assert is_spot_node({"cloud.google.com/gke-spot": "true"}, None)
    assert not is_spot_node({"conspirator.io/pool": "on-demand"}, SchedulingPolicySpec())


def test_spot_node_taken_back() -> None:
    events = interruptions(["s1", "s2"], SpotSpec(per_day=4, downtime_s=600), 86400.0, 1)
    assert events and all(up - down == 600 for down, up, _ in events)
    assert events == interruptions(["s1", "s2"], SpotSpec(per_day=4, downtime_s=600),
                                   86400.0, 1)
    state = ClusterState.from_nodes([("s1", gpu_model("A100-80GB"), 1)], spot_nodes=["s1"])
    job = generate_jobs(1, TABLE, WorkloadSpec(jobs=1, spot_tolerant_share=1.0))[0].job
    mig_policy("greedy").place(state, [job], TABLE)
    assert state.gpus[0].instances
    assert take_down(state, "s1") == {job.id}
    assert state.gpus[0].down and not state.gpus[0].instances
    assert job.id in mig_policy("greedy").place(state, [job], TABLE).unplaced_ids()


def test_cost_and_energy_columns(tmp_path: Path) -> None:
    nodes = load_nodes(PRICED)
    assert any(n.spot for n in nodes) and any(not n.spot for n in nodes)
    events = generate_jobs(3, TABLE, WorkloadSpec(jobs=25, horizon_s=6 * 3600))
    results = []
    for objective in ("gpus", "cost"):
        plan = plan_from_spec(SchedulingPolicySpec.model_validate({"objective": objective}))
        results.append(run_mig(nodes, events, mig_policy("greedy", plan), TABLE, 3,
                               plan=plan, spot=SpotSpec(per_day=6), label=objective))
    gpus, cost = results
    assert cost.cost_usd < gpus.cost_usd
    assert gpus.energy_kwh > 0 and 0 < gpus.jain_fairness <= 1.0
    mig_report.write_summary("w", results, tmp_path / "s.csv")
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    for col in ("cost_usd", "energy_kwh", "jain_fairness", "fair_share_min", "preemptions"):
        assert col in rows[0]
