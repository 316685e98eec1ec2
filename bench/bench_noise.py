"""Measurement noise, and what the regression check can see through it.

    .venv/bin/python -m bench.bench_noise [--quick] [--no-change N] [--ignore-busy] [--bw RATE]

Three figures, each against its target (the targets are for a machine with 8 or more CPUs; on fewer,
the A/A interval must contain 1.0):

- **Run-to-run CV**: ``record-baseline --repeat 5`` of one point (MEM at ``--exit``, T = ``--threshold``,
  Fashion-MNIST, unshaped unless ``--bw``); the sample standard deviation of the five runs' overall
  latency over their mean. Target ≤ 5 %.
- **A/A control**: a study of SEM-k and MEM at exit k (``sweep --models sem,mem --repeat 5``). Their edge
  parts are the same layers (blocks 1..k and one exit head), so procedure 2 must come out the same: the
  median over blocks of the per-block ratio SEM-k / MEM-k of each run's median procedure 2, with its
  95 % bootstrap interval over blocks (``reports.stats.paired_ratio_ci``). Target: the interval within
  ±5 % (8+ CPUs), containing 1.0 (fewer CPUs).
- **Sensitivity of ``check``**: checks of fresh runs (``--repeat 5``, like the baseline) against that
  baseline, by the check's own functions (``harness.check.compare``, then ``confirmed`` with one fresh
  re-run wherever a change is found, as ``check --confirm 1`` does): first ``--no-change`` checks of the
  unchanged configuration, where any regression is a false alarm, then checks with the cloud part slowed
  by a factor through the test-only hook ``LOCALEXIT_TEST_CLOUD_SLOWDOWN`` (``nodes/cloud.py``:
  procedure 4 takes that factor longer) -- 1.05, 1.10, 1.15, 1.25 and 1.5, and the factor that makes the
  overall per-batch time 15 % longer, ``1 + 0.15 / share`` with ``share`` the baseline's procedure 4
  over its overall time. Targets: no false alarm; the +15 % overall slow-down flagged in ``overall``.

Every run is made with ``--busy-retries 0`` (a busy host would otherwise multiply the runs); the check's
busy-host rule stays on unless ``--ignore-busy``, which a shared machine needs to measure the rule's
statistics at all. ``--quick`` measures 320 samples a run instead of 2000 and makes 2 no-change checks
instead of 5. Needs root for namespaces (``--isolation loopback`` otherwise).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tabulate import tabulate

from contract.results import Results
from harness.check import CheckReport, Comparison, compare, confirmed, host_load, run_medians
from harness.environment import cpu_model
from harness.errors import ResultsError
from harness.results import as_results, load_results
from nodes.cloud import TEST_SLOWDOWN_ENV
from reports import stats

REPEAT = 5
CV_TARGET = 0.05
AA_TARGET = 0.05
OVERALL_TARGET = 0.15
MANY_CPUS = 8
FACTORS = (1.05, 1.10, 1.15, 1.25, 1.5)


@dataclass(frozen=True)
class CheckOutcome:
    """One check of fresh runs against the baseline: the factor injected and the (confirmed) report."""

    factor: float
    label: str
    report: CheckReport
    other_load: float | None  # the busiest fresh run's other programs' CPU (100 = one core)

    def metric(self, name: str) -> Comparison | None:
        return next((c for c in self.report.comparisons if c.metric == name), None)

    @property
    def flagged(self) -> bool:
        return self.report.exit_code == 1


def harness(argv: list[str], *, slowdown: float | None = None) -> None:
    """``python -m harness ARGV`` in a child process (with the cloud slowed by ``slowdown``)."""
    env = {k: v for k, v in os.environ.items() if k != TEST_SLOWDOWN_ENV}
    if slowdown is not None:
        env[TEST_SLOWDOWN_ENV] = f"{slowdown:g}"
    cmd = [sys.executable, "-m", "harness", *argv]
    prefix = f"{TEST_SLOWDOWN_ENV}={env[TEST_SLOWDOWN_ENV]} " if slowdown is not None else ""
    print(f"running: {prefix}{' '.join(cmd[1:])}", file=sys.stderr)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd[1:])} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def run_point(point: list[str], out: Path, slowdown: float | None = None) -> Results:
    harness(["run", *point, "--repeat", str(REPEAT), "--out", str(out)], slowdown=slowdown)
    return as_results(load_results(out), str(out))


def one_check(
    baseline: Results, point: list[str], out: Path, factor: float, label: str, busy_limit: float
) -> CheckOutcome:
    """The check as ``check --baseline`` runs it: fresh runs (results in ``out``.json), compared, and a
    re-run for any change (``out``-again.json)."""
    slowdown = None if factor == 1.0 else factor
    current = run_point(point, out.with_suffix(".json"), slowdown)
    loads = [host_load(current)]
    report = compare(baseline, current, busy_limit=busy_limit)
    if report.changes:
        again = run_point(point, out.with_name(f"{out.name}-again.json"), slowdown)
        loads.append(host_load(again))
        report = confirmed(report, compare(baseline, again, busy_limit=busy_limit))
    known = [x for x in loads if x is not None]
    return CheckOutcome(factor, label, report, max(known) if known else None)


def run_cv(results: Results) -> tuple[float, list[float]]:
    """Coefficient of variation (sample standard deviation / mean) of the runs' overall latency."""
    values = [r.summary.overall_latency_ms for r in results.runs]
    return statistics.stdev(values) / statistics.mean(values), values


