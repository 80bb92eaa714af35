"""The generated CRDs: up to date, structural, and shaped as the API server wants."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conspirator.api import KINDS
from conspirator.api.crdgen import REGENERATE, build_crd, generate, main, render
from conspirator.api.structural import SchemaTranslationError, structural_schema

from .helpers import CRDS, DOCS

FORBIDDEN = ("$ref", "$defs", "anyOf", "allOf", "oneOf", "not", "definitions", "uniqueItems")


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


def _schemas() -> Iterator[tuple[str, dict[str, Any]]]:
    for cls in KINDS:
        crd = build_crd(cls.crd, cls.__doc__ or "")
        yield cls.crd.kind, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_committed_crds_and_docs_are_up_to_date(tmp_path: Path) -> None:
    out, docs = tmp_path / "crds", tmp_path / "api.md"
    generate(out, docs)
    generated = sorted(p.name for p in out.iterdir())
    committed = sorted(p.name for p in CRDS.glob("*.yaml"))
    assert committed == generated, (
        f"crds/ holds other files than the generator writes; run: {REGENERATE}"
    )
    for name in generated:
        assert (CRDS / name).read_bytes() == (out / name).read_bytes(), (
            f"crds/{name} is stale; regenerate with: {REGENERATE}"
        )
    assert DOCS.read_bytes() == docs.read_bytes(), (
        f"docs/api.md is stale; regenerate with: {REGENERATE}"
    )


def test_check_mode_reports_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crds"
    assert main(["--out", str(out), "--check"]) == 1
    assert not out.exists(), "--check must write nothing"
    assert REGENERATE in capsys.readouterr().err
    assert main(["--out", str(out)]) == 0
    assert main(["--out", str(out), "--check"]) == 0
    first = next(out.iterdir())
    first.write_text(first.read_text() + "# edited\n")
    assert main(["--out", str(out), "--check"]) == 1


def test_generation_is_deterministic() -> None:
    assert render() == render()


def test_files_parse_as_one_crd_each() -> None:
    files = render()
    assert sorted(files) == sorted(f"{c.crd.plural}.conspirator.io.yaml" for c in KINDS)
    for name, text in files.items():
        docs = list(yaml.safe_load_all(text))
        assert len(docs) == 1, name
        crd = docs[0]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["kind"] == "CustomResourceDefinition"
        assert crd["metadata"]["name"] == name.removesuffix(".yaml")


@pytest.mark.parametrize("kind,schema", list(_schemas()), ids=[c.crd.kind for c in KINDS])
def test_schema_is_structural(kind: str, schema: dict[str, Any]) -> None:
    for path, node in _nodes(schema):
        where = f"{kind}{path}"
        for key in FORBIDDEN:
            assert key not in node, f"{where}: {key}"
        assert "nullable" not in node, f"{where}: nothing is nullable"
        assert "type" in node, f"{where}: no type"
        if "properties" in node:
            assert node["type"] == "object", where
            assert "additionalProperties" not in node, where
            for req in node.get("required", []):
                assert req in node["properties"], f"{where}: required {req} unknown"
        if node["type"] == "array":
            assert "maxItems" in node, f"{where}: unbounded list (CEL cost)"
            if node.get("x-kubernetes-list-type") == "map":
                item = node["items"]
                for key in node["x-kubernetes-list-map-keys"]:
                    assert key in item.get("required", []) or "default" in item["properties"][key]
        if node["type"] == "string" and path.count(".") > 1 and not path.startswith(".metadata"):
            assert {"maxLength", "enum", "format"} & set(node), f"{where}: unbounded string"
        for bound in ("exclusiveMinimum", "exclusiveMaximum"):
            if bound in node:
                assert node[bound] is True, f"{where}: {bound} must be a boolean"
        for rule in node.get("x-kubernetes-validations", []):
            assert set(rule) <= {"rule", "message", "fieldPath", "reason", "messageExpression"}
            assert rule["rule"] and rule["message"], where


def test_no_forbidden_keyword_anywhere_in_files() -> None:
    for name, text in render().items():
        for word in ("$ref", "anyOf", "allOf", "oneOf", "nullable", "title:"):
            assert word not in text, f"{name}: {word}"


def test_crd_envelope() -> None:
    expected = {
        "InferenceJob": ("Namespaced", ["ij"]),
        "GPUNode": ("Cluster", ["gn"]),
        "ModelProfile": ("Cluster", ["mp"]),
        "SchedulingPolicy": ("Cluster", ["sp"]),
    }
    for cls in KINDS:
        crd = build_crd(cls.crd, cls.__doc__ or "")
        spec = crd["spec"]
        scope, short = expected[cls.crd.kind]
        assert spec["group"] == "conspirator.io"
        assert spec["scope"] == scope
        assert spec["names"]["shortNames"] == short
        assert spec["names"]["categories"] == ["conspirator"]
        (version,) = spec["versions"]
        assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
        assert version["subresources"] == {"status": {}}
        columns = [c["name"] for c in version["additionalPrinterColumns"]]
        assert columns[-1] == "Age"
        schema = version["schema"]["openAPIV3Schema"]
        assert set(schema["properties"]) == {"apiVersion", "kind", "metadata", "spec", "status"}


def test_inferencejob_printer_columns() -> None:
    from conspirator.api import InferenceJob

    crd = build_crd(InferenceJob.crd, "")
    cols = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    for name in ("Phase", "Replicas", "Profiles", "Throughput", "Demand", "Age"):
        assert name in cols and cols[name].get("priority", 0) == 0
    assert cols["Throughput"]["jsonPath"] == ".status.estimatedThroughput"
    assert cols["Demand"]["jsonPath"] == ".status.demand"
    assert cols["Observed"]["jsonPath"] == ".status.observed.offeredRPS"
    assert cols["P99ms"]["jsonPath"] == ".status.observed.p99LatencyMs"
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]["properties"]
    assert status["replicaCount"]["type"] == "integer"
    assert status["profiles"]["type"] == "string"


def test_inferencejob_schema_details() -> None:
    from conspirator.api import InferenceJob

    spec = structural_schema(InferenceJob.crd.spec_model)
    props = spec["properties"]
    accel = props["allowedAccelerators"]
    assert accel["x-kubernetes-list-type"] == "set"
    assert "A100-80GB" in accel["items"]["enum"]
    rps = props["demand"]["properties"]["requestsPerSecond"]
    assert rps == rps | {"type": "number", "minimum": 0, "exclusiveMinimum": True}
    assert props["dataPath"]["properties"]["maxBatch"]["minimum"] == 1
    assert props["dataPath"]["properties"]["dtype"]["default"] == "float32"
    assert props["migration"]["default"] == {}
    assert props["migration"]["properties"]["allowed"]["default"] is True
    rules = props["migration"]["x-kubernetes-validations"]
    assert any("disruptionBudget" in r["rule"] for r in rules)
    assert "tenant" not in spec["required"] and "default" not in props["tenant"]
    assert set(spec["required"]) == {"model", "demand", "dataPath"}


def test_translator_refuses_real_unions() -> None:
    from pydantic import BaseModel

    class Union(BaseModel):
        x: int | str

    with pytest.raises(SchemaTranslationError, match="union"):
        structural_schema(Union)


def test_translator_turns_optional_into_plain_type() -> None:
    from pydantic import BaseModel, Field

    class Opt(BaseModel):
        x: int | None = Field(default=None, gt=0)

    schema = structural_schema(Opt)
    assert schema["properties"]["x"] == {"type": "integer", "minimum": 0, "exclusiveMinimum": True}


def test_cli_plugin_hook(tmp_path: Path) -> None:
    import argparse

    from conspirator.api.crdgen import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["crdgen", "--out", str(tmp_path), "--check"])
    assert args.func(args) == 1
    args = parser.parse_args(["crdgen", "--out", str(tmp_path)])
    assert args.func(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(render())
