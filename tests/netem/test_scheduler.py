"""Links that change during a run: the scheduler's timing and records, the delay line's control channel,
the bring-up layout a schedule needs, the CPU quota's change, and (root) a live testbed changed by the
scheduler while traffic crosses it."""

from __future__ import annotations

import json
import secrets
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from netem import (
    AppliedChange,
    EdgeCgroup,
    EdgeLimits,
    LinkSchedule,
    LinkScheduler,
    LinkSpec,
    NetemError,
    ScheduleFailed,
    SpecError,
    TestbedConfig,
    delayline,
    find_leftovers,
    make_testbed,
    plan_cgroup,
    plan_link_end,
)
from netem._proc import stop_process
from netem.cgroups import plan_cpu_quota
from netem.delayline import DelayLineParams
from netem.errors import CapabilityError
from netem.probe import Capabilities
from netem.schedule import CpuStep, LinkStep, from_text, parse_cpu_inline, parse_inline
from netem.scheduler import changes_of
from netem.tc import netem_argv, netem_limit_packets

MBIT = 1_000_000

# --- the scheduler, on a fake testbed -----------------------------------------------------------------


class FakeTarget:
    """Records each change with the monotonic time it was asked for; ``fail_at`` makes that call raise."""

    def __init__(self, fail_at: int | None = None, takes_s: float = 0.0) -> None:
        self.calls: list[tuple[str, object, int]] = []
        self.fail_at = fail_at
        self.takes_s = takes_s

    def _call(self, kind: str, value: object) -> None:
        self.calls.append((kind, value, time.monotonic_ns()))
        time.sleep(self.takes_s)
        if self.fail_at is not None and len(self.calls) - 1 == self.fail_at:
            raise NetemError(f"command failed: tc ... ({kind})")

    def change_link(self, spec: LinkSpec) -> Mapping[str, str]:
        self._call("link", spec)
        return {"rate": "tbf", "delay": "netem"}

    def change_edge_cpus(self, cpus: float) -> Mapping[str, str]:
        self._call("cpu", cpus)
        return {"cpus": "cgroup-v2"}


def _schedule() -> LinkSchedule:
    link = parse_inline("0s:10mbit/5ms,0.2s:1mbit/40ms~5ms/1%,0.4s:10mbit/5ms")
    return LinkSchedule(link.steps, parse_cpu_inline("0s:2,0.2s:0.5"))


def test_steps_are_applied_in_time_order_the_quicker_cpu_first_at_equal_times() -> None:
    kinds = [(c.at_s, c.kind) for c in changes_of(_schedule())]
    assert kinds == [(0, "cpu"), (0, "link"), (0.2, "cpu"), (0.2, "link"), (0.4, "link")]


def test_every_step_is_applied_at_its_time_and_recorded_with_its_lateness() -> None:
    target = FakeTarget()
    scheduler = LinkScheduler(target, _schedule())
    t0 = scheduler.start()
    try:
        deadline = time.monotonic() + 5
        while len(scheduler.changes) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        scheduler.stop()
    scheduler.check()
    changes = scheduler.changes
    assert [(c.kind, c.at_s, c.target) for c in changes] == [
        ("cpu", 0, "edge"),
        ("link", 0, "edge_cloud"),
        ("cpu", 0.2, "edge"),
        ("link", 0.2, "edge_cloud"),
        ("link", 0.4, "edge_cloud"),
    ]
    # each call came no earlier than its time, and the record says when it was done
    for (_, _, called_ns), change in zip(target.calls, changes, strict=True):
        assert called_ns - t0 >= change.at_s * 1e9
        assert change.applied_s >= (called_ns - t0) / 1e9
        assert change.to_json()["late_s"] == change.applied_s - change.at_s >= 0
    assert target.calls[3][1] == LinkSpec.parse(rate="1mbit", delay="40ms", jitter="5ms", loss="1%")
    assert changes[3].values == {
        "rate": "1mbit",
        "delay": "40ms",
        "jitter": "5ms",
        "loss": "1%",
        "limit": None,
    }
    assert changes[2].values == {"cpus": "0.5"} and changes[2].mechanism == {"cpus": "cgroup-v2"}
    assert scheduler.not_reached == 0


