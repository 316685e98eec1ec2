"""Link schedules: the inline form, TOML files, Mahimahi traces as rate steps, and the tc argv that
change a live link."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest

from netem import LinkSpec, SpecError, plan_link_end
from netem.executor import Executor
from netem.mahimahi import SHIPPED_TRACES, TRACES_DIR, format_mahimahi, read_mahimahi
from netem.schedule import (
    MIN_TRACE_RATE_BPS,
    AppliedChange,
    CpuStep,
    LinkSchedule,
    LinkStep,
    load,
    mahimahi_to_rate_steps,
    parse_cpu_inline,
    parse_inline,
)
from netem.tc import htb_change_argvs, netem_change_argv, plan_link_change, tbf_change_argv

# --- the inline form -----------------------------------------------------------------------------------


def test_the_issues_example_parses_into_three_steps() -> None:
    sched = parse_inline("0s:10mbit/5ms,20s:1mbit/40ms,40s:10mbit/5ms")
    assert sched.steps == (
        LinkStep(0.0, LinkSpec(rate_bps=10_000_000, delay_s=0.005)),
        LinkStep(20.0, LinkSpec(rate_bps=1_000_000, delay_s=0.04)),
        LinkStep(40.0, LinkSpec(rate_bps=10_000_000, delay_s=0.005)),
    )
    assert sched.spec_at(19.999) == LinkSpec(rate_bps=10_000_000, delay_s=0.005)
    assert sched.spec_at(20.0) == LinkSpec(rate_bps=1_000_000, delay_s=0.04)
    assert sched.spec_at(1e6) == sched.steps[-1].spec
    assert sched.cpus_at(5) is None


def test_jitter_loss_and_empty_delay() -> None:
    sched = parse_inline(" 0s : 1mbit/40ms~5ms/1% , 500ms:2mbit//0.5%, 1s:3mbit ")
    assert [s.spec for s in sched.steps] == [
        LinkSpec(rate_bps=1_000_000, delay_s=0.04, jitter_s=0.005, loss=0.01),
        LinkSpec(rate_bps=2_000_000, loss=0.005),
        LinkSpec(rate_bps=3_000_000),
    ]
    assert [s.at_s for s in sched.steps] == [0.0, 0.5, 1.0]
    unlimited = parse_inline("0s:none/10ms,5s:none/50ms")
    assert [s.spec.rate_bps for s in unlimited.steps] == [None, None]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty link schedule"),
        ("5s:10mbit/5ms,20s:1mbit", "first link step is at 5s: it must be at 0s"),
        ("0s:10mbit,20s:1mbit,10s:5mbit", "step 3 at 10s does not come after step 2 at 20s"),
        ("0s:10mbit,0s:1mbit", "out of order"),
        ("0:10mbit", "step 1 '0:10mbit': step time '0' has no unit"),
        ("0s:10mbps", "'mbps' means bytes per second"),
        ("0s:10mbit/40", "delay '40' has no unit"),
        ("0s:10mbit/40ms±5ms", "write the jitter with a tilde"),
        ("0s:10mbit/~5ms", "jitter needs a delay"),
        ("0s:10mbit/5ms/1", "needs a percent sign"),
        ("0s:10mbit/5ms/1%/x", "has 4 fields"),
        ("0s:/5ms", "has no rate"),
        ("0s:10mbit,,5s:1mbit", "step 2 is empty"),
        ("10mbit", "must look like TIME:VALUE"),
        ("0s:10mbit,5s:none/5ms", "rate limiter"),
    ],
)
def test_bad_inline_schedules_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_inline(text)


def test_cpu_steps() -> None:
    steps = parse_cpu_inline("0s:2,30s:0.5")
    assert steps == (CpuStep(0.0, 2.0), CpuStep(30.0, 0.5))
    sched = LinkSchedule((), steps)
    assert sched.cpus_at(29.9) == 2.0 and sched.cpus_at(30) == 0.5 and sched.spec_at(1) is None
    with pytest.raises(SpecError, match="number of cores"):
        parse_cpu_inline("0s:two")
    with pytest.raises(SpecError, match=r"CPU step 2 '5s:0.001'.*\[0.01, 1024\]"):
        parse_cpu_inline("0s:1,5s:0.001")
    with pytest.raises(SpecError, match="first CPU step is at 1s"):
        parse_cpu_inline("1s:1")
    with pytest.raises(SpecError, match="at least one link or CPU step"):
        LinkSchedule(())


def test_json_round_trip_and_description() -> None:
    sched = LinkSchedule(
        parse_inline("0s:10mbit/5ms~1ms/0.1%,2.5s:1500kbit/40ms").steps, parse_cpu_inline("0s:1,10s:0.25")
    )
    data = json.loads(json.dumps(sched.to_json()))
    assert data["schema"] == "localexit-link-schedule/1"
    assert LinkSchedule.from_json(data) == sched
    assert sched.describe()["link"][1] == {
        "at": "2.5s",
        "rate": "1500kbit",
        "delay": "40ms",
        "jitter": "0ms",
        "loss": "0%",
        "limit": None,
    }
    assert sched.describe()["cpu"] == [{"at": "0s", "cpus": "1"}, {"at": "10s", "cpus": "0.25"}]
    with pytest.raises(SpecError, match="schema"):
        LinkSchedule.from_json({**data, "schema": "localexit/1"})
    with pytest.raises(SpecError, match="malformed"):
        LinkSchedule.from_json({"schema": data["schema"], "link": [{"at_s": 0}], "cpu": []})


def test_applied_change_records_lateness() -> None:
    change = AppliedChange(
        "link", 20.0, 20.004, LinkSpec(rate_bps=10**6).describe(), {"rate": "tbf"}, "edge_cloud"
    )
    doc = change.to_json()
    assert doc["late_s"] == pytest.approx(0.004) and doc["mechanism"] == {"rate": "tbf"}
    assert doc["values"]["rate"] == "1mbit"


# --- TOML files ----------------------------------------------------------------------------------------


def test_toml_schedule_with_cpu_steps(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        """
# a slow spell in the middle
[[link]]
at = "0s"
rate = "10mbit"
delay = "5ms"
limit = "64kb"

