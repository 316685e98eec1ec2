"""The harness benchmark's split replay: two processes joined by pipes replay a run's batches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import models
from bench.bench_harness import Floor, SplitReplay, idle_gaps


def test_the_split_replay_runs_the_batches_through_both_processes_and_stops_them(
    tiny_checkpoint: Path,
) -> None:
    images = models.load_dataset("synthetic", "test").images[:8]
    split = SplitReplay(tiny_checkpoint, 2, images)
    procs = list(split._procs)
    try:
        assert all(proc.is_alive() for proc in procs)
        # Every batch with cloud-exited samples needs the cloud's reply: a count the edge did not forward
        # to the cloud would leave the replay waiting for it (and time out).
        wall, compute = split.replay_ms([{"size": 8, "cloud": 3}, {"size": 5, "cloud": 0}] * 3, replays=2)
        only_edge, edge_compute = split.replay_ms([{"size": 8, "cloud": 0}] * 6, replays=2)
    finally:
        split.close()
    assert 0 < compute <= wall
    assert 0 < edge_compute <= only_edge
    assert not any(proc.is_alive() for proc in procs)
    assert all(proc.exitcode == 0 for proc in procs)


def test_a_split_process_that_cannot_start_fails_at_once_with_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "not-a-checkpoint.pt"
    bad.write_bytes(b"garbage")
    images = models.load_dataset("synthetic", "test").images[:8]
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="split replay's edge process exited"):
        SplitReplay(bad, 2, images)
    assert time.monotonic() - started < 60  # not the 120 s start-up timeout


def test_idle_gaps_are_the_span_less_each_nodes_compute_per_compute() -> None:
    batches = [
        {"size": 32, "cloud": 4, "procedures_ms": {"2": 3.0, "4": 1.0}},
        {"size": 32, "cloud": 0, "procedures_ms": {"2": 3.0}},
        {"size": 32, "cloud": 2, "procedures_ms": {"2": 3.0, "4": 1.0}},
    ]
    records = {"batches": batches, "overall": {"first_send_ns": 0, "last_recv_ns": 30_000_000}}
    # 30 ms in all: the edge computed 9 ms in 3 computes, the cloud 2 ms in 2
    assert idle_gaps(records) == pytest.approx((7.0, 14.0))
    no_cloud = [{**b, "cloud": 0} for b in batches]
    assert idle_gaps({**records, "batches": no_cloud}) == pytest.approx((7.0, 0.0))


def test_the_idle_gap_replay_times_the_compute_and_not_the_waits(tiny_checkpoint: Path) -> None:
    images = models.load_dataset("synthetic", "test").images[:8]
    floor = Floor(tiny_checkpoint, 2, images)
    batches = [{"size": 8, "cloud": 3}, {"size": 5, "cloud": 0}] * 2
    started = time.monotonic()
    # (gaps long against the tiny model's compute, even on a loaded machine)
    gapped = floor.gapped_ms(batches, (250.0, 350.0), replays=1)
    waited_ms = (time.monotonic() - started) * 1e3
    assert waited_ms >= 4 * 250 + 2 * 350  # each part waited its node's gap first
    assert 0 < gapped < 4 * 250 + 2 * 350  # and the waits are not counted as compute
