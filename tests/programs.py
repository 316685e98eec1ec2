"""Node programs for the tests: started as processes (wait for their READY line, always kill them), or as
nodes in the test's own event loop (:class:`Nodes`)."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from nodes.cloud import CloudNode
from nodes.edge import EdgeNode
from nodes.test import ClientConfig


def spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``argv`` with its output piped, for :func:`wait_ready` to read."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def spawn_module(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m ARGS`` with this interpreter."""
    return spawn([sys.executable, "-m", *args], env)


def wait_ready(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[str, int]:
    """The address a node program announces on its ``READY host:port`` line; fails with its stderr if it
    exits or stays silent for ``timeout`` seconds."""
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sel.select(timeout=0.5):
            line = proc.stdout.readline()
            if line.startswith("READY "):
                host, _, port = line.split()[1].rpartition(":")
                return host, int(port)
            if not line:
                break
    proc.kill()
    _, err = proc.communicate(timeout=10)
    raise AssertionError(f"{proc.args!r} never printed READY; stderr:\n{err}")


def host_port(addr: tuple[str, int]) -> str:
    """``host:port``, as the programs take an address on their command line."""
    return f"{addr[0]}:{addr[1]}"


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    """The processes a test appends here are killed when it ends, passed or failed."""
    started: list[subprocess.Popen[str]] = []
    try:
        yield started
    finally:
        for p in started:
            if p.poll() is None:
                # (unshare ignores SIGTERM while it waits; killed, it takes the node with it: --kill-child)
                os.kill(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)


@dataclass
class Nodes:
    """A cloud and an edge node started in this process, and a test client's configuration for them."""

    cloud: CloudNode
    edge: EdgeNode
    cloud_addr: tuple[str, int]
    edge_addr: tuple[str, int]

    def client(self, **kw: object) -> ClientConfig:
        base: dict[str, object] = {
            "edge": self.edge_addr,
            "cloud": self.cloud_addr,
            "dataset": "synthetic",
            "batch_size": 32,
            "warmup_batches": 1,
            "timeout": 20.0,
        }
        base.update(kw)
        return ClientConfig(**base)  # type: ignore[arg-type]

    async def close(self) -> None:
        await self.edge.close()
        await self.cloud.close()
