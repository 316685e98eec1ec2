from __future__ import annotations

import pytest

from harness.check import compare, format_report
from harness.errors import ResultsError

from .helpers import make_results


def test_same_distribution_passes() -> None:
    report = compare(make_results(seed=0), make_results(seed=100))
    assert report.exit_code == 0
    assert all(c.verdict in ("pass", "absent") for c in report.comparisons), format_report(report)


def test_a_real_slowdown_is_a_regression() -> None:
    report = compare(make_results(seed=0, batch_ms=2.0), make_results(seed=100, batch_ms=2.6))
    assert report.exit_code == 1
    assert "overall" in [c.metric for c in report.regressions]
    assert "REGRESSION" in format_report(report)


UNSHAPED = {"edge_cloud": {"rate": None, "delay": "0ms", "jitter": "0ms", "loss": "0%", "limit": None},
            "test_edge": None}  # fmt: skip


def test_slowdown_explained_by_machine_speed_is_not_a_regression() -> None:
    # Unshaped link: everything 30 % slower, and the calibration workload too: the machine, not the code.
    base = make_results(seed=0, batch_ms=2.0, calibration_ms=10.0, links=UNSHAPED)
    cur = make_results(seed=100, batch_ms=2.6, calibration_ms=13.0, links=UNSHAPED)
    assert compare(base, cur).exit_code == 0
    assert compare(base, cur, use_calibration=False).exit_code == 1


def test_a_run_whose_calibration_caught_a_slow_cpu_state_does_not_make_a_regression() -> None:
    # Seen in the CI test suite on a VM whose CPUs switch between a fast and a ~1.5x slower state every few seconds:
    # the baseline's runs calibrated at 2.96, 3.91 and 3.82 ms, the unchanged build's at ~2.5 ms. The
    # median (3.82) scaled the current compute up 1.5x; each side's best calibration does not.
    base = make_results(runs=3, seed=0, calibration_ms=2.96, links=UNSHAPED)
    for run, cal in zip(base["runs"], (2.96, 3.91, 3.82), strict=True):
        run["calibration_ms"] = cal
    cur = make_results(runs=3, seed=100, calibration_ms=2.9, links=UNSHAPED)
    report = compare(base, cur)
    assert report.exit_code == 0, format_report(report)
    assert report.calibration_ratio == pytest.approx(2.9 / 2.96)


def _slow_down(results: dict, factors: dict[str, float]) -> dict:
    for run in results["runs"]:
        for key, factor in factors.items():
            run["per_batch_ms"][key] = [v * factor for v in run["per_batch_ms"][key]]
    return results


def test_on_a_shaped_link_only_compute_is_calibrated() -> None:
    # 10 mbit: a 30 % slower CPU slows the compute procedures (half of each path here), not the link.
    base = make_results(seed=0, calibration_ms=10.0)
    slower_cpu = _slow_down(
        make_results(seed=100, calibration_ms=13.0),
        {"2": 1.3, "4": 1.3, "latency": 1.15, "edge": 1.15, "cloud": 1.15},
    )
    assert compare(base, slower_cpu).exit_code == 0, format_report(compare(base, slower_cpu))
    # A transfer that got 35 % slower is a regression even on a slower machine: scaling it by the
    # calibration, as if the link were CPU-bound, would hide it.
    base = make_results(seed=0, batch_ms=20.0, calibration_ms=10.0)  # procedure 1 ≈ 4 ms
    slower_link = _slow_down(make_results(seed=100, batch_ms=20.0, calibration_ms=13.0), {"1": 1.35})
    report = compare(base, slower_link)
    assert [c.metric for c in report.regressions] == ["procedure 1"], format_report(report)


def test_small_change_within_tolerance_passes() -> None:
    report = compare(make_results(seed=0, batch_ms=2.0), make_results(seed=100, batch_ms=2.1))
    assert report.exit_code == 0


def test_too_few_batches_is_inconclusive_not_failure() -> None:
    report = compare(make_results(batches=3, seed=0), make_results(batches=3, seed=1, batch_ms=4.0))
    assert report.exit_code == 0
    assert {c.verdict for c in report.comparisons} <= {"inconclusive", "absent"}


def test_noisy_large_change_is_inconclusive() -> None:
    base = make_results(seed=0, batch_ms=2.0, batches=20)
    cur = make_results(seed=1, batch_ms=2.0, batches=20)
    # Half the batches much slower, half faster: the median moves a lot, but no consistent shift.
    for run in cur["runs"]:
        values = run["per_batch_ms"]["latency"]
        run["per_batch_ms"]["latency"] = [v * (4.0 if i % 2 else 0.5) for i, v in enumerate(values)]
    report = compare(base, cur)
    overall = next(c for c in report.comparisons if c.metric == "overall")
    assert overall.verdict == "inconclusive", format_report(report)
    assert report.exit_code == 0


def test_different_experiments_are_refused() -> None:
    with pytest.raises(ResultsError, match="different experiments"):
        compare(make_results(), make_results(threshold=0.5))
    placed = make_results()
    placed["config"]["cloud_cpuset"] = {"cpuset": "1", "mechanism": "sched_setaffinity"}
    with pytest.raises(ResultsError, match="cloud_cpuset: None vs"):
        compare(make_results(), placed)
    pipelined = make_results()
    pipelined["config"]["inflight"] = 2
    with pytest.raises(ResultsError, match="inflight"):
        compare(make_results(), pipelined)


