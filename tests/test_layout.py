"""The repository's walls (DESIGN section 2) that import-linter cannot say.

The import rules themselves (the core imports no component, the components never import
each other, the placement engine is pure, the layers inside the components) are
import-linter contracts in pyproject.toml, run by ``make lint``.  Here:

* every package directory is listed in pyproject's explicit ``packages`` (an unlisted
  one would be missing from ``pip install .``);
* every module of the core is named in the contract that keeps it off the components (a
  new one would otherwise be unchecked);
* every module of a component is named in its layers contract;
* the repository root shadows nothing: ``import operator`` there is the standard library's,
  and ``python -m pytest`` collects from there.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUP = PYPROJECT["tool"]["setuptools"]
PACKAGE_DIR: dict[str, str] = SETUP["package-dir"]
CONTRACTS: list[dict[str, Any]] = PYPROJECT["tool"]["importlinter"]["contracts"]
NAMESPACE_PORTIONS = {"conspirator.operator"}
"""Mapped directories without an ``__init__.py`` (operator/: see its cli.py)."""


def package_dirs() -> Iterator[tuple[str, Path]]:
    """(import name, directory) of every package under the mapped roots."""
    for name, rel in PACKAGE_DIR.items():
        base = ROOT / rel
        if name in NAMESPACE_PORTIONS:
            yield name, base
        for init in base.rglob("__init__.py"):
            parts = init.parent.relative_to(base).parts
            yield ".".join((name, *parts)) if parts else name, init.parent


def contract(name_start: str) -> dict[str, Any]:
    (c,) = [c for c in CONTRACTS if c["name"].startswith(name_start)]
    return c


def layer_modules(c: dict[str, Any]) -> set[str]:
    """The full names of the modules a layers contract names (inside its containers)."""
    names = {m.strip() for layer in c["layers"] for m in layer.replace(":", "|").split("|")}
    return {f"{box}.{n}" for box in c.get("containers", []) for n in names} or names


def test_every_package_directory_is_listed_in_pyproject() -> None:
    listed = set(SETUP["packages"])
    found = {name for name, _ in package_dirs()}
    assert found - listed == set(), "add these to [tool.setuptools] packages"
    assert listed >= NAMESPACE_PORTIONS
    for name in NAMESPACE_PORTIONS:
        assert not (ROOT / PACKAGE_DIR[name] / "__init__.py").exists(), \
            f"{PACKAGE_DIR[name]}/__init__.py would shadow the standard library"


def test_every_core_module_is_under_the_core_contract() -> None:
    sources = set(contract("The core imports no component")["source_modules"])
    children = {f"conspirator.{p.stem}" for p in (ROOT / "conspirator").glob("*.py")
                if p.stem != "__init__"}
    children |= {f"conspirator.{p.parent.name}"
                 for p in (ROOT / "conspirator").glob("*/__init__.py")}
    assert children - sources == set(), "add them to the contract's source_modules"
    assert sources - children == set(), "the contract names modules that are gone"


@pytest.mark.parametrize(("package", "contract_name", "exempt"), [
    ("conspirator.operator", "Operator layers",
     {"cli", "profilegen", "simulator"}),
    ("conspirator.dpu_agent", "DPU agent layers", set()),
    ("conspirator.deviceplugin", "Node daemon layers", set()),
])
def test_every_component_module_is_in_its_layers(package: str, contract_name: str,
                                                  exempt: set[str]) -> None:
    layered = layer_modules(contract(contract_name))
    base = ROOT / PACKAGE_DIR[package]
    names = {p.stem for p in base.glob("*.py") if p.stem != "__init__"}
    names |= {p.parent.name for p in base.glob("*/__init__.py")}
    missing = {f"{package}.{n}" for n in names - exempt} - layered
    assert missing == set(), "give these a layer in pyproject.toml"


def test_the_root_shadows_no_standard_module() -> None:
    code = "import collections, operator; operator.or_; print(operator.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    assert Path(out.strip()).parent != ROOT / "operator"


def test_python_m_pytest_collects_from_the_root() -> None:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                        "-p", "no:cacheprovider", "tests/operator/test_planner.py"],
                       cwd=ROOT, check=False, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test_arrival_is_placed" in r.stdout