def test_lateness_includes_the_time_the_change_takes() -> None:
    scheduler = LinkScheduler(FakeTarget(takes_s=0.05), LinkSchedule((), (CpuStep(0, 1.0),)))
    scheduler.start()
    time.sleep(0.3)
    scheduler.stop()
    (change,) = scheduler.changes
    assert change.applied_s - change.at_s >= 0.05


def test_steps_after_the_stop_are_not_applied_and_counted() -> None:
    target = FakeTarget()
    sched = parse_inline("0s:10mbit,0.1s:5mbit,30s:1mbit,60s:2mbit")
    with LinkScheduler(target, sched) as scheduler:
        time.sleep(0.4)
    assert [c.at_s for c in scheduler.changes] == [0, 0.1]
    assert scheduler.not_reached == 2
    assert len(target.calls) == 2


def test_stop_does_not_wait_for_the_next_step() -> None:
    with LinkScheduler(FakeTarget(), parse_inline("0s:10mbit,3600s:1mbit")) as scheduler:
        time.sleep(0.05)
    t = time.monotonic()
    scheduler.stop()
    assert time.monotonic() - t < 1.0


def test_a_failed_change_stops_the_schedule_and_is_raised_with_its_step() -> None:
    target = FakeTarget(fail_at=1)
    sched = parse_inline("0s:10mbit,0.1s:1mbit/40ms,0.2s:10mbit")
    with LinkScheduler(target, sched) as scheduler:
        time.sleep(0.5)
    with pytest.raises(ScheduleFailed, match=r"link step at 0\.1s \(rate 1mbit, delay 40ms.*command failed"):
        scheduler.check()
    assert len(scheduler.changes) == 1 and len(target.calls) == 2  # nothing after the failure
    assert scheduler.not_reached == 1


def test_a_scheduler_starts_once() -> None:
    scheduler = LinkScheduler(FakeTarget(), parse_inline("0s:10mbit"))
    scheduler.start()
    try:
        with pytest.raises(NetemError, match="started already"):
            scheduler.start()
    finally:
        scheduler.stop()


# --- the delay line's control channel (datagram socket pairs stand in for TUN devices) ----------------


@pytest.fixture
def line() -> Iterator[tuple[socket.socket, socket.socket, subprocess.Popen[str]]]:
    a_ours, a_line = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b_ours, b_line = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for s in (a_line, b_line):
        s.setblocking(False)
    proc = delayline.start(
        a_line.fileno(), b_line.fileno(), DelayLineParams(delay_ns=5_000_000), label="lxt-ec"
    )
    a_line.close()
    b_line.close()
    yield a_ours, b_ours, proc
    stop_process(proc)
    a_ours.close()
    b_ours.close()


def _one_way_ms(src: socket.socket, dst: socket.socket, n: int) -> list[float]:
    dst.settimeout(2.0)
    out = []
    for i in range(n):
        t = time.monotonic_ns()
        src.send(i.to_bytes(4, "big") + b"x" * 100)
        assert int.from_bytes(dst.recv(2048)[:4], "big") == i
        out.append((time.monotonic_ns() - t) / 1e6)
        time.sleep(0.002)
    return out


