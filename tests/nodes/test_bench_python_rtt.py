"""The transport benchmark's in-process round trip: both ends in one loop through a transport stub."""

from __future__ import annotations

from bench.bench_transport import python_rtt


async def test_both_round_trips_run_to_the_end_through_the_stub() -> None:
    best = await python_rtt(50)  # (each server ends on its own stop message, so this returns at all)
    assert 0 < best["framed"] < 0.01
    assert 0 < best["echo"] < 0.01
