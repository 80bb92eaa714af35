"""The chart's generated and derived files agree with the code they come from.

`make generate` writes them; each test names the command that fixes it.  What the chart
renders is checked by the real helm binary in e2e/tests/test_helm.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
from importlib.metadata import version
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from conspirator.api.crdgen import generate
from conspirator.deviceplugin.metrics import Metrics as NodeMetrics
from conspirator.operator.metrics import Metrics
from conspirator.operator.profilegen import profiles, render

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "conspirator"
REGENERATE = "make generate"


def test_chart_crds_are_the_generated_ones(tmp_path: Path) -> None:
    generate(tmp_path / "crds", tmp_path / "api.md")
    expected = {p.name: p.read_bytes() for p in (tmp_path / "crds").glob("*.yaml")}
    # kopf's peering CRDs ship with the operator (operator/deploy/peering.yaml).
    expected["peerings.kopf.dev.yaml"] = (
        REPO / "operator" / "deploy" / "peering.yaml").read_bytes()
    committed = {p.name: p.read_bytes() for p in (CHART / "crds").glob("*.yaml")}
    assert sorted(committed) == sorted(expected), (
        f"charts/conspirator/crds/ differs; run {REGENERATE}")
    for name, data in expected.items():
        assert committed[name] == data, (
            f"charts/conspirator/crds/{name} is stale; run {REGENERATE}")


def test_default_profiles_are_the_engines() -> None:
    committed = (CHART / "files" / "modelprofiles.yaml").read_text()
    assert committed == render(profiles()), f"files/modelprofiles.yaml is stale; run {REGENERATE}"
    docs = [d for d in yaml.safe_load_all(committed) if d]
    assert {d["metadata"]["name"] for d in docs} == {d["spec"]["model"] for d in docs}
    assert all(0 < len(d["spec"]["entries"]) <= 1024 for d in docs)  # the CRD's maxItems


def _metric_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    return names


def _agent_registry() -> CollectorRegistry:
    """The DPU agent's metrics over a real (idle) agent core and staging pool."""
    from conspirator.dpu_agent.core import AgentConfig, AgentCore
    from conspirator.dpu_agent.metrics import registry_for
    from conspirator.dpu_agent.staging import StagingPool

    class Idle:
        def __init__(self) -> None:
            cfg = AgentConfig()
            self.core = AgentCore(cfg)
            self.pool = StagingPool(cfg.staging_budget, cfg.max_payload)

    return registry_for(Idle(), "n")


def test_dashboard_queries_only_metrics_that_exist() -> None:
    op = Metrics()
    node = NodeMetrics("n")
    # Counters and histograms only show their samples once touched.
    node.devices_advertised.labels(node="n", resource="r", health="Healthy").set(1)
    agent = _agent_registry()
    known = _metric_names(op.registry) | _metric_names(node.registry) | _metric_names(agent)
    known |= {f"{n}_total" for n in known} | {f"{n}_bucket" for n in known}
    dash = json.loads((CHART / "files" / "dashboards" / "conspirator.json").read_text())
    used: set[str] = set()
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            used.update(re.findall(r"\bconspirator_[a-z0-9_]+", target["expr"]))
    assert used, "the dashboard queries nothing"
    missing = sorted(used - known)
    assert not missing, f"the dashboard queries metrics no component exports: {missing}"
    # Every metric of the operator and the node daemon has a panel.
    families = ({f.name for f in op.registry.collect()} | {f.name for f in node.registry.collect()}
                | {f.name for f in agent.collect()})
    unused = sorted(f for f in families
                    if not any(u == f or u.startswith(f + "_") for u in used))
    assert not unused, f"metrics without a dashboard panel: {unused}"


def test_values_table_of_the_chart_readme_is_fresh() -> None:
    spec = importlib.util.spec_from_file_location("chart_docs", REPO / "charts" / "chart_docs.py")
    assert spec is not None and spec.loader is not None
    docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(docs)
    values = (CHART / "values.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    assert docs.render(readme, values) == readme, f"the chart README is stale; run {REGENERATE}"
    # Every value is documented: a leaf without its own comment sits under a documented key.
    documented = {key for key, _, _ in docs.rows(values)}
    loaded = yaml.safe_load(values)

    def leaves(d: dict[str, object], prefix: str = "") -> list[str]:
        out: list[str] = []
        for k, v in d.items():
            path = f"{prefix}{k}"
            if isinstance(v, dict) and v and path not in documented:
                out.extend(leaves(v, path + "."))
            else:
                out.append(path)
        return out

    undocumented = [p for p in leaves(loaded) if p not in documented]
    assert not undocumented, f"values without a '# --' comment: {undocumented}"


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == version("conspirator")


def test_values_schema_covers_every_default_value() -> None:
    """Every key of values.yaml is declared in values.schema.json (additionalProperties is
    false everywhere, so a key missing from the schema would make the defaults invalid)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(v: object, s: dict[str, object], path: str) -> None:
        if not isinstance(v, dict) or s.get("type") != "object" or "properties" not in s:
            return
        props = s["properties"]
        assert isinstance(props, dict)
        for key, sub in v.items():
            if s.get("additionalProperties") is False:
                assert key in props, f"values.yaml {path}{key} is not in values.schema.json"
            if key in props:
                walk(sub, props[key], f"{path}{key}.")

    walk(values, schema, "")
