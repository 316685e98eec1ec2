"""The resource sampler: edge CPU, and the CPU other programs used (the check's busy-machine rule)."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

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
