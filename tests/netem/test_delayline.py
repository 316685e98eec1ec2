"""The delay line process, driven through datagram socket pairs instead of TUN devices (no root needed)."""

from __future__ import annotations

import contextlib
import json
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from netem import delayline
from netem._proc import stop_process
from netem.delayline import DelayLineParams


@pytest.fixture
def line_factory() -> Iterator[Any]:
    started = []

    def make(params: DelayLineParams) -> tuple[socket.socket, socket.socket, object]:
        a_ours, a_line = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        b_ours, b_line = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for s in (a_line, b_line):
            s.setblocking(False)
        proc = delayline.start(a_line.fileno(), b_line.fileno(), params, label="lxtest-ec")
        a_line.close()
        b_line.close()
        started.append((proc, a_ours, b_ours))
        return a_ours, b_ours, proc

    yield make
    for proc, a, b in started:
        stop_process(proc)
        a.close()
        b.close()


def _one_way_ms(src: socket.socket, dst: socket.socket, n: int, gap_s: float = 0.002) -> list[float]:
    dst.settimeout(2.0)
    out = []
    for i in range(n):
        t = time.monotonic_ns()
        src.send(i.to_bytes(4, "big") + b"x" * 100)
        data = dst.recv(2048)
        out.append((time.monotonic_ns() - t) / 1e6)
        assert int.from_bytes(data[:4], "big") == i
        time.sleep(gap_s)
    return out


def test_delay_is_applied_in_both_directions(line_factory) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = line_factory(DelayLineParams(delay_ns=10_000_000))
    fwd = _one_way_ms(a, b, 20)
    back = _one_way_ms(b, a, 20)
    for series in (fwd, back):
        # Every datagram waits out the delay; a loaded machine's scheduler adds to some of them, so what
        # the line itself adds is bounded through the fastest one.
        assert min(series) >= 9.99, series
        assert min(series) < 11.5, series


def test_jitter_spreads_but_keeps_order(line_factory) -> None:  # type: ignore[no-untyped-def]
    a, b, _ = line_factory(DelayLineParams(delay_ns=10_000_000, jitter_ns=5_000_000, seed=1))
    n = 200
    for i in range(n):  # a burst: with jitter, netem would reorder these
        a.send(i.to_bytes(4, "big"))
    b.settimeout(2.0)
    got = [int.from_bytes(b.recv(64)[:4], "big") for _ in range(n)]
    assert got == list(range(n))
    delays = _one_way_ms(a, b, 60, gap_s=0.016)
    # Uniform over 5-15 ms: none earlier than 5 ms, and the fastest of 60 within 2 ms of it (the chance
    # that all 60 draw above 7 ms is 0.8**60 ≈ 2e-6). A delay or jitter range shifted up fails this; the
    # upper tail is left alone, as a loaded machine's scheduler adds to it.
    assert min(delays) >= 4.99, delays
    assert min(delays) < 7.0, delays
    assert statistics.pstdev(delays) > 1.5  # uniform ±5 ms has σ ≈ 2.9 ms


def test_loss_rate_and_stats(line_factory) -> None:  # type: ignore[no-untyped-def]
    a, b, proc = line_factory(DelayLineParams(loss=0.3, seed=7))
    n = 600
    received = 0

    def receive() -> None:  # concurrently: a unix datagram queue holds only a few packets
        nonlocal received
        b.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            while True:
                b.recv(64)
                received += 1

    rx = threading.Thread(target=receive)
    rx.start()
    for i in range(n):
        a.send(i.to_bytes(4, "big"))
        time.sleep(0.0002)
    rx.join()
    assert 0.24 < 1 - received / n < 0.36  # ±3.2σ for n = 600
    stop_process(proc)
    stats = json.loads(proc.stdout.read().strip().splitlines()[-1])["stats"]["a_to_b"]
    assert stats["forwarded"] == received
    assert stats["lost"] + stats["forwarded"] == n


def test_bad_params() -> None:
    with pytest.raises(ValueError, match="loss"):
        DelayLineParams(loss=1.5)