def test_the_running_line_takes_a_new_delay_at_once(line: Any) -> None:
    a, b, proc = line
    before = _one_way_ms(a, b, 10)
    t = time.monotonic_ns()
    values = delayline.change(proc, LinkSpec.parse(delay="30ms"))
    took_ms = (time.monotonic_ns() - t) / 1e6
    after = _one_way_ms(a, b, 10) + _one_way_ms(b, a, 10)
    assert values == {"delay_ns": 30_000_000, "jitter_ns": 0, "loss": 0.0}
    assert min(before) >= 5 and max(sorted(before)[:5]) < 15
    assert min(after) >= 30 and sorted(after)[len(after) // 2] < 40  # both directions, every packet
    assert took_ms < 500  # an answer between two packets, not a restart
    delayline.change(proc, LinkSpec())  # and back to no delay at all
    assert min(_one_way_ms(a, b, 10)) < 5


def test_loss_and_jitter_change_too_and_the_counters_survive(line: Any) -> None:
    a, b, proc = line
    _one_way_ms(a, b, 5)
    delayline.change(proc, LinkSpec.parse(delay="10ms", jitter="4ms", loss="50%"))
    for i in range(200):
        a.send(i.to_bytes(4, "big"))
    b.settimeout(0.5)
    got = 0
    with pytest.raises(TimeoutError):
        while True:
            b.recv(64)
            got += 1
    assert 60 < got < 140  # 50 % ± 5σ
    stop_process(proc)
    assert proc.stdout is not None
    stats = json.loads(proc.stdout.read().splitlines()[-1])["stats"]["a_to_b"]
    assert stats["forwarded"] == 5 + got and stats["lost"] == 200 - got


def test_a_bad_control_line_is_refused_and_the_line_goes_on(line: Any) -> None:
    a, b, proc = line
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write('{"delay_ns": -5, "jitter_ns": 0, "loss": 0}\n')
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("ERROR ValueError: delay and jitter must not be negative")
    proc.stdin.write("x" * (delayline.MAX_CONTROL_LINE + 10) + "\n")
    proc.stdin.flush()
    assert proc.stdout.readline().startswith("ERROR a control line is at most")
    assert 5 <= min(_one_way_ms(a, b, 5)) < 15  # still forwarding, at the delay it had


def test_changing_a_line_that_has_exited_says_so(line: Any) -> None:
    _, _, proc = line
    stop_process(proc)
    with pytest.raises(NetemError, match="delay line"):
        delayline.change(proc, LinkSpec.parse(delay="10ms"))


# --- the bring-up layout and the CPU quota, planned ---------------------------------------------------


def test_a_delay_stage_can_be_asked_for_without_a_delay() -> None:
    spec = LinkSpec.parse(rate="10mbit")
    with_netem = plan_link_end("d0", spec, frozenset({"tbf", "netem"}), delay_stage=True)
    # netem at the root with neither delay nor loss (yet), the rate limiter under it
    assert with_netem.commands[0] == netem_argv("d0", limit_packets=netem_limit_packets(spec))
    assert with_netem.commands[1][5:9] == ["parent", "1:1", "handle", "10:"]
    assert with_netem.applied == {"delay": "netem", "jitter": "netem", "loss": "netem", "rate": "tbf"}
    assert with_netem.userspace == ()
    without = plan_link_end("d0", spec, frozenset({"tbf"}), delay_stage=True)
    assert without.userspace == ("delay", "jitter", "loss")
    assert plan_link_end("d0", spec, frozenset({"tbf"})).userspace == ()  # (not asked: none)


def _caps(qdiscs: set[str]) -> Capabilities:
    return Capabilities(
        root=True, iproute2=True, netns=True, qdiscs=frozenset(qdiscs), tun=True, cgroup="v2", notes=()
    )


@pytest.mark.parametrize(("qdiscs", "stage"), [({"tbf"}, "tun-delay-line"), ({"tbf", "netem"}, "netem")])
def test_a_link_whose_later_step_has_delay_comes_up_with_a_delay_stage(qdiscs: set[str], stage: str) -> None:
    sched = parse_inline("0s:10mbit,20s:1mbit/40ms")
    cfg = TestbedConfig("lxplan1", sched.steps[0].spec, schedule=sched)
    tb = make_testbed(cfg, isolation="netns", caps=_caps(qdiscs))
    assert tb.applied["edge_cloud"] == {"rate": "tbf", "delay": stage, "jitter": stage, "loss": stage}
    assert tb.applied["test_edge"] == {}
    # without the schedule, the same first step has no delay stage
    plain = make_testbed(TestbedConfig("lxplan1", sched.steps[0].spec), isolation="netns", caps=_caps(qdiscs))
    assert plain.applied["edge_cloud"] == {"rate": "tbf"}


def test_the_testbed_config_must_start_where_the_schedule_does() -> None:
    sched = LinkSchedule(parse_inline("0s:10mbit,1s:1mbit").steps, parse_cpu_inline("0s:1,1s:0.5"))
    first, limits = LinkSpec.parse(rate="10mbit"), EdgeLimits(cpus=1.0)
    TestbedConfig("lxplan2", first, edge_limits=limits, schedule=sched)  # consistent: fine
    with pytest.raises(SpecError, match=r"first step .*rate 10mbit.*not as rate 1mbit"):
        TestbedConfig("lxplan2", LinkSpec.parse(rate="1mbit"), edge_limits=limits, schedule=sched)
    with pytest.raises(SpecError, match=r"first CPU step \(1 cores\), not at no quota"):
        TestbedConfig("lxplan2", first, schedule=sched)


def test_loopback_refuses_a_schedule_before_anything_is_made() -> None:
    sched = parse_inline("0s:10mbit,1s:1mbit")
    caps = Capabilities(
        root=False, iproute2=False, netns=False, qdiscs=frozenset(), tun=False, cgroup=None, notes=()
    )
    cfg = TestbedConfig("lxplan3", sched.steps[0].spec, schedule=sched)
    with pytest.raises(CapabilityError, match="needs the namespaced testbed"):
        make_testbed(cfg, isolation="auto", caps=caps)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_a_quota_change_is_the_bring_ups_own_quota_write(version: str, tmp_path: Path) -> None:
    plan = plan_cgroup("lxq-edge", EdgeLimits(cpus=2.0, memory_bytes=2**30), version, tmp_path)
    writes = plan_cpu_quota(plan, 0.5)
    fresh = plan_cgroup("lxq-edge", EdgeLimits(cpus=0.5), version, tmp_path)
    quota_file = "cpu.cfs_quota_us" if version == "v1" else "cpu.max"
    assert writes == tuple(w for w in fresh.writes if w[0].name == quota_file)
    assert writes[0][1] == ("50000" if version == "v1" else "50000 100000")
    no_quota = plan_cgroup("lxq-edge", EdgeLimits(memory_bytes=2**30), version, tmp_path)
    with pytest.raises(NetemError, match="without a CPU quota"):
        plan_cpu_quota(no_quota, 0.5)


def test_set_cpus_writes_the_live_cgroups_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    cg = EdgeCgroup.create("lxq-edge", EdgeLimits(cpus=2.0), "v1", tmp_path)
    quota = tmp_path / "cpu" / "lxq-edge" / "cpu.cfs_quota_us"
    assert quota.read_text() == "200000"
    cg.set_cpus(0.25)
    assert quota.read_text() == "25000"


def test_a_schedule_on_the_command_line_is_a_file_or_inline(tmp_path: Path) -> None:
    f = tmp_path / "s.toml"
    f.write_text('[[link]]\nat = "0s"\nrate = "5mbit"\n[[link]]\nat = "2s"\nrate = "1mbit"\n')
    assert from_text(str(f)).steps == (
        LinkStep(0, LinkSpec(rate_bps=5 * MBIT)),
        LinkStep(2, LinkSpec(rate_bps=MBIT)),
    )
    assert from_text("0s:5mbit,2s:1mbit") == from_text(str(f))
    with pytest.raises(SpecError, match=r"cannot read link schedule .*nowhere\.toml"):
        from_text(str(tmp_path / "nowhere.toml"))


def test_applied_change_json_has_the_fields_the_results_record() -> None:
    change = AppliedChange("cpu", 1.0, 1.004, {"cpus": "0.5"}, {"cpus": "cgroup-v1"}, "edge")
    assert set(change.to_json()) == {"kind", "target", "at_s", "applied_s", "late_s", "values", "mechanism"}


# --- a live testbed (root) ------------------------------------------------------------------------------


def _prefix() -> str:
    return "lx" + secrets.token_hex(3)


SINK = textwrap.dedent("""
    import json, socket, sys, time
    srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((sys.argv[1], 0)); srv.listen(1)
    print("READY", srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    marks, total = [], 0
    while data := conn.recv(1 << 16):
        total += len(data)
        now = time.monotonic_ns()
        if not marks or now - marks[-1][0] >= 10_000_000:  # (a mark per 10 ms is plenty)
            marks.append((now, total))
    conn.close()  # (the sender waits for this; the marks may be more than the pipe holds)
    print(json.dumps(marks))
""")


def _goodput_bps(marks: list[tuple[int, int]], t0_ns: int, start_s: float, end_s: float) -> float:
    """Bytes received in [start, end] of the schedule's time, as bit/s."""
    inside = [(t, n) for t, n in marks if start_s * 1e9 <= t - t0_ns <= end_s * 1e9]
    (t_a, n_a), (t_b, n_b) = inside[0], inside[-1]
    return (n_b - n_a) * 8 / ((t_b - t_a) / 1e9)


@pytest.mark.root
def test_the_scheduler_changes_the_rate_of_a_live_link_mid_transfer() -> None:
    prefix = _prefix()
    sched = parse_inline("0s:1mbit,2.5s:10mbit")
    cfg = TestbedConfig(prefix, sched.steps[0].spec, schedule=sched)
    with make_testbed(cfg, isolation="netns") as tb:
        sink = tb.popen(
            "cloud", [sys.executable, "-c", SINK, tb.bind_address("cloud")], stdout=subprocess.PIPE, text=True
        )
        assert sink.stdout is not None
        port = int(sink.stdout.readline().split()[1])
        with LinkScheduler(tb, sched) as scheduler:
            host, _ = tb.connect_address("edge", "cloud", port)
            send = tb.popen(
                "edge",
                [sys.executable, "-m", "netem.measure", "send", "--to", f"{host}:{port}", "--seconds", "5"],
                stdout=subprocess.DEVNULL,
            )
            assert send.wait(timeout=30) == 0
            marks = json.loads(sink.communicate(timeout=15)[0])
        scheduler.check()
        t0 = scheduler.t0_ns
        assert t0 is not None
    assert find_leftovers(prefix) == []
    changes = scheduler.changes
    assert [(c.at_s, c.values["rate"], c.mechanism["rate"]) for c in changes] == [
        (0, "1mbit", "tbf"),
        (2.5, "10mbit", "tbf"),
    ]
    print("rate change lateness (ms):", [round(c.to_json()["late_s"] * 1e3, 2) for c in changes])
    assert all(0 <= c.applied_s - c.at_s < 0.5 for c in changes)
    slow = _goodput_bps(marks, t0, 1.0, 2.4)
    fast = _goodput_bps(marks, t0, 3.0, 4.8)
    print(f"goodput before {slow / 1e6:.2f} mbit/s, after {fast / 1e6:.2f} mbit/s")
    assert slow < 1.15 * MBIT
    assert fast / slow > 3


def _rtts(tb: Any, port: int, count: int) -> list[float]:
    host, _ = tb.connect_address("edge", "cloud", port)
    proc = tb.popen(
        "edge",
        [sys.executable, "-m", "netem.measure", "ping", "--to", f"{host}:{port}", "--count", str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    return list(json.loads(out)["rtt_ms"])


@pytest.mark.root
def test_the_scheduler_changes_the_delay_of_the_running_delay_stage() -> None:
    """The first step has no delay: the link comes up with a delay stage all the same (the delay line
    here, netem where the kernel has it), and the later step's delay reaches TCP's round trip."""
    prefix = _prefix()
    sched = parse_inline("0s:none,1.5s:none/25ms")
    cfg = TestbedConfig(prefix, LinkSpec(), schedule=sched)
    with make_testbed(cfg, isolation="netns") as tb:
        stage = tb.applied["edge_cloud"]["delay"]
        assert stage in ("netem", "tun-delay-line")
        helpers = tb.helper_pids()
        echo = tb.popen(
            "cloud",
            [
                sys.executable,
                "-m",
                "netem.measure",
                "echo",
                "--bind",
                tb.bind_address("cloud"),
                "--connections",
                "2",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert echo.stdout is not None
        port = int(echo.stdout.readline().split()[1])
        with LinkScheduler(tb, sched) as scheduler:
            before = _rtts(tb, port, 10)
            deadline = time.monotonic() + 10
            while len(scheduler.changes) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            after = _rtts(tb, port, 10)
        scheduler.check()
        assert tb.helper_pids() == helpers  # the same delay line, changed while it ran
    assert find_leftovers(prefix) == []
    changes = scheduler.changes
    assert [(c.at_s, c.values["delay"], c.mechanism["delay"]) for c in changes] == [
        (0, "0ms", stage),
        (1.5, "25ms", stage),
    ]
    print("delay change lateness (ms):", [round(c.to_json()["late_s"] * 1e3, 2) for c in changes])
    assert all(0 <= c.applied_s - c.at_s < 0.5 for c in changes)
    assert min(before) < 25, before  # no delay yet (a delay line forwards in well under a millisecond)
    assert min(after) >= 49.5, after  # 2 × 25 ms


@pytest.mark.root
def test_the_scheduler_changes_the_edges_cpu_quota() -> None:
    prefix = _prefix()
    sched = LinkSchedule((), parse_cpu_inline("0s:1,0.5s:0.3"))
    cfg = TestbedConfig(prefix, LinkSpec(), edge_limits=EdgeLimits(cpus=1.0), schedule=sched)
    spin = "import time\nend = time.monotonic() + 3\nwhile time.monotonic() < end: pass\n"
    probe = textwrap.dedent("""
        import os, sys, time
        pid = int(sys.argv[1]); ticks = os.sysconf("SC_CLK_TCK")
        def cpu():
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / ticks
        time.sleep(1.0); a = cpu(); time.sleep(1.5); print(cpu() - a)
    """)
    with make_testbed(cfg, isolation="netns") as tb:
        mechanism = tb.edge_limits_mechanism
        busy = tb.popen("edge", [sys.executable, "-c", spin])
        with LinkScheduler(tb, sched) as scheduler:
            used = float(subprocess.run(
                [sys.executable, "-c", probe, str(busy.pid)], capture_output=True, text=True, check=True, timeout=30
            ).stdout)  # fmt: skip
        busy.wait(timeout=10)
        scheduler.check()
        d = Path("/sys/fs/cgroup") / ("cpu" if mechanism == "cgroup-v1" else "") / f"{prefix}-edge"
        quota = (d / ("cpu.cfs_quota_us" if mechanism == "cgroup-v1" else "cpu.max")).read_text().split()[0]
    assert find_leftovers(prefix) == []
    assert int(quota) == 30_000
    assert [(c.at_s, c.values, c.mechanism) for c in scheduler.changes] == [
        (0, {"cpus": "1"}, {"cpus": mechanism}),
        (0.5, {"cpus": "0.3"}, {"cpus": mechanism}),
    ]
    print("CPU change lateness (ms):", [round(c.to_json()["late_s"] * 1e3, 2) for c in scheduler.changes])
    assert all(0 <= c.applied_s - c.at_s < 0.5 for c in scheduler.changes)
    assert used < 0.3 * 1.5 + 0.15  # the spinning edge got at most its new quota (less on a busy machine)
