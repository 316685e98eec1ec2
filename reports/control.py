"""The A/A noise control every report carries.

SEM-k and MEM at exit k run the same edge layers (blocks 1..k and one exit head), so their procedure (2)
— the edge's computation of a batch — should take the same time: the ratio of the two, paired by
block, should read 1.0. Two checks, each at the level it can be trusted at:

- per pair, the interval must lie within 1.0 ± 5 %: wider, and the machine's noise is as large as
  the latency differences the report compares;
- over all pairs together (per block, the median ratio over pairs), the interval must contain 1.0:
  a systematic difference between identical computations (run order, warm-up, edge code that is not
  the same) shows there once. Asking every one of 32 pairs to contain 1.0 would trip on chance alone:
  at 95 % each, one in six quiet studies would fail somewhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from reports import stats
from reports.claims import compare, is_paired
from reports.loader import RunSeries
from reports.stats import Estimate
from reports.tables import Cell, Scenario, Table

#: Procedure (2): the edge computes blocks 1..k, exit head k and the entropy.
CONTROL_PROCEDURE = "2"
#: A control passes when its whole interval lies within 1.0 ± this.
TOLERANCE = 0.05

OK = "ok"
OFF_WIDE = f"off: beyond 1.0 ± {100 * TOLERANCE:g} %"
OFF_BIASED = "off: excludes 1.0"
NOT_TESTED = stats.NOT_TESTED


def _judged(est: Estimate | None) -> bool:
    return est is not None and est.interval is not None and est.n >= stats.MIN_RUNS_FOR_VERDICT


def _beyond_band(low: float, high: float) -> bool:
    return low < 1.0 - TOLERANCE or high > 1.0 + TOLERANCE


@dataclass(frozen=True)
class ControlPair:
    """SEM-k against MEM at k, at one threshold: the ratio of their procedure (2) times."""

    exit: int
    threshold: float
    estimate: Estimate | None
    paired: bool

    @property
    def status(self) -> str:
        if self.estimate is None or self.estimate.interval is None or not _judged(self.estimate):
            return NOT_TESTED
        return OFF_WIDE if _beyond_band(*self.estimate.interval) else OK

    @property
    def where(self) -> str:
        return f"exit {self.exit}, T = {self.threshold:g}"

    def stray(self) -> float:
        """How far the interval reaches from 1.0, on a log scale (0 without an interval)."""
        iv = None if self.estimate is None else self.estimate.interval
        return 0.0 if iv is None else max(abs(math.log(iv[0])), abs(math.log(iv[1])))


@dataclass(frozen=True)
class Control:
    """One scenario's A/A control: every pair, and all pairs pooled block by block."""

    pairs: tuple[ControlPair, ...]
    pooled: Estimate | None
    scenario: str = ""

    @property
    def pooled_status(self) -> str:
        est = self.pooled
        if est is None or est.interval is None or not _judged(est):
            return NOT_TESTED
        low, high = est.interval
        if low > 1.0 or high < 1.0:
            return OFF_BIASED
        return OFF_WIDE if _beyond_band(low, high) else OK

    @property
    def off_pairs(self) -> list[ControlPair]:
        return [p for p in self.pairs if p.status == OFF_WIDE]

    @property
    def off(self) -> bool:
        return bool(self.off_pairs) or self.pooled_status in (OFF_BIASED, OFF_WIDE)


def _pooled(series: Sequence[tuple[RunSeries, RunSeries]]) -> Estimate | None:
    """Per block, the median over pairs of SEM/MEM; then the median over blocks with its interval."""
    per_block: dict[int, list[float]] = {}
    for a, b in series:
        if not is_paired(a, b):
            continue
        ab, bb = a.by_block(), b.by_block()
        for k in sorted(ab.keys() & bb.keys()):
            if ab[k] > 0 and bb[k] > 0:
                per_block.setdefault(k, []).append(ab[k] / bb[k])
    if not per_block:
        return None
    values = [stats.median(v) for _, v in sorted(per_block.items())]
    return stats.median_ci(values, unit="blocks")


def scenario_control(scn: Scenario, scenario: str = "") -> Control:
    """The control of one scenario: every SEM-k / MEM@k pair at every threshold, and all pooled."""
    pairs = []
    series = []
    for t in scn.thresholds:
        for e in scn.exits(t):
            s, m = scn.get("sem", e, t), scn.get("mem", e, t)
            if s is None or m is None:
                continue
            a, b = s.procedure_series(CONTROL_PROCEDURE), m.procedure_series(CONTROL_PROCEDURE)
            series.append((a, b))
            pairs.append(ControlPair(e, t, compare(a, b, "ratio"), is_paired(a, b)))
    return Control(tuple(pairs), _pooled(series), scenario)


