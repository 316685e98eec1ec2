"""Loopback mode (no root): direct addresses when unshaped, a TCP relay for rate and delay, and a plain
list of what is not applied."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from netem import Capabilities, EdgeLimits, LinkSpec, TestbedConfig, make_testbed

NO_ROOT = Capabilities(root=False, iproute2=False, netns=False, qdiscs=frozenset(), tun=False, cgroup=None)


@pytest.fixture
def echo_port() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                while data := conn.recv(65536):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def _rtts_ms(addr: tuple[str, int], n: int = 8) -> list[float]:
    with socket.create_connection(addr, timeout=5) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(5)
        out = []
        for _ in range(n):
            t = time.perf_counter()
            c.sendall(b"ping")
            assert c.recv(16) == b"ping"
            out.append((time.perf_counter() - t) * 1000)
    return out


def test_unshaped_loopback_is_direct(echo_port: int) -> None:
    with make_testbed(TestbedConfig("lxlo1", LinkSpec()), isolation="loopback", caps=NO_ROOT) as tb:
        assert tb.isolation == "loopback"
        assert tb.bind_address("edge") == "127.0.0.1"
        assert tb.connect_address("edge", "cloud", echo_port) == ("127.0.0.1", echo_port)
        assert tb.applied == {"test_edge": {}, "edge_cloud": {}} and tb.not_applied == []


def test_relay_applies_delay_and_reports_what_it_cannot(echo_port: int) -> None:
    cfg = TestbedConfig("lxlo2", LinkSpec.parse(delay="15ms", loss="1%"))
    with make_testbed(cfg, isolation="auto", caps=NO_ROOT) as tb:
        addr = tb.connect_address("edge", "cloud", echo_port)
        assert addr[1] != echo_port
        assert tb.connect_address("edge", "cloud", echo_port) == addr  # one relay per listener
        # Data delayed 15 ms each way: every echo takes 30 ms or more, and the fastest less than twice
        # that (the delay applied twice would put every one past 60 ms); in between is the scheduler's.
        rtts = _rtts_ms(addr)
        assert 29.0 <= min(rtts) < 60.0, rtts
        assert tb.applied["edge_cloud"] == {"delay": "tcp-relay"}
        assert any("packet loss 1%" in s for s in tb.not_applied)
        assert any("handshake" in s for s in tb.not_applied)
        relay_procs = list(tb._owned.values())
    assert all(p.poll() is not None for p in relay_procs)  # stopped at teardown


def test_relay_paces_the_rate(echo_port: int) -> None:
    cfg = TestbedConfig("lxlo3", LinkSpec.parse(rate="4mbit"))
    with make_testbed(cfg, isolation="loopback", caps=NO_ROOT) as tb:
        addr = tb.connect_address("test", "edge", echo_port)  # the test-edge link is unshaped
        assert addr == ("127.0.0.1", echo_port)
        addr = tb.connect_address("test", "cloud", echo_port)  # the path crosses edge-cloud
        payload = b"y" * 400_000
        with socket.create_connection(addr, timeout=5) as c:
            c.settimeout(10)
            t = time.perf_counter()
            threading.Thread(target=c.sendall, args=(payload,), daemon=True).start()
            got = 0
            while got < len(payload):
                got += len(c.recv(65536))
            elapsed = time.perf_counter() - t
    # echoed: the bytes cross the 4 mbit path twice (pipelined), so ≈ size·8/rate plus header overhead
    expected = len(payload) * 8 * (1500 / 1448) / 4e6
    assert expected * 0.85 < elapsed < expected * 1.3


def test_edge_limits_without_root_are_reported(tmp_path: object) -> None:
    cfg = TestbedConfig("lxlo4", LinkSpec(), edge_limits=EdgeLimits.parse(cpus="0.5"))
    with make_testbed(cfg, isolation="loopback", caps=NO_ROOT) as tb:
        assert any("edge limits" in s for s in tb.not_applied)
        assert tb.edge_threads() == 1
        proc = tb.popen(
            "edge",
            [sys.executable, "-c", "import os; print(os.environ['OMP_NUM_THREADS'])"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.communicate(timeout=10)[0].strip() == "1"
        sleeper = tb.popen("cloud", ["sleep", "30"])
    assert sleeper.poll() is not None  # teardown stopped it


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_popen_runs_a_node_on_the_cpus_asked_for() -> None:
    cpu = max(os.sched_getaffinity(0))
    probe = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
    with make_testbed(TestbedConfig("lxlo6", LinkSpec()), isolation="loopback", caps=NO_ROOT) as tb:
        pinned = tb.popen("cloud", probe, cpus={cpu}, stdout=subprocess.PIPE, text=True)
        free = tb.popen("edge", probe, stdout=subprocess.PIPE, text=True)
        assert pinned.communicate(timeout=10)[0].strip() == f"[{cpu}]"
        assert free.communicate(timeout=10)[0].strip() == str(sorted(os.sched_getaffinity(0)))


def test_bad_node_and_isolation() -> None:
    with pytest.raises(ValueError, match="isolation"):
        make_testbed(TestbedConfig("lxlo5", LinkSpec()), isolation="vm", caps=NO_ROOT)
    with pytest.raises(Exception, match="Docker testbed needs root"):
        make_testbed(TestbedConfig("lxlo5", LinkSpec()), isolation="docker", caps=NO_ROOT)
    with pytest.raises(Exception, match="namespaces"):
        make_testbed(TestbedConfig("lxlo5", LinkSpec()), isolation="netns", caps=NO_ROOT)
    with (
        make_testbed(TestbedConfig("lxlo5", LinkSpec()), isolation="loopback", caps=NO_ROOT) as tb,
        pytest.raises(ValueError, match="node"),
    ):
        tb.bind_address("router")


@pytest.mark.skipif(not os.path.exists("/proc/sys/net/ipv4/tcp_congestion_control"), reason="Linux only")
def test_loopback_records_the_machines_congestion_control_and_lists_another_as_not_applied() -> None:
    with open("/proc/sys/net/ipv4/tcp_congestion_control") as f:
        machine = f.read().strip()
    with make_testbed(TestbedConfig("lxlo7", LinkSpec()), isolation="loopback", caps=NO_ROOT) as tb:
        assert tb.tcp_congestion_control == {
            "name": machine,
            "mechanism": "machine-setting",
            "requested": None,
        }
        assert tb.not_applied == []
    same = TestbedConfig("lxlo7", LinkSpec(), tcp_congestion_control=machine)
    with make_testbed(same, isolation="loopback", caps=NO_ROOT) as tb:
        assert tb.tcp_congestion_control["name"] == machine and tb.not_applied == []
    other = "reno" if machine != "reno" else "cubic"
    asked = TestbedConfig("lxlo7", LinkSpec(), tcp_congestion_control=other)
    with make_testbed(asked, isolation="loopback", caps=NO_ROOT) as tb:
        assert tb.tcp_congestion_control == {
            "name": machine,
            "mechanism": "machine-setting",
            "requested": other,
        }
        assert tb.not_applied == [
            f"TCP congestion control {other} (loopback mode: the machine's, {machine}, is in force; run as "
            "root for namespaces of the nodes' own)"
        ]
        assert tb.describe()["tcp_congestion_control"]["name"] == machine
