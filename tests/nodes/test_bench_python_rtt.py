"""The transport benchmark's in-process round trip: both ends in one loop through a transport stub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.bench_transport import python_rtt


async def test_both_round_trips_run_to_the_end_through_the_stub() -> None:
    best = await python_rtt(50)  # (each server ends on its own stop message, so this returns at all)
    assert 0 < best["framed"] < 0.01
    assert 0 < best["echo"] < 0.01


async def test_the_stub_delivers_a_frame_larger_than_the_buffer_offered_in_parts() -> None:
    # After a large frame the decoder offers only 4 bytes (the next length prefix); the stub must then
    # hand over the rest of a write in parts, as a socket's reads would.
    import asyncio

    import numpy as np

    from bench.bench_transport import _joined
    from nodes import Batch, FramedStream
    from nodes.protocol import Connection
    from nodes.transport import _FrameProtocol

    ca, cb = Connection(), Connection()
    ca.handshake_done()
    cb.handshake_done()
    pa, pb = _FrameProtocol(ca), _FrameProtocol(cb)
    _joined(asyncio.get_running_loop(), pa, pb, buffered=True)
    sender, receiver = FramedStream(pa, "peer", 5), FramedStream(pb, "peer", 5)
    for fill in (1, 2):  # the second frame arrives while only a prefix's worth of buffer is offered
        images = np.full((1, 1, 1, 300_000), fill, np.uint8)
        await sender.send(Batch(batch_id=fill, sample_ids=np.zeros(1, np.int64), images=images, t_sent_ns=0))
        got = await receiver.recv()
        assert isinstance(got, Batch) and got.batch_id == fill
        np.testing.assert_array_equal(got.images, images)


def test_round_trip_ratios_pair_blocks_of_the_same_round() -> None:
    """A ratio is the median of per-round ratios: a round that ran on a slow machine state slows every
    method in it alike and moves no ratio, where the ratio of each method's best block would mix states."""
    from bench.bench_transport import RoundTrips, rtt_table

    rtt = RoundTrips()
    for scale in (1.0, 3.0, 1.0, 3.0, 1.0):  # rounds alternating between a fast and a 3x slower state
        rtt.blocks["framed"].append(12e-6 * scale)
        rtt.blocks["echo"].append(10e-6 * scale)
        rtt.blocks["zmq"].append(15e-6 * scale)
    assert rtt.ratio("echo") == pytest.approx(1.2) and rtt.ratio("zmq") == pytest.approx(0.8)
    assert rtt.spread("echo") == pytest.approx((1.2, 1.2))
    assert rtt.best("echo") == 10e-6
    table, failures = rtt_table({"separate CPUs": rtt, "one CPU": rtt}, judged="separate CPUs")
    assert failures == []
    judged, shown = (line for line in table.splitlines() if "CPU" in line)
    assert "echo ok (≤1.2), zmq ok (≤1)" in judged and "ok" not in shown
    rtt.blocks["framed"][:] = [13e-6 * s for s in (1.0, 3.0, 1.0, 3.0, 1.0)]
    table, failures = rtt_table({"separate CPUs": rtt}, judged="separate CPUs")
    assert "echo MISSED" in table
    assert failures == ["round trip (separate CPUs) 1.30x echo > 1.2x"]


def test_throughput_ratios_pair_trials_of_the_same_round() -> None:
    """Throughput ratios are paired by round, as the round trips' are: a round on a slow machine state
    slows every method in it alike and moves no ratio. The raw target applies from 1 MiB up; a miss is
    marked in the table and listed."""
    from bench.bench_transport import MIB, Transfers, throughput_table

    t = Transfers()
    sizes = (64 * 1024, MIB)
    for scale in (1.0, 3.0, 1.0, 3.0, 1.0):  # rounds alternating between a fast and a 3x slower state
        for p in sizes:
            t.add("framed", p, 1.0 * scale)  # framed throughput: 0.8x raw's, 1.2x pyzmq's
            t.add("raw", p, 0.8 * scale)
            t.add("zmq", p, 1.2 * scale)
    assert t.best("raw", MIB) == pytest.approx(0.8)
    assert t.ratio("raw", MIB) == pytest.approx((0.8, 0.8, 0.8))
    assert t.ratio("zmq", MIB) == pytest.approx((1.2, 1.2, 1.2))
    t.times["raw"][MIB][1] = 3.0  # one round where raw alone got slower: the median does not move
    assert t.ratio("raw", MIB)[0] == pytest.approx(0.8)
    table, failures = throughput_table(t, [(4, p) for p in sizes], {p: 1e-6 for p in sizes})
    small, large = (line for line in table.splitlines() if line.startswith(("64 KiB", "1 MiB")))
    assert "0.80 (0.80–0.80) " in small and "MISSED" not in small  # no raw target below 1 MiB
    assert "0.80 (0.80–0.90) MISSED" in large and "1.20 (1.20–1.20) ok" in large
    assert failures == ["throughput 1 MiB: 0.80x raw < 0.9x"]


