from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from contract.results import Results
from harness.check import MIN_RUNS, compare, confirmed, format_report, judge
from harness.errors import ResultsError
from nodes.cloud import TEST_SLOWDOWN_ENV
from tests.programs import host_port, spawn_module, wait_ready

from .helpers import make_results


def _scale_runs(
    given: Results | dict[str, Any], factors: list[float], keys: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Multiply every per-batch time of run i (or only those of ``keys``) by ``factors[i]``."""
    results = given.to_json() if isinstance(given, Results) else given
    for run, factor in zip(results["runs"], factors, strict=True):
        for key in keys or tuple(run["per_batch_ms"]):
            run["per_batch_ms"][key] = [v * factor for v in run["per_batch_ms"][key]]
    return results


def noisy(runs: int, seed: int, *, slowdown: float = 1.0, cv: float = 0.05, **kw: Any) -> dict[str, Any]:
    """``runs`` runs whose whole speed varies from run to run (log-normal, ``cv``), as fresh node
    processes on a real machine do, every time ``slowdown`` times as long."""
    rng = random.Random(seed)
    results = make_results(runs=runs, seed=seed, **kw)
    return _scale_runs(results, [slowdown * rng.lognormvariate(0.0, cv) for _ in range(runs)])


def _metric(report: Any, name: str) -> Any:
    return next(c for c in report.comparisons if c.metric == name)


def test_a_30_percent_slowdown_across_five_runs_is_a_regression() -> None:
    report = compare(noisy(5, seed=0), noisy(5, seed=100, slowdown=1.3))
    assert report.exit_code == 1, format_report(report)
    overall = _metric(report, "overall")
    assert overall.verdict == "regression"
    assert overall.low is not None and overall.high is not None
    assert 1.0 < overall.low <= overall.change + 1 <= overall.high
    assert overall.n_baseline == overall.n_current == 5
    assert "REGRESSION" in format_report(report)


def test_no_change_is_never_a_confirmed_regression_over_many_seeds() -> None:
    # A 95 % interval lies wholly above 1 in about 2.5 % of no-change comparisons: single checks may
    # flag one now and then, and the confirming re-run (on by default) must then not show it again.
    checks = flagged = 0
    verdicts: dict[str, int] = {}
    for seed in range(30):
        for cv in (0.05, 0.15, 0.3):
            base = noisy(5, seed=seed, cv=cv)
            report = compare(base, noisy(5, seed=1000 + seed, cv=cv))
            checks += 1
            flagged += report.exit_code
            report = confirmed(report, compare(base, noisy(5, seed=2000 + seed, cv=cv)))
            assert report.exit_code == 0, format_report(report)
            for c in report.comparisons:
                verdicts[c.verdict] = verdicts.get(c.verdict, 0) + 1
    assert flagged <= 0.1 * checks
    # Not a rule that only ever says "inconclusive": quiet runs do pass.
    assert verdicts["pass"] > 0


def test_quiet_runs_with_no_change_pass() -> None:
    report = compare(noisy(5, seed=0, cv=0.01), noisy(5, seed=7, cv=0.01))
    assert _metric(report, "overall").verdict == "pass", format_report(report)


@pytest.mark.parametrize(("base_runs", "cur_runs"), [(1, 1), (2, 5), (5, 2)])
def test_too_few_runs_is_inconclusive_not_a_pass(base_runs: int, cur_runs: int) -> None:
    # Even a doubling: with fewer than MIN_RUNS runs a side there is no interval to judge it from.
    report = compare(make_results(runs=base_runs, seed=0), make_results(runs=cur_runs, seed=50, batch_ms=4.0))
    assert report.exit_code == 0
    assert {c.verdict for c in report.comparisons} <= {"inconclusive", "absent"}, format_report(report)
    assert "too few runs for an interval" in _metric(report, "overall").note
    assert report.too_few_runs and "NOT a pass" in format_report(report)
    assert MIN_RUNS == 3
    assert compare(make_results(runs=3, seed=0), make_results(runs=3, seed=50, batch_ms=4.0)).exit_code == 1


def test_a_slowdown_within_the_runs_spread_is_inconclusive() -> None:
    # One current run as fast as the baseline's, the others 1.2-1.6x: the median moves +40 %, but the
    # runs do not show the change consistently.
    base = noisy(5, seed=0, cv=0.02, batch_ms=10.0)
    cur = _scale_runs(make_results(runs=5, seed=100, batch_ms=10.0), [0.9, 1.6, 1.4, 1.2, 1.5])
    overall = _metric(compare(base, cur), "overall")
    assert overall.verdict == "inconclusive" and overall.low is not None and overall.low <= 1.0
    assert "interval holds 1" in overall.note
    # The same median slow-down shown by every run is a regression.
    steady = _scale_runs(make_results(runs=5, seed=100, batch_ms=10.0), [1.4] * 5)
    assert _metric(compare(base, steady), "overall").verdict == "regression"


def test_one_slow_run_does_not_make_a_regression() -> None:
    # Pooling batches, one run slowed 4x by other load outweighed everything else; a median over runs
    # is not moved by one run.
    base = noisy(5, seed=0)
    cur = _scale_runs(noisy(5, seed=100), [4.0, 1.0, 1.0, 1.0, 1.0])
    report = compare(base, cur)
    assert report.exit_code == 0, format_report(report)


def test_judge_applies_the_tolerance_to_the_point_estimate() -> None:
    base = [10.0, 10.05, 9.95, 10.02, 9.98]
    # +8 % at the median and every run slower: a real change, within the 10 % tolerance, but the
    # interval reaches +20 %.
    slower = [10.2, 10.5, 10.8, 11.5, 12.0]
    verdict, note, est = judge(base, slower)
    assert verdict == "inconclusive" and est.low is not None and est.low > 1.0
    assert "within ±10% at the median" in note
    assert judge(base, slower, tolerance=0.25)[0] == "pass"
    assert judge(base, [v * 1.05 for v in base])[0] == "pass"  # +5 %, tightly: within the tolerance
    assert judge(base, [v * 1.15 for v in base])[0] == "regression"
    assert judge(base, [v / 1.15 for v in base])[0] == "improvement"
    assert judge(base, [v * 1.15 for v in base], min_delta_ms=2.0)[0] == "pass"


UNSHAPED = {"edge_cloud": {"rate": None, "delay": "0ms", "jitter": "0ms", "loss": "0%", "limit": None},
            "test_edge": None}  # fmt: skip


def test_slowdown_explained_by_machine_speed_is_not_a_regression() -> None:
    # Unshaped link: everything 30 % slower, and the calibration workload too: the machine, not the code.
    base = noisy(5, seed=0, calibration_ms=10.0, links=UNSHAPED)
    cur = noisy(5, seed=100, slowdown=1.3, calibration_ms=13.0, links=UNSHAPED)
    assert compare(base, cur).exit_code == 0, format_report(compare(base, cur))
    assert compare(base, cur, use_calibration=False).exit_code == 1


def test_a_run_whose_calibration_caught_a_slow_cpu_state_does_not_make_a_regression() -> None:
    # A side's runs calibrated at 2.96, 3.91 and 3.82 ms: its best, not its median, is the machine's speed.
    base = make_results(runs=3, seed=0, calibration_ms=2.96, links=UNSHAPED).to_json()
    for run, cal in zip(base["runs"], (2.96, 3.91, 3.82), strict=True):
        run["calibration_ms"] = cal
    cur = make_results(runs=3, seed=100, calibration_ms=2.9, links=UNSHAPED)
    report = compare(base, cur)
    assert report.exit_code == 0, format_report(report)
    assert report.calibration_ratio == pytest.approx(2.9 / 2.96)


def test_on_a_shaped_link_only_compute_is_calibrated() -> None:
    # 10 mbit: a 30 % slower CPU slows the compute procedures (half of each path here), not the link.
    base = noisy(5, seed=0, calibration_ms=10.0)
    slower_cpu = _scale_runs(noisy(5, seed=100, calibration_ms=13.0), [1.3] * 5, ("2", "4"))
    slower_cpu = _scale_runs(slower_cpu, [1.15] * 5, ("latency", "edge", "cloud"))
    assert compare(base, slower_cpu).exit_code == 0, format_report(compare(base, slower_cpu))
    # A transfer that got 35 % slower is a regression even on a slower machine: scaling it by the
    # calibration, as if the link were CPU-bound, would hide it.
    base = noisy(5, seed=0, batch_ms=20.0, calibration_ms=10.0)  # procedure 1 ≈ 4 ms
    slower_link = _scale_runs(noisy(5, seed=100, batch_ms=20.0, calibration_ms=13.0), [1.35] * 5, ("1",))
    report = compare(base, slower_link)
    assert [c.metric for c in report.regressions] == ["procedure 1"], format_report(report)


def test_too_few_batches_is_inconclusive_not_failure() -> None:
    report = compare(noisy(5, seed=0, batches=1), noisy(5, seed=1, batches=1, slowdown=2.0))
    assert report.exit_code == 0
    assert {c.verdict for c in report.comparisons} <= {"inconclusive", "absent"}
    assert "fewer than 8 batches" in _metric(report, "overall").note


def test_different_experiments_are_refused() -> None:
    with pytest.raises(ResultsError, match="different experiments"):
        compare(make_results(), make_results(threshold=0.5))
    placed = make_results().to_json()
    placed["config"]["cloud_cpuset"] = {"cpuset": "1", "mechanism": "sched_setaffinity"}
    with pytest.raises(ResultsError, match="cloud_cpuset: None vs"):
        compare(make_results(), placed)
    pipelined = make_results().to_json()
    pipelined["config"]["inflight"] = 2
    with pytest.raises(ResultsError, match="inflight"):
        compare(make_results(), pipelined)


def test_regression_on_a_busy_machine_is_inconclusive() -> None:
    base = noisy(5, seed=0)
    cur = noisy(5, seed=100, slowdown=1.5)
    for run in cur["runs"]:
        run["host_other_cpu_percent"] = {"mean": 150.0, "max": 200.0, "n": 10}
    report = compare(base, cur)
    assert report.exit_code == 0
    overall = _metric(report, "overall")
    assert overall.verdict == "inconclusive" and "machine busy" in overall.note
    assert compare(base, cur, busy_limit=500.0).exit_code == 1


def test_a_tiny_absolute_change_is_not_a_regression() -> None:
    # 0.2 ms procedures 30 % slower (+0.06 ms): beyond the tolerance, shown by every run, but within 0.5 ms.
    base = noisy(5, seed=0, batch_ms=1.0, cv=0.01)
    cur = _scale_runs(noisy(5, seed=100, batch_ms=1.0, cv=0.01), [1.3] * 5, ("1",))
    report = compare(base, cur)
    one = _metric(report, "procedure 1")
    assert one.verdict == "pass" and "0.5 ms" in one.note, format_report(report)
    assert compare(base, cur, min_delta_ms=0.0).regressions[0].metric == "procedure 1"


def test_a_regression_not_shown_again_by_a_re_run_is_inconclusive() -> None:
    base = noisy(5, seed=0)
    first = compare(base, noisy(5, seed=100, slowdown=1.3))
    assert first.exit_code == 1
    report = confirmed(first, compare(base, noisy(5, seed=200)))
    assert report.exit_code == 0 and report.confirmations == 1
    overall = _metric(report, "overall")
    assert overall.verdict == "inconclusive" and "not shown again by a re-run" in overall.note
    assert "confirmation: each regression" in format_report(report)


def test_a_regression_shown_again_by_a_re_run_stands() -> None:
    base = noisy(5, seed=0)
    first = compare(base, noisy(5, seed=100, slowdown=1.3))
    report = confirmed(first, compare(base, noisy(5, seed=300, slowdown=1.3)))
    assert report.exit_code == 1
    assert [c.metric for c in report.regressions] == [c.metric for c in first.regressions]
    assert all("shown again by a re-run" in c.note for c in report.regressions)
    # Verdicts other than regression and improvement are left as the first check gave them.
    untouched = [c for c in first.comparisons if c.verdict not in ("regression", "improvement")]
    assert untouched == [c for c in report.comparisons if c.metric in {u.metric for u in untouched}]


def test_an_improvement_must_also_be_shown_again() -> None:
    base = noisy(5, seed=0, slowdown=1.3)
    first = compare(base, noisy(5, seed=100))
    assert any(c.verdict == "improvement" for c in first.comparisons)
    report = confirmed(first, compare(base, noisy(5, seed=200, slowdown=1.3)))
    assert not any(c.verdict == "improvement" for c in report.comparisons)


def test_results_without_per_batch_times_are_refused() -> None:
    """The check compares per-batch times: a results file that holds none (a hand-written one) cannot
    pass it by having nothing to compare."""
    base = make_results(seed=0).to_json()
    for run in base["runs"]:
        run["per_batch_ms"], run["per_batch_ids"] = {}, None
    with pytest.raises(ResultsError, match="the baseline records no per-batch times"):
        compare(base, make_results(seed=1))


# --- The test-only slow-down of the cloud part --------------------------------------------------------


def _cloud_compute_ms(
    checkpoint: Path, out: Path, procs: list[subprocess.Popen[str]], slowdown: str | None
) -> tuple[list[float], subprocess.Popen[str]]:
    """Per-batch procedure 4 of a run whose every sample goes to the cloud, and the cloud process."""
    env = {k: v for k, v in os.environ.items() if k != TEST_SLOWDOWN_ENV}
    if slowdown is not None:
        env[TEST_SLOWDOWN_ENV] = slowdown
    model = ["--checkpoint", str(checkpoint), "--exit", "2", "--threads", "1"]
    cloud = spawn_module(["nodes.cloud", "--listen", "127.0.0.1:0", *model], env)
    procs.append(cloud)
    cloud_at = host_port(wait_ready(cloud, timeout=90.0))
    edge = spawn_module(
        ["nodes.edge", "--listen", "127.0.0.1:0", "--cloud", cloud_at, "--threshold", "0", *model], env
    )
    procs.append(edge)
    edge_at = host_port(wait_ready(edge, timeout=90.0))
    argv = ["nodes.test", "--edge", edge_at, "--cloud", cloud_at, "--dataset", "synthetic", "--out", str(out),
            "--model", "mem", "--exit", "2", "--threshold", "0", "--batch-size", "32"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    batches = json.loads(out.read_text())["batches"]
    for p in (edge, cloud):
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=30)
    return [b["procedures_ms"]["4"] for b in batches], cloud


@pytest.mark.slow
def test_the_test_hook_slows_the_cloud_part_by_its_factor(
    tiny_checkpoint: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    import statistics

    plain, plain_cloud = _cloud_compute_ms(tiny_checkpoint, tmp_path / "plain.json", procs, None)
    slow, slow_cloud = _cloud_compute_ms(tiny_checkpoint, tmp_path / "slow.json", procs, "2.0")
    assert len(plain) >= 8 and len(slow) >= 8
    # A loose bound: two fresh processes' compute differs by tens of percent on a shared machine.
    assert statistics.median(slow) / statistics.median(plain) > 1.2, (plain, slow)
    _, slow_log = slow_cloud.communicate(timeout=10)
    _, plain_log = plain_cloud.communicate(timeout=10)
    assert "WARNING" in slow_log and TEST_SLOWDOWN_ENV in slow_log
    assert TEST_SLOWDOWN_ENV not in plain_log


def test_a_bad_slowdown_factor_is_refused() -> None:
    from nodes.cloud import slowdown_from_env
    from nodes.errors import UsageError

    assert slowdown_from_env({}) == 1.0
    assert slowdown_from_env({TEST_SLOWDOWN_ENV: "1.15"}) == pytest.approx(1.15)
    for bad in ("0.5", "fast", "nan", "inf"):
        with pytest.raises(UsageError, match=TEST_SLOWDOWN_ENV):
            slowdown_from_env({TEST_SLOWDOWN_ENV: bad})