[[link]]
at = "20s"
rate = "1mbit"
delay = "40ms"
jitter = "5ms"
loss = "1%"

[[cpu]]
at = "0s"
cpus = 2.0
"""
    )
    sched = load(path)
    assert sched.steps == (
        LinkStep(0.0, LinkSpec(rate_bps=10_000_000, delay_s=0.005, limit_bytes=65536)),
        LinkStep(20.0, LinkSpec(rate_bps=1_000_000, delay_s=0.04, jitter_s=0.005, loss=0.01)),
    )
    assert sched.cpu_steps == (CpuStep(0.0, 2.0),)


def test_toml_trace_is_relative_to_the_schedule_file(tmp_path: Path) -> None:
    (tmp_path / "t.mahimahi").write_text("10\n20\n")  # 1 packet per 10 ms = 1.2 Mbit/s
    path = tmp_path / "s.toml"
    path.write_text('[trace]\nfile = "t.mahimahi"\nduration = "1s"\ndelay = "5ms"\nlimit = "30kb"\n')
    # default 100 ms windows; the first holds 9 packets (none may leave at t = 0), the rest 10
    assert load(path).steps == (
        LinkStep(0.0, LinkSpec(rate_bps=1_080_000, delay_s=0.005, limit_bytes=30 * 1024)),
        LinkStep(0.1, LinkSpec(rate_bps=1_200_000, delay_s=0.005, limit_bytes=30 * 1024)),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[link]]\nat = "0s"\nrate = "1mbit"\nspeed = "2"\n', "unknown keys speed"),
        ('[[link]]\nrate = "1mbit"\n', "needs at ="),
        ('[[link]]\nat = "0s"\ndelay = 20\n', "must be a string with a unit"),
        ('[[link]]\nat = "0s"\nrate = "1mbit"\n[trace]\nfile = "x"\n', "not both"),
        ('[links]\nat = "0s"\n', "unknown tables links"),
        ('[[link]]\nat = "0s"\nrate = "1mbit"\n[[cpu]]\nat = "0s"\n', "needs exactly at"),
        ('[trace]\nfile = "missing.mahimahi"\n', "cannot read Mahimahi trace"),
        ("[[link]\n", "not valid TOML"),
    ],
)
def test_bad_toml_schedules(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(SpecError, match=message):
        load(path)


# --- Mahimahi traces -----------------------------------------------------------------------------------


def test_tiny_trace_rates_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "tiny.mahimahi"
    path.write_text("2\n2\n4\n10\n20\n")
    opp = read_mahimahi(path)
    assert opp == [2, 2, 4, 10, 20]
    # period 20 ms; 10 ms windows over 40 ms. [0,10): 2,2,4; [10,20): 10; [20,30): 20 and the second
    # pass's 22,22,24; [30,40): 30. One 1500-byte packet per 10 ms is 1.2 Mbit/s.
    sched = mahimahi_to_rate_steps(opp, 10, 0.04)
    assert [(s.at_s, s.spec.rate_bps) for s in sched.steps] == [
        (0.0, 3_600_000),
        (0.01, 1_200_000),
        (0.02, 4_800_000),
        (0.03, 1_200_000),
    ]
    # equal windows merge into one step (99 windows here), and the other parameters come from base
    merged = mahimahi_to_rate_steps([10, 20], 10, 1.0, base=LinkSpec(delay_s=0.005, loss=0.01))
    assert merged.steps == (
        LinkStep(0.0, LinkSpec(rate_bps=MIN_TRACE_RATE_BPS, delay_s=0.005, loss=0.01)),
        LinkStep(0.01, LinkSpec(rate_bps=1_200_000, delay_s=0.005, loss=0.01)),
    )


def test_an_outage_becomes_a_trickle_not_rate_zero() -> None:
    sched = mahimahi_to_rate_steps([5, 6, 500], 100, 1.0)
    assert [(s.at_s, s.spec.rate_bps) for s in sched.steps] == [
        (0.0, 240_000),  # two packets in 100 ms
        (0.1, MIN_TRACE_RATE_BPS),  # none until 500 ms
        (0.5, 360_000),  # 500 itself, then the second pass's 505 and 506
        (0.6, MIN_TRACE_RATE_BPS),
    ]


def test_shipped_step_trace_replays_its_steps_and_repeats() -> None:
    sched = mahimahi_to_rate_steps(read_mahimahi(TRACES_DIR / "step.mahimahi"), 1000, 20)
    # nothing may leave at t = 0, so the first second holds 999 of the 1000 packets of 12 Mbit/s
    assert [(s.at_s, s.spec.rate_bps) for s in sched.steps] == [
        (0.0, 11_988_000),
        (1.0, 12_000_000),
        (5.0, 1_200_000),
        (10.0, 12_000_000),
        (15.0, 1_200_000),
    ]


@pytest.mark.parametrize("name", sorted(SHIPPED_TRACES))
def test_shipped_traces_are_what_their_generator_makes(name: str) -> None:
    path = TRACES_DIR / name
    assert path.read_text() == format_mahimahi(SHIPPED_TRACES[name]())
    assert path.stat().st_size < 64 * 1024
    rates = {s.spec.rate_bps for s in mahimahi_to_rate_steps(read_mahimahi(path), 100, 10).steps}
    assert len(rates) >= 2  # it changes


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no delivery opportunities"),
        ("\n\n", "holds no delivery opportunities"),
        ("1\n2\nabc\n3\n", "line 3: 'abc' is not a time"),
        ("1\n-2\n", "line 2: '-2' is not a time"),
        ("1\n5\n3\n", "line 3: 3 ms comes before the previous line's 5 ms"),
        ("0\n0\n", "lasts 0 ms"),
    ],
)
def test_bad_traces_name_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.mahimahi"
    path.write_text(content)
    with pytest.raises(SpecError, match=message):
        read_mahimahi(path)


def test_bad_conversion_arguments() -> None:
    with pytest.raises(SpecError, match="non-decreasing"):
        mahimahi_to_rate_steps([5, 3, 10], 100, 1)
    with pytest.raises(SpecError, match="window must be a whole number of ms ≥ 10"):
        mahimahi_to_rate_steps([10], 1, 1)
    with pytest.raises(SpecError, match="duration must be above 0"):
        mahimahi_to_rate_steps([10], 100, 0)
    with pytest.raises(SpecError, match="widen the window"):
        mahimahi_to_rate_steps([10], 10, 10 * 86400)


# --- changing a live qdisc -----------------------------------------------------------------------------


def test_tbf_change_argv() -> None:
    assert tbf_change_argv("veth0", 1_000_000, netns="lxab-edge") == [
        "tc",
        "-n",
        "lxab-edge",
        "qdisc",
        "change",
        "dev",
        "veth0",
        "root",
        "handle",
        "1:",
        "tbf",
        "rate",
        "1000000bit",
        "burst",
        "3200",
        "limit",
        "24224",
    ]


def test_htb_change_touches_the_class_and_its_fifo() -> None:
    assert htb_change_argvs("eth0", 2_000_000, parent="1:1", handle="10:") == [
        [
            *["tc", "class", "change", "dev", "eth0", "parent", "10:", "classid", "10:1", "htb"],
            *["rate", "2000000bit", "ceil", "2000000bit", "burst", "3200", "cburst", "3200"],
        ],
        [
            "tc",
            "qdisc",
            "change",
            "dev",
            "eth0",
            "parent",
            "10:1",
            "handle",
            "11:",
            "bfifo",
            "limit",
            "25000",
        ],
    ]


def test_netem_change_without_delay_or_loss_clears_them() -> None:
    assert netem_change_argv("eth0", netns="ns") == [
        *["tc", "-n", "ns", "qdisc", "change", "dev", "eth0", "root", "handle", "1:"],
        *["netem", "limit", "1000"],
    ]
    argv = netem_change_argv("eth0", delay_s=0.04, jitter_s=0.005, loss=0.01, limit_packets=2000)
    assert argv[2:] == [
        *["change", "dev", "eth0", "root", "handle", "1:", "netem", "limit", "2000"],
        *["delay", "40000us", "5000us", "loss", "1%"],
    ]


def _as_change(commands: list[list[str]]) -> list[list[str]]:
    return [[("change" if i == 4 and w == "add" else w) for i, w in enumerate(c)] for c in commands]


@pytest.mark.parametrize("qdiscs", [{"tbf", "netem"}, {"htb", "netem"}, {"tbf"}, {"htb"}])
def test_a_change_is_the_bring_up_of_the_new_spec_with_change_for_add(qdiscs: set[str]) -> None:
    first = LinkSpec.parse(rate="10mbit", delay="5ms")
    later = LinkSpec.parse(rate="1mbit", delay="40ms", jitter="5ms", loss="1%")
    up = plan_link_end("d0", first, frozenset(qdiscs), netns="ns")
    # what the testbed records: the kernel's mechanisms, and the delay line for what they leave over
    applied = {**up.applied, **dict.fromkeys(up.userspace, "tun-delay-line")}
    change = plan_link_change("d0", later, applied, netns="ns")
    fresh = plan_link_end("d0", later, frozenset(qdiscs), netns="ns")
    # htb's root qdisc holds nothing that depends on the rate: its command is the one not repeated
    expected = [c for c in _as_change(fresh.commands) if c[-3:] != ["htb", "default", "1"]]
    assert change.commands == expected
    assert change.applied == fresh.applied
    assert change.userspace == fresh.userspace


def test_a_delay_line_link_hands_delay_jitter_and_loss_to_the_caller() -> None:
    applied = {"rate": "tbf", "delay": "tun-delay-line"}
    plan = plan_link_change("d0", LinkSpec.parse(rate="2mbit", delay="10ms", loss="1%"), applied)
    assert plan.commands == [tbf_change_argv("d0", 2_000_000)]
    assert plan.applied == {"rate": "tbf"}
    assert plan.userspace == ("delay", "jitter", "loss")


@pytest.mark.parametrize(
    ("applied", "spec", "message"),
    [
        ({"delay": "netem"}, LinkSpec.parse(rate="1mbit", delay="5ms"), "without a rate limiter"),
        ({"rate": "tbf"}, LinkSpec.parse(delay="5ms"), "cannot be removed"),
        ({"rate": "tbf"}, LinkSpec.parse(rate="1mbit", loss="1%"), "without a delay stage"),
    ],
)
def test_changes_the_live_layout_cannot_make_are_refused(
    applied: dict[str, str], spec: LinkSpec, message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        plan_link_change("d0", spec, applied)


@pytest.mark.root
@pytest.mark.parametrize("rate_qdisc", ["tbf", "htb"])
def test_the_kernel_takes_the_change_and_keeps_the_qdisc(rate_qdisc: str) -> None:
    """On a veth in a namespace of our own: the rate limiter changes in place (same handle, new rate,
    and the queue resized to 100 ms at the new rate)."""
    ns = "lx" + secrets.token_hex(3) + "-sched"
    ex = Executor()
    ex.run(["ip", "netns", "add", ns])
    try:
        ex.run(["ip", "-n", ns, "link", "add", "s0", "type", "veth", "peer", "name", "s1"])
        up = plan_link_end("s0", LinkSpec.parse(rate="10mbit"), frozenset({rate_qdisc}), netns=ns)
        for argv in up.commands:
            ex.run(argv)
        for argv in plan_link_change("s0", LinkSpec.parse(rate="1mbit"), up.applied, netns=ns).commands:
            ex.run(argv)
        qdiscs = ex.run(["tc", "-n", ns, "qdisc", "show", "dev", "s0"]).stdout
        if rate_qdisc == "tbf":
            assert re.search(r"qdisc tbf 1: root .*rate 1Mbit burst 3200b", qdiscs), qdiscs
        else:
            classes = ex.run(["tc", "-n", ns, "class", "show", "dev", "s0"]).stdout
            assert re.search(r"class htb 1:1 root .*rate 1Mbit ceil 1Mbit", classes), classes
            assert re.search(r"qdisc bfifo 2: parent 1:1 limit 24224b", qdiscs), qdiscs
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
