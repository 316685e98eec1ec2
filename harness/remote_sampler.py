"""The edge's CPU and memory, sampled on the edge's own host (``python -m harness.remote_sampler``).

Started by the harness next to a node it ran with ``harness.remote_node run``: it waits for the node's
pid file, samples the node's process tree with :class:`harness.processes.ResourceSampler` (the same
counters as on one host), and prints each sample as one JSON line -- ``t_ns`` (this host's
``CLOCK_MONOTONIC``), ``cpu`` (%, 100 = one core), ``rss`` (bytes), ``other`` (CPU % of the host's other
programs) -- until its stdin closes or the node is gone.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from .processes import ResourceSampler

#: How long the node's pid file may take to appear (the launcher writes it as the node starts).
PIDFILE_WAIT_S = 30.0


def _wait_pid(path: Path, timeout_s: float) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            return int(path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            time.sleep(0.05)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.remote_sampler", description=__doc__.split("\n\n")[0])
    p.add_argument("--pidfile", type=Path, required=True, help="the node's pid file (harness.remote_node)")
    p.add_argument("--interval", type=float, default=0.1, help="seconds between samples (default 0.1)")
    args = p.parse_args(argv)
    pid = _wait_pid(args.pidfile, PIDFILE_WAIT_S)
    if pid is None:
        print(f"error: no node pid in {args.pidfile} within {PIDFILE_WAIT_S:g} s", file=sys.stderr)
        return 2
    done = threading.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # (until the harness closes it)
        done.set()

    threading.Thread(target=watch_stdin, name="stdin", daemon=True).start()
    # (the node counts as ours, not as another program of the host)
    with ResourceSampler(pid, interval_s=args.interval, others=[pid]) as sampler:
        sent = 0
        while not done.wait(args.interval) and psutil.pid_exists(pid):
            sent = _send(sampler, sent)
    _send(sampler, sent)  # (the last ones too: a short run's measured phase may hold only those)
    return 0


def _send(sampler: ResourceSampler, sent: int) -> int:
    """Print the samples from index ``sent`` on; the new count sent."""
    n = len(sampler.host_other_percent)  # (the last list a sample appends to)
    for i in range(sent, n):
        line = {
            "t_ns": sampler.times_ns[i],
            "cpu": sampler.cpu_percent[i],
            "rss": sampler.rss_mib[i] * 2**20,
            "other": sampler.host_other_percent[i],
        }
        sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()
    return n


if __name__ == "__main__":
    raise SystemExit(main())
