"""A node program started on its own gets the environment settings the harness gives the nodes it starts
(``nodes.cli.NODE_ENV_DEFAULTS``), so a standalone run matches a harness run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nodes import cli

ROOT = Path(__file__).resolve().parents[2]


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


def test_each_role_gets_its_defaults_unless_the_environment_sets_them() -> None:
    assert cli.missing_env_defaults("edge", {}) == dict(cli.NODE_ENV_DEFAULTS)
    assert "OMP_PROC_BIND" not in cli.missing_env_defaults("test", {})  # (computes nothing: unbound)
    assert "GLIBC_TUNABLES" in cli.missing_env_defaults("test", {})
    assert "GOMP_SPINCOUNT" not in cli.missing_env_defaults("cloud", {"GOMP_SPINCOUNT": "1"})


def test_the_harness_gives_its_nodes_everything_so_none_of_them_re_executes() -> None:
    from harness.runner import node_env

    class Bed:
        def edge_threads(self) -> None:
            return None

    for role in ("test", "edge", "cloud"):
        assert cli.missing_env_defaults(role, node_env(Bed(), role)) == {}  # type: ignore[arg-type]


def test_a_node_called_with_its_own_arguments_is_never_re_executed(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in cli.NODE_ENV_DEFAULTS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.delenv(cli.APPLIED_ENV, raising=False)
    cli.apply_env_defaults("edge", ["--listen", "127.0.0.1:0"])  # (re-executing would replace pytest)
    assert "GLIBC_TUNABLES" not in os.environ


@pytest.mark.slow
def test_a_standalone_node_applies_the_missing_defaults_before_it_runs(tiny_checkpoint: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in cli.NODE_ENV_DEFAULTS and k != cli.APPLIED_ENV}
    env["GOMP_SPINCOUNT"] = "123"  # the user's own setting wins
    env["PYTHONPATH"] = str(ROOT)
    argv = [
        sys.executable,
        "-m",
        "nodes.cloud",
        "--listen",
        "127.0.0.1:0",
        "--checkpoint",
        str(tiny_checkpoint),
    ]
    proc = subprocess.Popen(
        [*argv, "--exit", "2"], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # (the READY line, once the re-executed node is up)
        assert line.startswith("READY "), line
        seen = _environ(proc.pid)  # (the same process: it replaced its own image)
        # (glibc parses the variable in place as the process starts: the block shows its first tunable)
        assert seen["GLIBC_TUNABLES"] == cli.NODE_ENV_DEFAULTS["GLIBC_TUNABLES"].split(":")[0]
        assert cli.NODE_ENV_DEFAULTS["GLIBC_TUNABLES"].startswith(seen["GLIBC_TUNABLES"])
        assert seen["OMP_PROC_BIND"] == "true"
        assert seen["GOMP_SPINCOUNT"] == "123"
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "applied the environment defaults missing at start" in err
    assert f"GLIBC_TUNABLES={cli.NODE_ENV_DEFAULTS['GLIBC_TUNABLES']}" in err and "GOMP_SPINCOUNT=" not in err


@pytest.mark.slow
def test_a_standalone_node_with_every_setting_runs_as_it_is(tiny_checkpoint: Path) -> None:
    env = {**os.environ, **cli.NODE_ENV_DEFAULTS, "PYTHONPATH": str(ROOT)}
    env.pop(cli.APPLIED_ENV, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodes.cloud", "--checkpoint", str(tiny_checkpoint), "--exit", "2"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("READY ")
        time.sleep(0.1)
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert "applied the environment defaults" not in err