def test_regression_on_a_busy_machine_is_inconclusive() -> None:
    base = make_results(seed=0, batch_ms=2.0)
    cur = make_results(seed=100, batch_ms=3.0)
    for run in cur["runs"]:
        run["host_other_cpu_percent"] = {"mean": 150.0, "max": 200.0, "n": 10}
    report = compare(base, cur)
    assert report.exit_code == 0
    overall = next(c for c in report.comparisons if c.metric == "overall")
    assert overall.verdict == "inconclusive" and "machine busy" in overall.note
    assert compare(base, cur, busy_limit=500.0).exit_code == 1


def test_a_tiny_absolute_change_is_not_a_regression() -> None:
    # 0.2 ms procedures 30 % slower (+0.06 ms): beyond the tolerance, significant, but within 0.5 ms.
    base = make_results(seed=0, batch_ms=1.0, batches=40)
    cur = _slow_down(make_results(seed=100, batch_ms=1.0, batches=40), {"1": 1.3})
    report = compare(base, cur)
    one = next(c for c in report.comparisons if c.metric == "procedure 1")
    assert one.verdict == "pass" and "within 0.5 ms" in one.note, format_report(report)
    assert compare(base, cur, min_delta_ms=0.0).regressions[0].metric == "procedure 1"


def test_a_change_within_the_baselines_run_to_run_spread_is_inconclusive() -> None:
    # Three baseline runs whose medians spread by ~40 %: a 25 % slower single run is within that.
    base = make_results(runs=3, seed=0, batch_ms=10.0)
    for run, factor in zip(base["runs"], (0.8, 1.0, 1.2), strict=True):
        run["per_batch_ms"]["latency"] = [v * factor for v in run["per_batch_ms"]["latency"]]
    cur = _slow_down(make_results(seed=100, batch_ms=10.0), {"latency": 1.25})
    overall = next(c for c in compare(base, cur).comparisons if c.metric == "overall")
    assert overall.verdict == "inconclusive" and "run-to-run spread" in overall.note
    # The same slow-down against a steady baseline is a regression.
    steady = make_results(runs=3, seed=0, batch_ms=10.0)
    assert "overall" in [c.metric for c in compare(steady, cur).regressions]


def test_a_change_within_the_current_sides_run_to_run_spread_is_inconclusive() -> None:
    # Three runs are few to estimate a spread from: the current side's own spread counts too. Steady
    # baseline; current runs 1.0x, 1.3x and 1.45x (median +30 %, spread ~35 %).
    base = make_results(runs=3, seed=0, batch_ms=10.0)
    cur = make_results(runs=3, seed=100, batch_ms=10.0)
    for run, factor in zip(cur["runs"], (1.0, 1.3, 1.45), strict=True):
        run["per_batch_ms"]["latency"] = [v * factor for v in run["per_batch_ms"]["latency"]]
    overall = next(c for c in compare(base, cur).comparisons if c.metric == "overall")
    assert overall.verdict == "inconclusive" and "current run's run-to-run spread" in overall.note
    # A uniform slow-down of every current run (tight on both sides) is still a regression.
    uniform = make_results(runs=3, seed=100, batch_ms=13.0)
    assert "overall" in [c.metric for c in compare(base, uniform).regressions]


def test_a_regression_not_shown_again_by_a_re_run_is_inconclusive() -> None:
    from harness.check import confirmed

    base = make_results(seed=0, batch_ms=2.0)
    first = compare(base, make_results(seed=100, batch_ms=2.6))
    assert first.exit_code == 1
    report = confirmed(first, compare(base, make_results(seed=200, batch_ms=2.0)))
    assert report.exit_code == 0 and report.confirmations == 1
    overall = next(c for c in report.comparisons if c.metric == "overall")
    assert overall.verdict == "inconclusive" and "not shown again by a re-run" in overall.note
    assert "confirmation: each regression" in format_report(report)


def test_a_regression_shown_again_by_a_re_run_stands() -> None:
    from harness.check import confirmed

    base = make_results(seed=0, batch_ms=2.0)
    first = compare(base, make_results(seed=100, batch_ms=2.6))
    report = confirmed(first, compare(base, make_results(seed=300, batch_ms=2.6)))
    assert report.exit_code == 1
    assert [c.metric for c in report.regressions] == [c.metric for c in first.regressions]
    assert all("shown again by a re-run" in c.note for c in report.regressions)
    # Verdicts other than regression and improvement are left as the first check gave them.
    untouched = [c for c in first.comparisons if c.verdict not in ("regression", "improvement")]
    assert untouched == [c for c in report.comparisons if c.metric in {u.metric for u in untouched}]


def test_an_improvement_must_also_be_shown_again() -> None:
    from harness.check import confirmed

    base = make_results(seed=0, batch_ms=2.6)
    first = compare(base, make_results(seed=100, batch_ms=2.0))
    assert any(c.verdict == "improvement" for c in first.comparisons)
    report = confirmed(first, compare(base, make_results(seed=200, batch_ms=2.6)))
    assert not any(c.verdict == "improvement" for c in report.comparisons)


def test_results_without_per_batch_times_are_refused() -> None:
    """The check compares per-batch times: a results file that holds none (a hand-written one) cannot
    pass it by having nothing to compare."""
    base = make_results(seed=0)
    for run in base["runs"]:
        run["per_batch_ms"], run["per_batch_ids"] = {}, None
    with pytest.raises(ResultsError, match="the baseline records no per-batch times"):
        compare(base, make_results(seed=1))
