"""Environment metadata recorded in every results file (pyperf-style: collected automatically)."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

from models.devices import cpu_model

logger = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent


CPU_LATENCY_QOS = Path("/dev/cpu_dma_latency")


@contextlib.contextmanager
def cpus_kept_awake(device: Path = CPU_LATENCY_QOS) -> Iterator[bool]:
    """Within the block, ask the kernel (PM QoS, the interface ``cyclictest`` and tuned's latency
    profiles use) to keep idle CPUs out of sleep states: the CPU idle loop then polls, and a wake-up
    does not include a CPU's exit from a sleep state -- on a VM that halts idle vCPUs, a VM exit and
    re-entry. Yields whether the request is in force (it needs root); the kernel drops it when the file
    is closed, so nothing outlives the block, not even a killed process."""
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError:
        yield False
        return
    try:
        os.write(fd, (0).to_bytes(4, sys.byteorder))  # the latency limit, µs, as a native s32
        yield True
    finally:
        os.close(fd)


def git_commit(repo: Path = _REPO_ROOT) -> str | None:
    """HEAD's commit hash (with ``-dirty`` when the tree has changes), or None outside a git checkout."""
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if head.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            check=False,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = head.stdout.strip()
    return f"{commit}-dirty" if status.returncode == 0 and status.stdout.strip() else commit


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def collect_environment() -> dict[str, Any]:
    """Versions, host, kernel, CPU, git commit and the start time (UTC, ISO 8601)."""
    return {
        "python": platform.python_version(),
        "python_executable": sys.executable,
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "host": platform.node(),
        "kernel": platform.release(),
        "os": platform.system(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "git_commit": git_commit(),
        "localexit": _version("localexit"),
        "euid": os.geteuid() if hasattr(os, "geteuid") else None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
