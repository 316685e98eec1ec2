"""The pure tc argv builders for every qdisc, and the choice of mechanism per parameter."""

from __future__ import annotations

import pytest

from netem import CapabilityError, LinkSpec, burst_bytes, htb_argvs, netem_argv, plan_link_end, tbf_argv
from netem.tc import MIN_BURST_BYTES, qdisc_del_argv


def test_tbf_argv() -> None:
    assert tbf_argv("veth0", 10_000_000, netns="lxab-edge") == [
        "tc",
        "-n",
        "lxab-edge",
        "qdisc",
        "add",
        "dev",
        "veth0",
        "root",
        "handle",
        "1:",
        "tbf",
        "rate",
        "10000000bit",
        "burst",
        "5000",
        "limit",
        "125000",
    ]


def test_tbf_as_child_of_netem() -> None:
    argv = tbf_argv("eth0", 1_000_000, burst=4000, limit=20000, parent="1:1", handle="10:")
    assert argv[:9] == ["tc", "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "10:"]
    assert argv[9:] == ["tbf", "rate", "1000000bit", "burst", "4000", "limit", "20000"]


def test_burst_is_sized_to_the_rate() -> None:
    assert burst_bytes(1_000_000) == MIN_BURST_BYTES  # 4 ms at 1 mbit is below two frames
    assert burst_bytes(100_000_000) == 50_000  # 4 ms at 100 mbit
    assert burst_bytes(10**9) > burst_bytes(10**8)


def test_htb_argvs() -> None:
    cmds = htb_argvs("eth0", 10_000_000, limit=30000)
    assert cmds == [
        ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:", "htb", "default", "1"],
        [
            "tc",
            "class",
            "add",
            "dev",
            "eth0",
            "parent",
            "1:",
            "classid",
            "1:1",
            "htb",
            "rate",
            "10000000bit",
            "ceil",
            "10000000bit",
            "burst",
            "5000",
            "cburst",
            "5000",
        ],
        ["tc", "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "2:", "bfifo", "limit", "30000"],
    ]


def test_netem_argv() -> None:
    assert netem_argv("eth0", delay_s=0.02, jitter_s=0.001, loss=0.005, netns="ns") == [
        "tc",
        "-n",
        "ns",
        "qdisc",
        "add",
        "dev",
        "eth0",
        "root",
        "handle",
        "1:",
        "netem",
        "limit",
        "1000",
        "delay",
        "20000us",
        "1000us",
        "loss",
        "0.5%",
    ]
    assert netem_argv("eth0", loss=0.1)[-2:] == ["loss", "10%"]
    assert "delay" not in netem_argv("eth0", loss=0.1)


def test_qdisc_del_argv() -> None:
    assert qdisc_del_argv("eth0", netns="ns") == ["tc", "-n", "ns", "qdisc", "del", "dev", "eth0", "root"]


ALL = frozenset({"tbf", "htb", "netem"})


def test_plan_with_netem_puts_the_rate_limiter_under_it() -> None:
    spec = LinkSpec.parse(rate="10mbit", delay="20ms", jitter="2ms", loss="1%")
    plan = plan_link_end("eth0", spec, ALL)
    assert plan.applied == {"delay": "netem", "jitter": "netem", "loss": "netem", "rate": "tbf"}
    assert plan.userspace == ()
    assert plan.commands[0][plan.commands[0].index("root") + 3] == "netem"
    assert plan.commands[1][5:9] == ["parent", "1:1", "handle", "10:"]


def test_plan_without_netem_hands_delay_to_user_space() -> None:
    spec = LinkSpec.parse(rate="10mbit", delay="20ms", loss="1%")
    plan = plan_link_end("eth0", spec, frozenset({"tbf", "htb"}))
    assert plan.applied == {"rate": "tbf"}
    assert plan.userspace == ("delay", "loss")
    assert len(plan.commands) == 1 and "tbf" in plan.commands[0]


def test_plan_falls_back_to_htb() -> None:
    plan = plan_link_end("eth0", LinkSpec.parse(rate="1mbit"), frozenset({"htb"}))
    assert plan.applied == {"rate": "htb"}
    assert [c[1:3] for c in plan.commands] == [["qdisc", "add"], ["class", "add"], ["qdisc", "add"]]


def test_plan_refuses_a_rate_it_cannot_shape() -> None:
    with pytest.raises(CapabilityError, match="tbf"):
        plan_link_end("eth0", LinkSpec.parse(rate="1mbit"), frozenset({"netem"}))


def test_unshaped_link_has_no_commands() -> None:
    plan = plan_link_end("eth0", LinkSpec(), ALL)
    assert plan.commands == [] and plan.applied == {} and plan.userspace == ()


def test_user_limit_is_used() -> None:
    plan = plan_link_end("eth0", LinkSpec.parse(rate="1mbit", limit="32kb"), ALL)
    assert plan.commands[0][-2:] == ["limit", "32768"]
