"""Exit policies on synthetic profiles: the choice a hand calculation gives, hysteresis, the oracle."""

from __future__ import annotations

from pathlib import Path

import pytest

from contract.errors import SchemaError
from nodes.policy import (
    AdaptivePolicy,
    ExitProfile,
    LinkEstimate,
    LinkTruth,
    OraclePolicy,
    Profile,
    best_exit,
    check_policy,
    expected_latency_ms,
    read_profile,
    write_profile,
)

N = 10
# rate 8 Mbit/s is one byte per microsecond: 0.001 ms per byte, which keeps the hand sums short.
LINK_A = LinkEstimate(rate_bps=8e6, rtt_ms=2.0)
LINK_FAST = LinkEstimate(rate_bps=8e10, rtt_ms=0.0)
LINK_SLOW = LinkEstimate(rate_bps=8e4, rtt_ms=50.0)


def _profile(link: LinkEstimate = LINK_A) -> Profile:
    return Profile(
        batch_size=N,
        threshold=0.3,
        link=link,
        exits=(
            ExitProfile(1, edge_ms=1.0, feature_bytes=1000, local_rate=0.0, cloud_ms=2.0, accuracy=0.80),
            ExitProfile(5, edge_ms=4.0, feature_bytes=100, local_rate=0.5, cloud_ms=1.0, accuracy=0.90),
            ExitProfile(8, edge_ms=8.0, feature_bytes=10, local_rate=0.9, cloud_ms=0.5, accuracy=0.85),
        ),
    )


def test_expected_latency_is_the_hand_calculation() -> None:
    p = _profile()
    # exit 1: 1 + 1·(1·10·1000·0.001 + 2 + 2) = 15
    assert expected_latency_ms(p.at(1), N, LINK_A) == pytest.approx(15.0)
    # exit 5: 4 + 0.5·(0.5·10·100·0.001 + 2 + 1) = 5.75
    assert expected_latency_ms(p.at(5), N, LINK_A) == pytest.approx(5.75)
    # exit 8: 8 + 0.1·(0.1·10·10·0.001 + 2 + 0.5) = 8.251
    assert expected_latency_ms(p.at(8), N, LINK_A) == pytest.approx(8.251)


@pytest.mark.parametrize(("link", "exit"), [(LINK_A, 5), (LINK_FAST, 1), (LINK_SLOW, 8)])
def test_the_fastest_exit_follows_the_link(link: LinkEstimate, exit: int) -> None:
    assert best_exit(_profile(), N, link)[0] == exit


@pytest.mark.parametrize(
    ("link", "slo", "exit", "why"),
    [
        (LINK_A, 10.0, 5, "most accurate within the slo"),  # exits 5 (5.75) and 8 (8.25) fit: 5 is 0.90
        (LINK_A, 5.0, 5, "none meets the slo"),  # none fits: the fastest
        (LINK_SLOW, 60.0, 5, "most accurate within the slo"),  # 5 (54.5) and 8 (13.15) fit
        (LINK_SLOW, 20.0, 8, "most accurate within the slo"),  # only 8 fits
        (LINK_FAST, 3.5, 1, "most accurate within the slo"),  # only 1 (3.0) fits
    ],
)
def test_the_slo_variant_picks_the_most_accurate_exit_that_fits(
    link: LinkEstimate, slo: float, exit: int, why: str
) -> None:
    assert best_exit(_profile(), N, link, slo) == (exit, why)


def _seen(policy: AdaptivePolicy, link: LinkEstimate) -> None:
    """Feed the policy one batch's observations that make its (alpha=1) estimate ``link``."""
    policy.observe_rtt(link.rtt_ms)
    sent = 100_000
    policy.observe_transfer(sent, link.rtt_ms + sent * 8000.0 / link.rate_bps)


def test_adaptive_estimates_the_link_from_its_observations() -> None:
    policy = AdaptivePolicy(_profile(), alpha=1.0)
    _seen(policy, LINK_SLOW)
    est = policy.link.estimate
    assert est.rtt_ms == pytest.approx(50.0)
    assert est.rate_bps == pytest.approx(8e4)


def test_adaptive_holds_against_a_one_batch_blip_and_follows_a_lasting_change() -> None:
    policy = AdaptivePolicy(_profile(), alpha=1.0, patience=3)
    assert policy.choose(N, 0).exit == 5  # the profile's own link: exit 5
    _seen(policy, LINK_FAST)
    blip = policy.choose(N, 0)
    assert blip.exit == 5 and blip.reason.startswith("hold")
    _seen(policy, LINK_A)
    assert policy.choose(N, 0).exit == 5
    exits = []
    for _ in range(3):
        _seen(policy, LINK_FAST)
        exits.append(policy.choose(N, 0).exit)
    assert exits == [5, 5, 1]  # the third batch in a row of a faster exit moves it


def test_adaptive_needs_the_gain_to_exceed_the_margin() -> None:
    # On LINK_FAST exit 1 (3.0 ms) beats exit 5 (4.5 ms) by a third: a margin of 40 % keeps exit 5.
    policy = AdaptivePolicy(_profile(), alpha=1.0, patience=1, margin=0.4)
    _seen(policy, LINK_FAST)
    assert policy.choose(N, 0).exit == 5
    policy = AdaptivePolicy(_profile(), alpha=1.0, patience=1, margin=0.2)
    _seen(policy, LINK_FAST)
    assert policy.choose(N, 0).exit == 1


def test_adaptive_with_an_slo_leaves_an_exit_that_misses_it() -> None:
    policy = AdaptivePolicy(_profile(), alpha=1.0, patience=2, slo_ms=20.0)
    assert policy.current == 5
    decisions = []
    for _ in range(2):
        _seen(policy, LINK_SLOW)  # exit 5 now expects 54.5 ms, exit 8 13.15 ms
        decisions.append(policy.choose(N, 0))
    assert [d.exit for d in decisions] == [5, 8]
    assert decisions[-1].expected_ms == pytest.approx(13.15)
    assert decisions[-1].rtt_ms == pytest.approx(50.0)


def test_oracle_picks_for_the_scheduled_link_at_that_moment() -> None:
    truth = LinkTruth(at_s=(0.0, 10.0), rate_bps=(8e6, 8e4), delay_ms=(1.0, 25.0))
    t0 = 1_000_000_000
    oracle = OraclePolicy(_profile(), truth, t0)
    before, after = oracle.choose(N, t0 + 5 * 10**9), oracle.choose(N, t0 + 12 * 10**9)
    assert (before.exit, before.rtt_ms, before.rate_bps) == (5, 2.0, 8e6)
    assert (after.exit, after.rtt_ms, after.rate_bps) == (8, 50.0, 8e4)


def test_a_sem_with_a_policy_other_than_fixed_is_one_clear_error() -> None:
    check_policy("fixed", "sem")
    check_policy("adaptive", "mem", 40.0)
    with pytest.raises(ValueError, match="multi-exit model"):
        check_policy("adaptive", "sem")
    with pytest.raises(ValueError, match="one of"):
        check_policy("greedy", "mem")


def test_a_profile_survives_its_file_and_a_wrong_one_is_named(tmp_path: Path) -> None:
    p = _profile()
    assert read_profile(write_profile(p, tmp_path / "p.json")) == p
    (tmp_path / "bad.json").write_text('{"schema": "localexit-profile/1", "exits": []}')
    with pytest.raises(SchemaError, match=r"bad\.json"):
        read_profile(tmp_path / "bad.json")
