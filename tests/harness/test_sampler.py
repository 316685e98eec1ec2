"""The resource sampler: edge CPU, and the CPU other programs used (the check's busy-machine rule)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

import psutil
import pytest

from harness.processes import ResourceSampler


def test_a_busy_child_is_the_edge_not_other_load() -> None:
    # The edge is also in the harness's own process tree; reading its CPU counter twice per sample
    # once made all of its CPU show up as "other programs", which disabled the regression gate.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"]
    )
    try:
        with ResourceSampler(child.pid, interval_s=0.1) as sampler:
            time.sleep(2.0)
    finally:
        child.kill()
        child.wait()
    edge = statistics.mean(sampler.cpu_percent[2:])
    other = statistics.mean(sampler.host_other_percent[2:])
    assert edge > 50, sampler.cpu_percent
    assert other < edge / 2, (sampler.host_other_percent, sampler.cpu_percent)


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
        child.kill()
        child.wait()
    assert len(sampler.cpu_percent) >= 10
    assert len(lookups) <= 2 * 3, lookups  # at start, then at most twice more (both trees each time)


def test_a_process_started_after_the_sampler_counts_as_ours_after_a_refresh() -> None:
    # The harness's own tree (nodes, relays) is not "other load": a busy process the harness starts
    # after the sampler must be found at the next refresh, or the check would call the machine busy.
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(6)"])
    busy = None
    try:
        with ResourceSampler(idle.pid, interval_s=0.1, tree_refresh_s=0.3) as sampler:
            time.sleep(0.3)
            busy = subprocess.Popen(
                [sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 4: pass"]
            )
            time.sleep(2.5)
    finally:
        for proc in (idle, busy):
            if proc is not None:
                proc.kill()
                proc.wait()
    late = sampler.host_other_percent[-12:]
    assert statistics.mean(late) < 50, sampler.host_other_percent
