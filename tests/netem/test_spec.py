"""LinkSpec / EdgeLimits / TestbedConfig: tc-style parsing, clear errors, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from netem import EdgeLimits, LinkSpec, SpecError, TestbedConfig
from netem.spec import format_rate, format_time, parse_rate, parse_size, parse_time


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("10mbit", 10_000_000),
        ("500kbit", 500_000),
        ("1gbit", 10**9),
        ("1.5mbit", 1_500_000),
        ("64bit", 64),
        ("1mibit", 2**20),
        ("10Mbit", 10_000_000),
        ("2 mbit", 2_000_000),
    ],
)
def test_parse_rate(text: str, bps: int) -> None:
    assert parse_rate(text) == bps


@pytest.mark.parametrize("text", ["10mbps", "1kbps", "5bps", "1gbps"])
def test_byte_rates_are_refused_with_the_right_spelling(text: str) -> None:
    with pytest.raises(SpecError, match="bytes per second") as info:
        parse_rate(text)
    assert "bit" in str(info.value)  # the message suggests a bit-based spelling


def test_mbps_message_names_both_readings() -> None:
    with pytest.raises(SpecError) as info:
        parse_rate("10mbps")
    assert "'10mbit'" in str(info.value) and "'80mbit'" in str(info.value)


@pytest.mark.parametrize("text", ["10", "fast", "10 furlongs", "-5mbit", "0mbit", ""])
def test_bad_rates(text: str) -> None:
    with pytest.raises(SpecError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "s"), [("20ms", 0.02), ("500us", 0.0005), ("1s", 1.0), ("0.5ms", 0.0005), ("2msec", 0.002)]
)
def test_parse_time(text: str, s: float) -> None:
    assert parse_time(text) == pytest.approx(s)


def test_time_without_unit_is_refused() -> None:
    with pytest.raises(SpecError, match="no unit"):
        parse_time("20", "delay")


def test_parse_size_uses_tc_binary_units() -> None:
    assert parse_size("64kb") == 65536
    assert parse_size("1500") == 1500
    assert parse_size("1mb") == 2**20


def test_linkspec_parse_and_describe() -> None:
    spec = LinkSpec.parse(rate="10mbit", delay="20ms", jitter="1ms", loss="0.5%", limit="64kb")
    assert spec == LinkSpec(10_000_000, 0.02, 0.001, 0.005, 65536)
    assert spec.describe() == {
        "rate": "10mbit",
        "delay": "20ms",
        "jitter": "1ms",
        "loss": "0.5%",
        "limit": "65536b",
    }
    assert LinkSpec.parse().describe()["rate"] is None
    assert not LinkSpec.parse().shaped
    assert LinkSpec.parse(rate="unlimited").rate_bps is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"loss": "0.5"},
        {"loss": "100%"},
        {"delay": "20"},
        {"delay": "11s"},
        {"rate": "10mbps"},
        {"limit": "64kb"},
        {"rate": "1mbit", "limit": "100"},
    ],
)
def test_linkspec_refuses_bad_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(SpecError):
        LinkSpec.parse(**kwargs)


def test_spec_errors_are_value_errors() -> None:
    with pytest.raises(ValueError, match="loss"):
        LinkSpec(loss=2.0)


@given(st.integers(min_value=1, max_value=10**11))
def test_rate_format_round_trip(bps: int) -> None:
    assert parse_rate(format_rate(bps)) == bps


@given(st.integers(min_value=0, max_value=10_000_000))
def test_time_format_round_trip(us: int) -> None:
    assert round(parse_time(format_time(us / 1e6)) * 1e6) == us


def test_path_composition() -> None:
    a = LinkSpec.parse(rate="100mbit", delay="5ms", loss="10%")
    b = LinkSpec.parse(rate="10mbit", delay="20ms", loss="10%")
    path = a.then(b)
    assert path.rate_bps == 10_000_000
    assert path.delay_s == pytest.approx(0.025)
    assert path.loss == pytest.approx(0.19)


def test_edge_limits() -> None:
    lim = EdgeLimits.parse(cpus="0.5", cpuset="0", memory="256m")
    assert lim == EdgeLimits(0.5, "0", 256 * 2**20)
    assert lim.threads() == 1
    assert EdgeLimits.parse(cpus="3", cpuset="0-1").threads() == 2
    assert EdgeLimits.parse(cpus="2.7").threads() == 2
    assert EdgeLimits().threads() is None
    assert lim.describe() == {"cpus": "0.5", "cpuset": "0", "memory": "256m"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"cpus": "half"},
        {"cpus": "0"},
        {"cpuset": "a"},
        {"cpuset": "3-1"},
        {"memory": "1m"},
        {"memory": "lots"},
    ],
)
def test_edge_limits_refuse_bad_values(kwargs: dict[str, str]) -> None:
    with pytest.raises(SpecError):
        EdgeLimits.parse(**kwargs)


@pytest.mark.parametrize("prefix", ["lx", "abc123", "lx-1", "LX12", "lx123456789", "lx 1"])
def test_testbed_prefix_must_follow_the_scheme(prefix: str) -> None:
    with pytest.raises(SpecError, match="prefix"):
        TestbedConfig(prefix, LinkSpec())


def test_testbed_prefix_accepts_run_prefixes() -> None:
    assert TestbedConfig("lx3f9a1c", LinkSpec()).prefix == "lx3f9a1c"


def test_parse_cpuset() -> None:
    from netem import format_cpuset, parse_cpuset

    assert format_cpuset(parse_cpuset("3,0-1,5-7")) == "0-1,3,5-7"
    assert format_cpuset({2}) == "2" and format_cpuset(set()) == ""
    assert parse_cpuset("0") == [0]
    assert parse_cpuset("3,0-1,1") == [0, 1, 3]
    for bad in ("", "a", "0-", "1-0", "0,,1", " 0"):
        with pytest.raises(SpecError):
            parse_cpuset(bad)


def test_testbed_congestion_control_must_be_a_kernel_name() -> None:
    assert TestbedConfig("lxab", LinkSpec(), tcp_congestion_control="cubic").tcp_congestion_control == "cubic"
    for bad in ("CUBIC", "cubic; reboot", "", "a" * 17):
        with pytest.raises(SpecError, match="congestion control"):
            TestbedConfig("lxab", LinkSpec(), tcp_congestion_control=bad)
