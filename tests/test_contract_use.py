"""How the packages use the contract: one error root, plain packages, each shared name defined once, and
light programs that never load torch."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import types
from pathlib import Path

import pytest

import contract.names
import contract.results
from contract.errors import LocalExitError

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "models", "nodes", "netem", "harness", "reports")
#: What starts as its own process, or is imported by one, without running a model: the test node, the
#: testbed's helpers, the harness's command line, the report; and every package's namespace.
LIGHT = (
    "contract",
    "models",
    "nodes",
    "netem",
    "harness",
    "reports",
    "nodes.test",
    "netem.delayline",
    "harness.cli",
)


@pytest.mark.parametrize("module", LIGHT)
def test_light_imports_do_not_load_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", f"importing {module} loads torch"


def test_packages_are_plain_modules() -> None:
    """No lazy lookup table, no swapped module class: a package's names are what it imports."""
    for name in PACKAGES:
        package = importlib.import_module(name)
        assert type(package) is types.ModuleType, name
        assert "__getattr__" not in vars(package), name
        for public in getattr(package, "__all__", ()):
            assert public in vars(package), f"{name}.{public} is listed in __all__ but not imported"


def test_every_package_error_roots_in_the_contract() -> None:
    from harness.errors import HarnessError
    from models.errors import ModelError
    from netem.errors import NetemError
    from nodes.errors import NodeError
    from reports.errors import ReportError

    for error in (HarnessError, ModelError, NetemError, NodeError, ReportError):
        assert issubclass(error, LocalExitError), error


def _shared_names() -> set[str]:
    names = {n for n in vars(contract.names) if n.isupper() and not n.startswith("_")}
    names |= {n for n in vars(contract.results) if n.isupper() and not n.startswith("_")}
    return names | {"ModelKind", "ExitSource", "Isolation"}


def test_each_shared_name_and_schema_id_is_defined_only_in_the_contract() -> None:
    """Outside the contract, no module binds a name the contract defines, nor a file's schema id."""
    shared = _shared_names()
    found = []
    for package in PACKAGES[1:]:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in tree.body:
                targets = (
                    node.targets
                    if isinstance(node, ast.Assign)
                    else [node.target]
                    if isinstance(node, ast.AnnAssign)
                    else []
                )
                for target in targets:
                    if not isinstance(target, ast.Name):
                        continue
                    value = getattr(node, "value", None)
                    schema_like = (
                        target.id.endswith(("_SCHEMA", "_FORMAT"))
                        and isinstance(value, ast.Constant)
                        and str(value.value).startswith("localexit")
                    )
                    if target.id in shared or schema_like:
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno} {target.id}")
    assert not found, "defined outside the contract: " + ", ".join(found)