def _runs_cell(est: Estimate | None, paired: bool) -> str | None:
    return None if est is None else (f"{est.n} blocks" if paired else "unpaired")


def control_table(scn: Scenario, ctl: Control | None = None) -> Table:
    """The A/A control: SEM-k / MEM@k procedure (2) ratio with its interval per pair, and all pooled."""
    ctl = scenario_control(scn) if ctl is None else ctl
    rows: list[tuple[Cell, ...]] = []
    for p in ctl.pairs:
        est = p.estimate
        rows.append(
            (
                p.exit,
                p.threshold,
                None if est is None else est.value,
                None if est is None else est.interval_text(".3f"),
                _runs_cell(est, p.paired),
                p.status,
            )
        )
    if ctl.pairs:
        est = ctl.pooled
        rows.append(
            (
                "all",
                "all",
                None if est is None else est.value,
                None if est is None else est.interval_text(".3f"),
                None if est is None else f"{est.n} blocks",
                ctl.pooled_status,
            )
        )
    return Table(
        f"A/A noise control: SEM-k vs MEM at exit k, procedure (2) ({scn.caption()})",
        ("exit", "T", "ratio SEM/MEM", "95 % interval", "runs", "control"),
        tuple(rows),
        ("g", "g", ".3f", "", "", ""),
        "Both run the same edge layers, so the ratio of their mean per-batch procedure (2) time should be "
        "1.0. Per pair: median over blocks of the per-block ratio, 95 % percentile-bootstrap interval over "
        f"blocks; ok when the interval lies within 1.0 ± {100 * TOLERANCE:g} %. All: per block the median "
        "ratio over pairs, then over blocks; ok when its interval also contains 1.0 (a systematic difference "
        f"shows here). A control needs {stats.MIN_RUNS_FOR_VERDICT} blocks.",
    )


def headline(controls: Sequence[Control]) -> tuple[bool, str]:
    """``(off, text)``: the line at the top of the report on whether latency comparisons can be trusted."""
    pairs = [(c, p) for c in controls for p in c.pairs]
    wide = [(c, p) for c, p in pairs if p.status == OFF_WIDE]
    biased = [c for c in controls if c.pooled_status == OFF_BIASED]
    band = f"1.0 ± {100 * TOLERANCE:g} %"
    if wide or biased:
        parts = []
        if wide:
            ctl, worst = max(wide, key=lambda cp: cp[1].stray())
            shown = "" if worst.estimate is None else f": {worst.estimate.text('.3f')}"
            parts.append(
                f"at {len(wide)} of {len(pairs)} such pairs its 95 % interval reaches beyond {band} (widest: "
                f"{ctl.scenario}{worst.where}{shown})"
            )
        for ctl in biased:
            shown = "" if ctl.pooled is None else ctl.pooled.text(".3f")
            parts.append(
                f"{ctl.scenario}over all pairs together it is {shown}, a systematic difference between "
                "identical computations (run order, warm-up, or edge code that is not the same)"
            )
        return True, (
            "Noise control off — latency comparisons in this report are not trustworthy. SEM-k and MEM at "
            "exit k run the same edge layers, so the ratio of their procedure (2) times should be 1.0; "
            + "; ".join(parts)
            + ". Latency differences of that size cannot be told from the machine's noise. Exit counts and "
            "accuracies do not depend on timing and stand."
        )
    ok = [p for _, p in pairs if p.status == OK]
    if not ok:
        why = (
            "there is no SEM-k and MEM pair at the same exit"
            if not pairs
            else f"no pair has the {stats.MIN_RUNS_FOR_VERDICT} blocks a control needs"
        )
        return False, (
            "Noise control not available: the A/A check (procedure (2) of SEM-k against MEM at exit k, "
            f"which run the same edge layers) could not be judged because {why}. The latency comparisons "
            "below are unchecked against the machine's noise."
        )
    text = (
        f"Noise control on: at {len(ok)} of {len(pairs)} SEM-k / MEM-at-k pairs the ratio of procedure (2) "
        f"times, which should read 1.0, has its 95 % interval within {band}"
    )
    text += (
        ", and over all pairs together it contains 1.0."
        if all(c.pooled_status == OK for c in controls if c.pairs)
        else "."
    )
    if len(ok) < len(pairs):
        text += f" {len(pairs) - len(ok)} pair(s) had too few blocks to judge."
    return False, text
