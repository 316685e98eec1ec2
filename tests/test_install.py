"""What an install without extras can do, and the exact pins that lie within the package's ranges.

A node (an edge device, a cloud host) installs the package without extras: matplotlib (``report``) and
pyzmq/msgpack (``bench``) are then missing, and nothing a node or the harness runs may need them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
# Top-level modules that only the extras bring.
EXTRAS_ONLY = ("matplotlib", "zmq", "msgpack")
# The packages the distribution ships, and the modules among them that draw figures (the `report` extra).
PACKAGES = ("contract", "harness", "nodes", "netem", "models", "reports")
DRAW_FIGURES = ("reports.figures", "reports.report")

# Imports every module (but those that draw figures) and asks every console script for --help; prints
# one line for each that failed.
IMPORT_ALL = """
import importlib, importlib.metadata, io, pkgutil, sys, traceback
from contextlib import redirect_stdout

failed = []
for pkg in {packages!r}:
    for info in pkgutil.walk_packages(importlib.import_module(pkg).__path__, pkg + "."):
        # __main__ modules run their program when imported; the console scripts below cover them.
        if info.name.endswith(".__main__") or info.name in {skip!r}:
            continue
        try:
            importlib.import_module(info.name)
        except Exception:
            failed.append(f"import {{info.name}}: {{traceback.format_exc(limit=-1).strip()}}")
for ep in importlib.metadata.distribution("localexit").entry_points:
    if ep.group != "console_scripts":
        continue
    try:
        with redirect_stdout(io.StringIO()):
            ep.load()(["--help"])
        failed.append(f"{{ep.name}} --help: returned instead of exiting")
    except SystemExit as exc:
        if exc.code != 0:
            failed.append(f"{{ep.name}} --help: exit {{exc.code}}")
    except Exception:
        failed.append(f"{{ep.name}} --help: {{traceback.format_exc(limit=-1).strip()}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


# Makes the extras' modules fail to import as they do when not installed, before anything else runs.
BLOCK_EXTRAS = """
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {extras!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def _without_extras(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the extras' modules cannot be imported."""
    script = BLOCK_EXTRAS.format(extras=EXTRAS_ONLY) + code
    return subprocess.run(
        [sys.executable, "-c", script], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_the_nodes_the_harness_and_every_command_need_no_extra() -> None:
    proc = _without_extras(IMPORT_ALL.format(packages=PACKAGES, skip=DRAW_FIGURES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_report_without_matplotlib_names_the_extra_to_install(tmp_path: Path) -> None:
    out = tmp_path / "report"
    code = (
        "from reports.cli import main\n"
        f"raise SystemExit(main([{str(tmp_path / 'results.json')!r}, '--out', {str(out)!r}]))\n"
    )
    proc = _without_extras(code)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "localexit[report]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def _requirements(lines: list[str]) -> list[Requirement]:
    return [Requirement(line.split("#", 1)[0]) for line in lines if line.split("#", 1)[0].strip()]


def test_every_exact_pin_lies_within_the_package_s_range() -> None:
    # scripts/setup.sh and tox install with these constraints; a pin outside the range that
    # pyproject.toml asks for makes every install fail to resolve.
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {canonicalize_name(r.name): r for r in _requirements(project["dependencies"])}
    pins = _requirements((ROOT / "constraints.txt").read_text().splitlines())
    assert pins
    for pin in pins:
        specs = list(pin.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{pin}: constraints.txt holds exact versions"
        spec = specs[0]
        name = canonicalize_name(pin.name)
        assert name in wanted, f"{pin}: not a dependency of the package"
        assert wanted[name].specifier.contains(spec.version, prereleases=True), (str(pin), str(wanted[name]))