def test_layouts_are_only_those_this_process_may_pin() -> None:
    import os

    from bench.bench_transport import LAYOUTS, layouts

    usable = os.sched_getaffinity(0)
    got = layouts()
    assert all(client | servers <= usable for client, servers in got.values())
    assert set(got) == {name for name, (c, s) in LAYOUTS.items() if c | s <= usable}


def test_retransmits_are_shown_per_method_where_the_kernel_counts_them() -> None:
    from bench.bench_transport import MIB, Transfers, throughput_table

    t = Transfers()
    for retrans in ((0, 4, 2), (0, 6, 2)):
        for method, n in zip(("raw", "framed", "zmq"), retrans, strict=True):
            t.add(method, MIB, 1.0, n)
    assert t.retransmitted("framed", MIB) == pytest.approx(5.0)
    table, _ = throughput_table(t, [(4, MIB)], {MIB: 1e-6})
    assert "TCP retransmits per trial" in table.splitlines()[0]
    assert table.splitlines()[-1].endswith("0.0 · 5.0 · 2.0")

    uncounted = Transfers()
    for method in ("raw", "framed", "zmq"):
        uncounted.add(method, MIB, 1.0, None)  # (not Linux: no column rather than zeros)
    assert uncounted.retransmitted("raw", MIB) is None
    table, _ = throughput_table(uncounted, [(4, MIB)], {MIB: 1e-6})
    assert "retransmits" not in table


def test_the_retransmit_count_is_read_from_the_kernels_tcp_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bench.bench_transport as bt

    snmp = tmp_path / "snmp"
    snmp.write_text(
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm ActiveOpens RetransSegs InErrs\nTcp: 1 10 4321 0\n"
        "Udp: InDatagrams\nUdp: 3\n"
    )
    monkeypatch.setattr(bt, "_SNMP", str(snmp))
    assert bt.tcp_retransmitted() == 4321
    monkeypatch.setattr(bt, "_SNMP", str(tmp_path / "none"))
    assert bt.tcp_retransmitted() is None


def test_an_unusable_congestion_control_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.bench_transport import main

    assert main(["--quick", "--congestion-control", "no-such-algorithm"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("bench_transport: --congestion-control no-such-algorithm: ")
    assert ("this kernel has" in err) if os.geteuid() == 0 else ("needs root" in err)


@pytest.mark.root
def test_the_private_namespace_gets_the_congestion_control_and_is_removed_after() -> None:
    import subprocess
    import sys

    from bench.bench_transport import in_private_netns
    from netem.probe import TCP_CC_PROC, congestion_control

    machine = congestion_control()
    # (reno is built into every Linux kernel)
    check = f"import sys; sys.exit(0 if open({TCP_CC_PROC!r}).read().strip() == 'reno' else 1)"
    assert in_private_netns("reno", [sys.executable, "-c", check]) == 0
    assert congestion_control() == machine  # the machine's own setting untouched
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert f"lx{os.getpid():x}-probe" not in names
    assert not Path(f"/run/localexit/lx{os.getpid():x}.owner").exists()


@pytest.mark.root
def test_without_iproute2_the_private_namespace_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from bench.bench_transport import in_private_netns

    monkeypatch.setenv("PATH", "")  # (no `ip` to be found)
    assert in_private_netns("reno", [sys.executable, "-c", "pass"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bench_transport: --congestion-control reno: cannot run ip: ")
    assert not Path(f"/run/localexit/lx{os.getpid():x}.owner").exists()
