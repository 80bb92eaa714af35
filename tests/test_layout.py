"""The repository's walls (DESIGN section 2), checked on the source.

* every package directory is listed in pyproject's explicit ``packages`` (an unlisted
  one would be missing from ``pip install .``);
* the core (``conspirator``, including ``conspirator.api``) imports no component;
* the placement engine is pure: no kopf, no kubernetes client, no grpc;
* the operator never imports the node daemon or the DPU agent, and the DPU agent
  imports neither the operator nor the node daemon.
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUP = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUP["package-dir"]
COMPONENTS = ("conspirator.operator", "conspirator.deviceplugin", "conspirator.dpu_agent")


def package_dirs() -> Iterator[tuple[str, Path]]:
    """(import name, directory) of every package under the mapped roots."""
    for name, rel in PACKAGE_DIR.items():
        base = ROOT / rel
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            yield ".".join((name, *parts)) if parts else name, init.parent


def modules(package: str) -> Iterator[Path]:
    for name, d in package_dirs():
        if name == package or name.startswith(package + "."):
            yield from d.glob("*.py")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def offenders(package: str, forbidden: tuple[str, ...], skip: tuple[str, ...] = ()
              ) -> list[str]:
    bad = []
    for path in modules(package):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if any(s in name for s in skip):
            continue
        for imp in imports(path):
            if any(imp == f or imp.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(ROOT)} imports {imp}")
    return bad


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(SETUP["packages"])
    found = {name for name, _ in package_dirs()}
    assert found - listed == set(), "add these to [tool.setuptools] packages"


def test_core_imports_no_component() -> None:
    core = [p for p in offenders("conspirator", COMPONENTS)
            if not p.startswith(tuple(PACKAGE_DIR[c] for c in COMPONENTS))]
    assert core == []


def test_placement_is_pure() -> None:
    assert offenders("conspirator.operator.placement",
                     ("kopf", "kubernetes", "grpc", "conspirator.operator.simulator",
                      "conspirator.deviceplugin", "conspirator.dpu_agent")) == []


@pytest.mark.parametrize(("package", "forbidden"), [
    ("conspirator.operator", ("conspirator.deviceplugin", "conspirator.dpu_agent")),
    ("conspirator.dpu_agent", ("conspirator.operator", "conspirator.deviceplugin")),
    ("conspirator.deviceplugin", ("conspirator.operator", "conspirator.dpu_agent")),
])
def test_components_do_not_import_each_other(package: str, forbidden: tuple[str, ...]) -> None:
    assert offenders(package, forbidden) == []
