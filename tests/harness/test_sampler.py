"""The resource sampler: edge CPU, and the CPU other programs used (the check's busy-machine rule).

These tests share the machine with whatever else runs on it, so they never ask how quiet it is. CPU a
process used is compared with the kernel's own count for that process over the same time, and where the
split between "ours" and "other programs" is the point, the machine-wide reading is replaced by a fixed
one, so that "other" is exactly that figure minus what the sampler counted as the harness's own.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import psutil
import pytest

from harness.processes import ResourceSampler

# A machine-wide CPU reading (percent of all CPUs) far above what the test's processes can use, so that
# host_other_percent = HOST_PERCENT × CPUs - (the harness's own CPU) is never clipped at zero.
HOST_PERCENT = 1000.0
# Samples and the kernel's counters cover slightly different stretches of time, and a process's share of
# a loaded machine changes from one moment to the next: agreement within this factor is what is asserted.
AGREE = 0.5
# The kernel counts CPU time in ticks of 10 ms (USER_HZ = 100): a few of them either way at each end of a
# window, which matters when a loaded machine leaves the test's process only a small share.
TICKS_S = 0.05

BUSY_LOOP = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < {seconds}: pass"


def _busy(seconds: float = 6.0) -> subprocess.Popen[bytes]:
    # Bounded, so that it ends on its own even if the test is interrupted before it is killed.
    return subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(seconds=seconds)])


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None:
        proc.kill()
        proc.wait()


def _fixed_host(monkeypatch: pytest.MonkeyPatch) -> float:
    """Make the machine-wide reading HOST_PERCENT; return it in the sampler's unit (100 = one core)."""
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None, percpu=False: HOST_PERCENT)
    return HOST_PERCENT * (psutil.cpu_count() or 1)


class _Mark(NamedTuple):
    ns: int  # CLOCK_MONOTONIC, as the sampler's times_ns
    cpu_s: float  # the process's CPU time so far, as the kernel counts it


def _mark(pid: int) -> _Mark:
    times = psutil.Process(pid).cpu_times()
    return _Mark(time.monotonic_ns(), times.user + times.system)


def _cpu_seconds(
    sampler: ResourceSampler, percents: list[float], start: _Mark, end: _Mark
) -> tuple[float, float]:
    """(CPU-seconds that ``percents`` account for between the marks, the kernel's count for that time).

    Sample i holds the CPU used since sample i-1, so only samples whose whole span lies between the
    marks count, and the kernel's count is scaled to the time those spans cover.
    """
    seen_s = covered_s = 0.0
    times = sampler.times_ns
    for prev, now, pct in zip(times, times[1:], percents[1:], strict=False):
        if start.ns <= prev and now <= end.ns:
            seen_s += pct / 100 * (now - prev) / 1e9
            covered_s += (now - prev) / 1e9
    assert covered_s > 0, "no sample fell between the marks"
    rate = (end.cpu_s - start.cpu_s) / ((end.ns - start.ns) / 1e9)
    return seen_s, rate * covered_s


def test_a_busy_child_is_the_edge_not_other_load(monkeypatch: pytest.MonkeyPatch) -> None:
    # The edge is also in the harness's own process tree; reading its CPU counter twice per sample
    # once made all of its CPU show up as "other programs", which disabled the regression gate.
    host = _fixed_host(monkeypatch)
    child = _busy()
    try:
        with ResourceSampler(child.pid, interval_s=0.1) as sampler:
            time.sleep(0.3)
            start = _mark(child.pid)
            time.sleep(2.0)
            end = _mark(child.pid)
    finally:
        _stop(child)
    edge_s, kernel_s = _cpu_seconds(sampler, sampler.cpu_percent, start, end)
    assert edge_s == pytest.approx(kernel_s, rel=AGREE, abs=TICKS_S)
    # The edge's CPU is part of the harness's own, so it never adds to "other programs".
    for edge, other in zip(sampler.cpu_percent, sampler.host_other_percent, strict=True):
        assert other <= host - edge + 1e-6, (sampler.cpu_percent, sampler.host_other_percent)


def test_a_busy_program_outside_the_harness_is_other_load() -> None:
    # Started by a launcher that exits at once, so this process is not among the busy program's parents;
    # the launcher's output pipe is not passed on, or reading it would wait for the busy program's end.
    launcher = (
        "import subprocess, sys\n"
        "p = subprocess.Popen([sys.executable, '-c', sys.argv[1]], stdin=subprocess.DEVNULL,\n"
        "    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)\n"
        "print(p.pid)"
    )
    edge = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6)"])
    stranger = 0
    try:
        argv = [sys.executable, "-c", launcher, BUSY_LOOP.format(seconds=6.0)]
        stranger = int(subprocess.run(argv, capture_output=True, check=True, timeout=30).stdout)
        assert stranger not in {p.pid for p in psutil.Process().children(recursive=True)}
        with ResourceSampler(edge.pid, interval_s=0.1) as sampler:
            time.sleep(0.3)
            start = _mark(stranger)
            time.sleep(2.0)
            end = _mark(stranger)
    finally:
        if stranger:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stranger, signal.SIGKILL)
        _stop(edge)
    other_s, kernel_s = _cpu_seconds(sampler, sampler.host_other_percent, start, end)
    # A lower bound only: whatever else the machine runs is "other programs" as well.
    assert other_s >= AGREE * kernel_s - TICKS_S, (other_s, kernel_s)


def test_the_process_trees_are_looked_up_only_every_refresh_period(monkeypatch: pytest.MonkeyPatch) -> None:
    # Looking a tree up reads every process's /proc entry; done at every sample it held the computing
    # node's CPU for milliseconds, 10 times a second, and runs were 13 % slower.
    lookups: list[int] = []
    tree = ResourceSampler._tree

    def counting(self: ResourceSampler, pid: int) -> list[psutil.Process]:
        lookups.append(pid)
        return tree(self, pid)

    monkeypatch.setattr(ResourceSampler, "_tree", counting)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        with ResourceSampler(child.pid, interval_s=0.05, tree_refresh_s=0.5) as sampler:
            time.sleep(1.2)
    finally:
        _stop(child)
    assert len(sampler.cpu_percent) >= 10
    assert len(lookups) <= 2 * 3, lookups  # at start, then at most twice more (both trees each time)


def test_a_process_started_after_the_sampler_counts_as_ours_after_a_refresh(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The harness's own tree (nodes, relays) is not "other load": a busy process the harness starts
    # after the sampler must be found at the next refresh, or the check would call the machine busy.
    host = _fixed_host(monkeypatch)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6)"])
    busy = None
    try:
        with ResourceSampler(idle.pid, interval_s=0.1, tree_refresh_s=0.3) as sampler:
            time.sleep(0.3)
            busy = _busy()
            time.sleep(0.6)  # past the next refresh
            start = _mark(busy.pid)
            time.sleep(1.5)
            end = _mark(busy.pid)
    finally:
        _stop(idle)
        _stop(busy)
    own = [host - other for other in sampler.host_other_percent]
    own_s, kernel_s = _cpu_seconds(sampler, own, start, end)
    assert own_s >= AGREE * kernel_s - TICKS_S, (own_s, kernel_s)
