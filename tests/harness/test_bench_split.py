"""The harness benchmark's split replay: two processes joined by pipes replay a run's batches."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import models
from bench.bench_harness import SplitReplay


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
