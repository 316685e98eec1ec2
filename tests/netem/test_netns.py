"""The namespace testbed on this machine (root): shaped links measured coarsely, edge cgroup, and no
leftovers after success, an exception, Ctrl-C or a killed run."""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from netem import EdgeLimits, LinkSpec, Testbed, TestbedConfig, clean, find_leftovers, make_testbed
from netem.errors import CapabilityError

pytestmark = pytest.mark.root


def new_prefix() -> str:
    return "lx" + secrets.token_hex(3)


def server(tb: Testbed, node: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = tb.popen(
        node,
        [sys.executable, "-m", "netem.measure", *args, "--bind", tb.bind_address(node)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    return proc, int(line.split()[1])


def client(tb: Testbed, src: str, dst: str, port: int, *args: str, timeout: float = 15) -> dict[str, Any]:
    host, p = tb.connect_address(src, dst, port)
    proc = tb.popen(
        src,
        [sys.executable, "-m", "netem.measure", args[0], "--to", f"{host}:{p}", *args[1:]],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0
    return json.loads(out)


def expected_mechanisms(tb: Testbed, params: list[str]) -> dict[str, str]:
    line = "netem" if "netem" in tb.caps.qdiscs else "tun-delay-line"
    return {p: line for p in params}


def assert_delayed_once(rtts: list[float], rtt_ms: float) -> None:
    """Every echo took the configured round trip (less timer rounding), and the fastest took less than
    twice it: a delay applied twice would put every echo at or past twice. What lies between is the
    scheduler's on a loaded machine, where the delay line waits for a CPU to forward each packet."""
    assert min(rtts) >= rtt_ms - 0.5, rtts
    assert min(rtts) < 2 * rtt_ms, rtts


def test_delay_and_rate_are_what_tcp_sees() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(prefix, LinkSpec.parse(rate="10mbit", delay="20ms"))
    with make_testbed(cfg, isolation="netns") as tb:
        assert tb.applied["edge_cloud"] == {"rate": "tbf", **expected_mechanisms(tb, ["delay"])}
        assert tb.not_applied == []
        _, port = server(tb, "cloud", "echo")
        r = client(tb, "edge", "cloud", port, "ping", "--count", "10")
        assert r["connect_ms"] >= 39.5  # the handshake crosses the delay too
        assert_delayed_once(r["rtt_ms"], 40)
        sink, port = server(tb, "cloud", "sink", "--warmup", "0.7")
        client(tb, "edge", "cloud", port, "send", "--seconds", "2.5")
        out, _ = sink.communicate(timeout=10)
        goodput = json.loads(out)["goodput_bps"]
        assert 10e6 * 1448 / 1500 * 0.85 < goodput < 10e6 * 1.15
    assert find_leftovers(prefix) == []


def test_test_reaches_cloud_through_the_edge() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(
        prefix, edge_cloud=LinkSpec.parse(rate="100mbit"), test_edge=LinkSpec.parse(delay="5ms")
    )
    with make_testbed(cfg, isolation="netns") as tb:
        assert tb.applied == {"test_edge": expected_mechanisms(tb, ["delay"]), "edge_cloud": {"rate": "tbf"}}
        _, port = server(tb, "cloud", "echo")
        r = client(tb, "test", "cloud", port, "ping", "--count", "10")
        assert_delayed_once(r["rtt_ms"], 10)  # 2 × 5 ms on test–edge, nothing on edge–cloud
        _, port = server(tb, "edge", "echo")
        r = client(tb, "cloud", "edge", port, "ping", "--count", "5")
        assert min(r["rtt_ms"]) < 10, r  # cloud–edge does not cross the delayed link (2 × 5 ms)
    assert find_leftovers(prefix) == []


def test_loss_and_jitter() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(prefix, LinkSpec.parse(delay="10ms", jitter="3ms", loss="10%"))
    with make_testbed(cfg, isolation="netns") as tb:
        assert tb.applied["edge_cloud"] == expected_mechanisms(tb, ["delay", "jitter", "loss"])
        rx, port = server(tb, "cloud", "udp-recv", "--count", "250", "--idle", "0.5")
        # 7 ms apart (> 2 × jitter): order keeping never holds one datagram behind another
        client(tb, "edge", "cloud", port, "udp-send", "--count", "250", "--interval", "0.007")
        r = json.loads(rx.communicate(timeout=10)[0])
    loss = 1 - r["received"] / 250
    assert 0.03 < loss < 0.17  # 10 % ± 3.6σ
    owd = sorted(r["owd_ms"])
    # Uniform over 7-13 ms: none earlier than 7 ms, and the fastest of ~225 within a millisecond of it
    # (a delay or jitter range shifted up fails this). The upper side is left alone: a loaded machine's
    # scheduler adds to it.
    assert 6.9 <= owd[0] < 8.0, owd
    assert statistics.pstdev(owd) > 1.0  # uniform ±3 ms: σ ≈ 1.7 ms


def test_edge_cgroup_limits_cpu_and_memory() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(
        prefix, LinkSpec(), edge_limits=EdgeLimits.parse(cpus="0.5", cpuset="0", memory="64m")
    )
    with make_testbed(cfg, isolation="netns") as tb:
        assert tb.edge_limits_mechanism in ("cgroup-v1", "cgroup-v2")
        assert tb.edge_threads() == 1
        code = textwrap.dedent("""
            import os, time, json
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                pass
            print(json.dumps({"cpu": time.process_time(), "threads": os.environ.get("OMP_NUM_THREADS"),
                              "cgroup": open("/proc/self/cgroup").read(), "cpus": sorted(os.sched_getaffinity(0))}))
        """)
        busy = tb.popen("edge", [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        r = json.loads(busy.communicate(timeout=15)[0])
        assert r["cpu"] < 0.6 * 1.5 + 0.15  # a quota of half a core
        assert r["threads"] == "1"
        assert r["cpus"] == [0]
        assert f"/{prefix}-edge" in r["cgroup"]
        hog = tb.popen(
            "edge",
            [sys.executable, "-c", "x = bytearray(256 * 2**20); x[::4096] = b'x' * len(x[::4096])"],
            stderr=subprocess.DEVNULL,
        )
        assert hog.wait(timeout=15) == -signal.SIGKILL  # the OOM killer, at 64m
    assert find_leftovers(prefix) == []


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_popen_pins_a_node_in_its_namespace_and_the_edge_inside_its_cgroup() -> None:
    prefix = new_prefix()
    cpu = max(os.sched_getaffinity(0))
    cfg = TestbedConfig(prefix, LinkSpec(), edge_limits=EdgeLimits.parse(cpus="1"))
    probe = [
        sys.executable,
        "-c",
        "import json, os; print(json.dumps({'cpus': sorted(os.sched_getaffinity(0)), "
        "'cgroup': open('/proc/self/cgroup').read()}))",
    ]
    with make_testbed(cfg, isolation="netns") as tb:
        cloud = tb.popen("cloud", probe, cpus={cpu}, stdout=subprocess.PIPE, text=True)
        edge = tb.popen("edge", probe, cpus={cpu}, stdout=subprocess.PIPE, text=True)
        c, e = (json.loads(p.communicate(timeout=15)[0]) for p in (cloud, edge))
        assert c["cpus"] == e["cpus"] == [cpu]
        assert f"/{prefix}-edge" in e["cgroup"] and f"/{prefix}-edge" not in c["cgroup"]
    assert find_leftovers(prefix) == []


def test_exception_inside_the_block_leaves_nothing() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(
        prefix, LinkSpec.parse(rate="1mbit", delay="5ms"), edge_limits=EdgeLimits.parse(cpus="1")
    )
    with pytest.raises(RuntimeError, match="node crashed"), make_testbed(cfg, isolation="netns") as tb:
        tb.popen("edge", ["sleep", "30"])
        assert find_leftovers(prefix) != []
        raise RuntimeError("node crashed")
    assert find_leftovers(prefix) == []


RUN = textwrap.dedent("""
    import signal, sys, time
    # A shell without job control starts background jobs with SIGINT ignored, and children inherit
    # that (CI runners, `cmd &`): make Ctrl-C raise KeyboardInterrupt here whatever the parent did.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from netem import LinkSpec, TestbedConfig, make_testbed, EdgeLimits
    cfg = TestbedConfig(sys.argv[1], LinkSpec.parse(rate="10mbit", delay="10ms"),
                        test_edge=LinkSpec.parse(delay="1ms"), edge_limits=EdgeLimits.parse(cpus="1"))
    with make_testbed(cfg, isolation="netns") as tb:
        tb.popen("edge", ["sleep", "60"])
        tb.popen("cloud", ["sleep", "60"])
        print("UP", flush=True)
        time.sleep(60)
""")


def _start_run(prefix: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", RUN, prefix], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "UP"
    return proc


def test_ctrl_c_leaves_nothing() -> None:
    prefix = new_prefix()
    proc = _start_run(prefix)
    assert any(x.startswith("netns") for x in find_leftovers(prefix))
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=20)
    assert find_leftovers(prefix) == []


def test_killed_run_is_cleaned_by_prefix() -> None:
    prefix = new_prefix()
    proc = _start_run(prefix)
    proc.kill()
    proc.wait(timeout=10)
    deadline = time.monotonic() + 5
    while any(x.startswith("process") for x in find_leftovers(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = find_leftovers(prefix)
    assert not any(x.startswith("process") for x in left)  # delay lines die with their parent
    assert {f"netns {prefix}-{r}" for r in ("test", "edge", "cloud")} <= set(left)
    other = new_prefix()  # a second run is not touched by cleaning the first
    with make_testbed(TestbedConfig(other, LinkSpec()), isolation="netns"):
        removed = clean(prefix)
        assert find_leftovers(other) != []
    assert any(r.startswith(f"netns {prefix}-") for r in removed)
    assert any(r.startswith("process") for r in removed)  # the sleeps in the namespaces
    assert find_leftovers(prefix) == []
    assert not any(Path(p).name.startswith(prefix) for p in os.listdir("/sys/fs/cgroup/cpu"))


def _namespace_cc(prefix: str, role: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", f"{prefix}-{role}", "sysctl", "-n", "net.ipv4.tcp_congestion_control"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_congestion_control_is_set_in_every_node_namespace_and_nowhere_else() -> None:
    machine = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    prefix = new_prefix()
    # (reno is built into every kernel; if it is the machine's too, the test still shows it was read back)
    with make_testbed(
        TestbedConfig(prefix, LinkSpec(), tcp_congestion_control="reno"), isolation="netns"
    ) as tb:
        assert [_namespace_cc(prefix, role) for role in ("test", "edge", "cloud")] == ["reno"] * 3
        assert tb.tcp_congestion_control == {"name": "reno", "mechanism": "sysctl-netns", "requested": "reno"}
        assert Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip() == machine
    with make_testbed(TestbedConfig(new_prefix(), LinkSpec()), isolation="netns") as tb:
        assert tb.tcp_congestion_control == {
            "name": machine,
            "mechanism": "kernel-default",
            "requested": None,
        }


def test_an_unknown_congestion_control_is_refused_and_leaves_nothing() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(prefix, LinkSpec(), tcp_congestion_control="nosuchcc")
    with (
        pytest.raises(CapabilityError, match=r"'nosuchcc' cannot be set.*this kernel has: .*reno"),
        make_testbed(cfg, isolation="netns"),
    ):
        pass
    assert find_leftovers(prefix) == []


def test_an_available_but_not_allowed_congestion_control_names_the_allowed_ones() -> None:
    available = Path("/proc/sys/net/ipv4/tcp_available_congestion_control").read_text().split()
    allowed = Path("/proc/sys/net/ipv4/tcp_allowed_congestion_control").read_text().split()
    refused = [name for name in available if name not in allowed]
    if not refused:
        pytest.skip("every congestion control this kernel has is allowed in namespaces here")
    prefix = new_prefix()
    cfg = TestbedConfig(prefix, LinkSpec(), tcp_congestion_control=refused[0])
    with (
        pytest.raises(CapabilityError, match=rf"not allowed in network namespaces.*allowed: {allowed[0]}"),
        make_testbed(cfg, isolation="netns"),
    ):
        pass
    assert find_leftovers(prefix) == []
