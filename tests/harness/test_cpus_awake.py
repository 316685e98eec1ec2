"""``cpus_kept_awake``: a PM QoS request held only within its block."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.environment import CPU_LATENCY_QOS, cpus_kept_awake


def _limit_us() -> int:
    return int.from_bytes(CPU_LATENCY_QOS.read_bytes()[:4], "little", signed=True)


@pytest.mark.root
def test_the_request_holds_within_the_block_and_ends_with_it() -> None:
    if not CPU_LATENCY_QOS.exists():
        pytest.skip(f"this kernel has no {CPU_LATENCY_QOS}")
    before = _limit_us()
    with cpus_kept_awake() as held:
        assert held
        assert _limit_us() == 0
    assert _limit_us() == before


def test_without_the_device_nothing_is_claimed(tmp_path: Path) -> None:
    with cpus_kept_awake(tmp_path / "no-such-device") as held:
        assert held is False
