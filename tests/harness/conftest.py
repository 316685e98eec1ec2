"""Fixtures of the harness tests: a tiny checkpoint, fake node programs and a loopback fake testbed."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from harness import hosts as hosts_mod
from harness.config import RunConfig
from harness.runner import NodeCommands, Plan
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from tests.programs import procs  # noqa: F401 -- the fixture, for the tests that start node programs

FAKE_NODE = Path(__file__).with_name("fake_node.py")
#: An ``ssh`` for the hosts tests that need no sshd: it runs the remote command here, with ``sh -c``.
FAKE_SSH = f"#!{sys.executable}\nimport subprocess, sys\nsys.exit(subprocess.run(['sh', '-c', sys.argv[-1]]).returncode)\n"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MEM checkpoint with 4 channels per block, built untrained for the synthetic set (fast to load)."""
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-mem.pt", dataset="synthetic")


@pytest.fixture(scope="session")
def tiny_sem3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ModelConfig(kind="sem", exit=3, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-sem3.pt", dataset="synthetic")


@pytest.fixture
def small_config(tiny_checkpoint: Path) -> RunConfig:
    """5 measured batches of 8 after 1 warm-up batch, on the synthetic set; no calibration (speed)."""
    return RunConfig(
        model="mem",
        exit=2,
        dataset="synthetic",
        checkpoint=tiny_checkpoint,
        samples=48,
        batch_size=8,
        warmup_batches=1,
        calibrate=False,
        isolation="loopback",
        ready_timeout_s=10.0,
        run_timeout_s=30.0,
        busy_retries=0,  # (a shared test machine must not re-run these; test_busy.py covers re-runs)
    )


class FakeCommands(NodeCommands):
    """Runs ``fake_node.py`` in place of ``python -m nodes.*``."""

    def cloud(self, plan: Plan, host: str, port: int) -> list[str]:
        return [sys.executable, str(FAKE_NODE), "cloud", "--listen", f"{host}:{port}"]

    def edge(
        self, plan: Plan, host: str, port: int, cloud: tuple[str, int], threads: int | None
    ) -> list[str]:
        return [sys.executable, str(FAKE_NODE), "edge", "--listen", f"{host}:{port}"]

    def test(self, plan: Plan, edge: tuple[str, int], cloud: tuple[str, int], out: Path) -> list[str]:
        cfg = plan.config
        return [
            sys.executable, str(FAKE_NODE), "test",
            "--edge", f"{edge[0]}:{edge[1]}", "--cloud", f"{cloud[0]}:{cloud[1]}",
            "--samples", str(plan.samples), "--batch-size", str(cfg.batch_size),
            "--warmup-batches", str(cfg.warmup_batches), "--seed", str(cfg.seed), "--out", str(out),
        ]  # fmt: skip


class FakeTestbed:
    """Loopback stand-in for ``netem.Testbed``; records whether it was torn down."""

    instances: list[FakeTestbed] = []  # noqa: RUF012 -- per-test registry, reset by the fixture

    def __init__(self, config: Any, *, isolation: str = "auto", not_applied: list[str] | None = None) -> None:
        self.config = config
        self.isolation = "loopback"
        self.applied: dict[str, dict[str, str]] = {"edge_cloud": {"rate": "fake-shaper"}}
        self.not_applied = list(not_applied or [])
        self.entered = False
        self.exited = False
        self.popened: list[subprocess.Popen[bytes]] = []
        self.cpus_asked: dict[str, Any] = {}
        FakeTestbed.instances.append(self)

    def __enter__(self) -> FakeTestbed:
        self.entered = True
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.exited = True

    def bind_address(self, node: str) -> str:
        return "127.0.0.1"

    def connect_address(self, src: str, dst: str, port: int) -> tuple[str, int]:
        return ("127.0.0.1", port)

    ignore_cpus = False  # a testbed that drops the CPU set (the harness must notice)

    def popen(
        self, node: str, argv: Sequence[str], *, cpus: Any = None, **kw: Any
    ) -> subprocess.Popen[bytes]:
        self.cpus_asked[node] = cpus
        if cpus is not None and not self.ignore_cpus:
            kw["preexec_fn"] = lambda: os.sched_setaffinity(0, cpus)
        proc = subprocess.Popen(list(argv), **kw)
        self.popened.append(proc)
        return proc

    def edge_threads(self) -> int | None:
        return None


@pytest.fixture
def fake_testbed() -> type[FakeTestbed]:
    FakeTestbed.instances = []
    return FakeTestbed


@pytest.fixture(autouse=True)
def _private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Runs that fail keep their node logs in a temporary directory; keep those inside the test's own."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``harness.hosts`` runs its ssh commands through :data:`FAKE_SSH` (every host is this machine)."""
    ssh = tmp_path / "ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    monkeypatch.setattr(hosts_mod, "SSH", str(ssh))
    return ssh