def cloud_share(baseline: Results) -> float:
    """The baseline's procedure 4 over its overall per-batch time (medians over runs)."""
    return statistics.median(run_medians(baseline, "4")) / statistics.median(run_medians(baseline, "latency"))


def aa_control(out_dir: Path, exit: int) -> stats.Estimate:
    """SEM-k / MEM-k procedure 2, paired by block, from a study's results files under ``out_dir``."""
    by_model: dict[str, dict[int, float]] = {}
    for path in sorted(out_dir.rglob("*.json")):
        try:
            results = as_results(load_results(path), str(path))
        except ResultsError:  # (the study's own files -- its manifest -- are not results files)
            continue
        if results.config.exit != exit:
            continue
        by_model[results.config.model] = {
            r.block: stats.median(r.per_batch_ms["2"])
            for r in results.runs
            if r.block is not None and r.per_batch_ms.get("2")
        }
    if set(by_model) != {"sem", "mem"}:
        raise SystemExit(f"error: the study under {out_dir} did not give both SEM-{exit} and MEM-{exit}")
    return stats.paired_ratio_ci(by_model["sem"], by_model["mem"])


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def _interval(c: Comparison | None) -> str:
    if c is None or c.change is None:
        return "–"
    if c.low is None or c.high is None:
        return _pct(c.change)
    return f"{_pct(c.change)} [{_pct(c.low - 1)}, {_pct(c.high - 1)}]"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="320 samples a run, 2 no-change checks")
    p.add_argument("--no-change", type=int, default=None, help="no-change checks (default 5; 2 with --quick)")
    p.add_argument("--exit", type=int, default=2, help="the point's local exit (default 2)")
    p.add_argument("--threshold", type=float, default=0.3, help="the point's threshold (default 0.3)")
    p.add_argument("--bw", default=None, help="edge–cloud rate, e.g. 10mbit (default: unshaped)")
    p.add_argument("--isolation", default="auto", choices=("auto", "netns", "loopback"))
    p.add_argument("--ignore-busy", action="store_true", help="lift the check's busy-host rule")
    args = p.parse_args(argv)
    samples = 320 if args.quick else 2000
    no_change = args.no_change if args.no_change is not None else 2 if args.quick else 5
    busy_limit = float("inf") if args.ignore_busy else 50.0
    cpus = os.cpu_count() or 1
    common = ["--samples", str(samples), "--busy-retries", "0", "--isolation", args.isolation]
    common += ["--bw", args.bw] if args.bw else []
    point = ["--model", "mem", "--exit", str(args.exit), "--threshold", f"{args.threshold:g}", *common]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"noise and check sensitivity — {cpu_model()}, {cpus} CPUs, {stamp}, "
        f"{'quick' if args.quick else 'full'}; point MEM exit {args.exit}, T = {args.threshold:g}, "
        f"{samples} samples, link {args.bw or 'unshaped'}; {REPEAT} runs a side; busy-host rule "
        f"{'lifted' if args.ignore_busy else 'on'}"
    )

    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp_name:
        work = Path(tmp_name)
        base_path = work / "baseline.json"
        harness(["record-baseline", *point, "--repeat", str(REPEAT), "--out", str(base_path)])
        baseline = as_results(load_results(base_path), str(base_path))
        cv, overall = run_cv(baseline)
        share = cloud_share(baseline)

        study = work / "study"
        harness(
            ["sweep", "--models", "sem,mem", "--exits", str(args.exit), "--thresholds", f"{args.threshold:g}",
             "--repeat", str(REPEAT), "--out-dir", str(study), "--no-progress", *common]
        )  # fmt: skip
        aa = aa_control(study, args.exit)

        f15 = 1 + OVERALL_TARGET / share if share > 0 else None
        factors = sorted({*FACTORS, *([round(f15, 3)] if f15 is not None else [])})
        plan = [(1.0, f"no change {i + 1}") for i in range(no_change)]
        plan += [
            (factor, f"≈ +{100 * OVERALL_TARGET:g}% overall" if factor == round(f15 or 0, 3) else "cloud")
            for factor in factors
        ]
        outcomes = [
            one_check(baseline, point, work / f"check-{i}", factor, label, busy_limit)
            for i, (factor, label) in enumerate(plan)
        ]

    rows = []
    for o in outcomes:
        overall_c, cloud_c = o.metric("overall"), o.metric("procedure 4")
        rows.append(
            [
                o.label,
                f"×{o.factor:g}",
                _pct(share * (o.factor - 1)),
                _interval(overall_c),
                "–" if overall_c is None else overall_c.verdict,
                _interval(cloud_c),
                "–" if cloud_c is None else cloud_c.verdict,
                ", ".join(c.metric for c in o.report.regressions) or "none",
                "?" if o.other_load is None else f"{o.other_load:.0f}%",
            ]
        )
    print(f"\nchecks against the baseline (procedure 4 is {100 * share:.0f}% of its overall time per batch)")
    print(
        tabulate(
            rows,
            headers=[
                "check",
                "cloud part",
                "overall expected",
                "overall measured [95% interval]",
                "overall verdict",
                "procedure 4 measured [95% interval]",
                "procedure 4 verdict",
                "regressions (confirmed)",
                "other load",
            ],
        )
    )

    false_alarms = sum(o.flagged for o in outcomes if o.factor == 1.0)
    flagged = [o.factor for o in outcomes if o.factor > 1.0 and o.flagged]
    overall_flagged = [
        o.factor
        for o in outcomes
        if o.factor > 1.0 and (c := o.metric("overall")) and c.verdict == "regression"
    ]
    target_check = next((o for o in outcomes if o.label.startswith("≈")), None)
    caught = (
        target_check is not None
        and (c := target_check.metric("overall")) is not None
        and (c.verdict == "regression")
    )
    aa_iv = aa.interval
    aa_tight = aa_iv is not None and aa_iv[0] >= 1 - AA_TARGET and aa_iv[1] <= 1 + AA_TARGET
    aa_holds_one = aa_iv is not None and aa_iv[0] <= 1.0 <= aa_iv[1]
    many = cpus >= MANY_CPUS
    summary = [
        ["run-to-run CV of overall latency (5 runs)", f"{100 * cv:.1f}%",
         f"≤ {100 * CV_TARGET:g}%", _yes(cv <= CV_TARGET), "–", "–"],
        ["A/A: SEM-k / MEM-k procedure 2, paired over 5 blocks", aa.text(".3f"),
         f"within ±{100 * AA_TARGET:g}%", _yes(aa_tight), "contains 1.0", _yes(aa_holds_one)],
        [f"false alarms in {no_change} no-change checks", str(false_alarms), "0", _yes(false_alarms == 0),
         "0", _yes(false_alarms == 0)],
        ["smallest cloud slowdown flagged (any metric)", f"×{min(flagged):g}" if flagged else "none", "–",
         "–", "–", "–"],
        ["smallest cloud slowdown flagged in overall", f"×{min(overall_flagged):g}" if overall_flagged
         else "none", "–", "–", "–", "–"],
        [f"+{100 * OVERALL_TARGET:g}% overall slowdown (cloud ×{f15:.3g}) caught" if f15 else
         "+15% overall slowdown caught", "yes" if caught else "no", "caught", _yes(caught), "–", "–"],
    ]  # fmt: skip
    print(f"\nfigures against their targets (this machine: {cpus} CPUs; the 8+ CPU targets "
          f"{'apply' if many else 'are shown for reference'})")  # fmt: skip
    print(
        tabulate(
            summary,
            headers=["figure", "measured", "target (8+ CPUs)", "met", "target (fewer CPUs)", "met"],
        )
    )
    print(f"\nbaseline runs' overall latency (ms/sample): {', '.join(f'{v:.3f}' for v in overall)}")
    return 0


def _yes(ok: bool) -> str:
    return "yes" if ok else "NO"


if __name__ == "__main__":
    raise SystemExit(main())
