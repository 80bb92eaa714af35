"""Generate the CRD YAML (and the API reference) from the pydantic models.

Usage, from the repository root::

    python -m conspirator.api.crdgen --out crds/ --docs docs/api.md
    python -m conspirator.api.crdgen --out crds/ --docs docs/api.md --check

writes ``<out>/<plural>.conspirator.io.yaml`` for every kind (and, with
``--docs``, the Markdown reference).  ``--check`` writes nothing and exits 1
when a file differs from what would be generated.  The output is
deterministic: keys sorted, lists in model order, no timestamps.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from conspirator.api.structural import clean_description, structural_schema
from conspirator.api.v1alpha1 import GROUP, KINDS, VERSION, CRDInfo

REGENERATE = "python -m conspirator.api.crdgen --out crds/ --docs docs/api.md"
"""The command that regenerates ``crds/`` and ``docs/api.md`` from the repository root."""
DESCRIPTION = "Generate the conspirator.io CRDs (and the API reference) from the models."

HEADER = f"# Generated from conspirator.api by `{REGENERATE}`. Do not edit.\n"


def crd_filename(info: CRDInfo) -> str:
    return f"{info.name}.yaml"


def openapi_schema(info: CRDInfo, description: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one kind: the standard envelope around spec and status."""
    spec = structural_schema(info.spec_model)
    if not info.spec_required:
        spec["default"] = {}
    status = structural_schema(info.status_model)
    schema: dict[str, Any] = {
        "type": "object",
        "description": clean_description(description),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this object: conspirator.io/v1alpha1.",
            },
            "kind": {"type": "string", "description": f"Kind of this object: {info.kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    if info.spec_required:
        schema["required"] = ["spec"]
    return schema


def build_crd(info: CRDInfo, description: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind, as a plain dict."""
    columns = []
    for col in info.printer_columns:
        entry: dict[str, Any] = {"name": col.name, "type": col.type, "jsonPath": col.json_path}
        if col.description:
            entry["description"] = col.description
        if col.priority:
            entry["priority"] = col.priority
        if col.format:
            entry["format"] = col.format
        columns.append(entry)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": info.name,
            "labels": {"app.kubernetes.io/part-of": "conspirator"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": list(info.categories),
            },
            "scope": info.scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": openapi_schema(info, description)},
                }
            ],
        },
    }


def dump_yaml(obj: Any) -> str:
    """Deterministic YAML: sorted keys, block style, no aliases, no line folding."""

    class _NoAliases(yaml.SafeDumper):
        def ignore_aliases(self, data: Any) -> bool:
            return True

    text: str = yaml.dump(
        obj,
        Dumper=_NoAliases,
        sort_keys=True,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 16,
    )
    return text


def render() -> dict[str, str]:
    """File name -> content of every generated CRD."""
    files: dict[str, str] = {}
    for cls in KINDS:
        info = cls.crd
        files[crd_filename(info)] = HEADER + dump_yaml(build_crd(info, cls.__doc__ or ""))
    return files


def _write_or_check(path: Path, content: str, check: bool) -> bool:
    """Write ``content`` to ``path`` (or, with ``check``, compare); True when up to date."""
    current = path.read_text() if path.exists() else None
    if current == content:
        return True
    if not check:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
    return False


def generate(out: Path, docs: Path | None = None, check: bool = False) -> list[Path]:
    """Write (or check) the CRDs under ``out`` and the reference at ``docs``.

    Returns the paths that were stale (written, or with ``check`` left as they are).
    """
    stale: list[Path] = []
    for name, content in sorted(render().items()):
        path = out / name
        if not _write_or_check(path, content, check):
            stale.append(path)
    if docs is not None:
        from conspirator.api.docgen import render_docs

        if not _write_or_check(docs, render_docs(), check):
            stale.append(docs)
    return stale


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("crds"), help="CRD directory (crds/)")
    parser.add_argument("--docs", type=Path, default=None, help="also write the API reference")
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )


def run(args: argparse.Namespace) -> int:
    """Generate (or check) as ``args`` say; the exit code."""
    stale = generate(args.out, args.docs, args.check)
    for path in stale:
        if args.check:
            print(f"stale: {path}", file=sys.stderr)
        else:
            print(f"wrote: {path}")
    if args.check and stale:
        print(f"regenerate with: {REGENERATE}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Plugin hook of the ``conspirator`` CLI: adds ``conspirator crdgen``."""
    parser = subparsers.add_parser(
        "crdgen", help="generate the CRDs and API reference", description=DESCRIPTION
    )
    _add_arguments(parser)
    parser.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m conspirator.api.crdgen", description=DESCRIPTION
    )
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
