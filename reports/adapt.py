"""The exit-policy study (``python -m harness adapt``): its runs as data, the table with run-level
intervals, the verdicts the issue asks for, and the figure of latency and chosen exit over time.

A study's document is ``localexit-adapt/1``: the schedule it ran under (as steps), its settings, and one
entry per run with the figures this module compares -- the mean and 95th percentile of the per-sample
latency (batch sent → the sample's prediction received), the paper's overall latency per sample, the
accuracy and the local exits -- plus, for the adaptive and oracle runs, each batch's exit and why.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract import _fields as f
from contract.atomic import write_json_atomic
from contract.errors import SchemaError
from contract.jsonfile import read_document
from contract.names import ADAPT_SCHEMA
from reports import stats
from reports.stats import Estimate

#: The issue's target: the adaptive MEM's mean latency within this fraction of the oracle's.
ORACLE_TARGET = 0.10
ADAPTIVE, ORACLE = "mem-adaptive", "mem-oracle"


def sem_label(k: int) -> str:
    return f"sem-{k}"


def mem_label(k: int) -> str:
    return f"mem-e{k}"


@dataclass(frozen=True)
class AdaptRun:
    """One run of the study: which configuration (``label``), in which block, and its figures."""

    label: str
    block: int
    mean_ms: float
    p95_ms: float
    overall_ms: float
    accuracy: float
    local_exits: int
    samples: int
    busy: bool = False
    schedule_from_s: float | None = None  # the schedule's time when the measured phase began
    batch_latency_ms: tuple[float, ...] = ()
    batch_ids: tuple[int, ...] = ()
    decisions: tuple[Mapping[str, Any], ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "block": self.block,
            "mean_ms": self.mean_ms,
            "p95_ms": self.p95_ms,
            "overall_ms": self.overall_ms,
            "accuracy": self.accuracy,
            "local_exits": self.local_exits,
            "samples": self.samples,
            "busy": self.busy,
            "schedule_from_s": self.schedule_from_s,
            "batch_latency_ms": list(self.batch_latency_ms),
            "batch_ids": list(self.batch_ids),
            "decisions": [dict(d) for d in self.decisions],
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> AdaptRun:
        d = f.obj(where, data)
        need = ("label", "block", "mean_ms", "p95_ms", "overall_ms", "accuracy", "local_exits", "samples")
        return f.build(
            where,
            cls,
            **{k: f.need(where, d, k) for k in need},
            busy=bool(d.get("busy", False)),
            schedule_from_s=d.get("schedule_from_s"),
            batch_latency_ms=tuple(d.get("batch_latency_ms") or ()),
            batch_ids=tuple(d.get("batch_ids") or ()),
            decisions=tuple(d.get("decisions") or ()),
        )


@dataclass(frozen=True)
class AdaptStudy:
    """A whole study: ``steps`` are the link schedule's ``(at_s, rate_bps or None, delay_ms)``."""

    schedule: str
    steps: tuple[tuple[float, float | None, float], ...]
    runs: tuple[AdaptRun, ...]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def labels(self) -> list[str]:
        """The configurations in table order: SEM-k, MEM at k, adaptive, oracle."""
        seen = {r.label for r in self.runs}

        def key(label: str) -> tuple[int, int]:
            kind, _, rest = label.partition("-")
            if label == ADAPTIVE:
                return (2, 0)
            if label == ORACLE:
                return (3, 0)
            return (0 if kind == "sem" else 1, int(rest.lstrip("e")))

        return sorted(seen, key=key)

    def runs_of(self, label: str) -> list[AdaptRun]:
        return [r for r in self.runs if r.label == label]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": ADAPT_SCHEMA,
            "schedule": self.schedule,
            "steps": [list(s) for s in self.steps],
            "settings": dict(self.settings),
            "runs": [r.to_json() for r in self.runs],
        }

    @classmethod
    def from_json(cls, data: object) -> AdaptStudy:
        d = f.obj("", data)
        if f.need("", d, "schema") != ADAPT_SCHEMA:
            raise SchemaError(f"not a {ADAPT_SCHEMA} document")
        runs = f.need("", d, "runs")
        if not isinstance(runs, list):
            raise SchemaError("runs must be a list")
        return cls(
            schedule=str(f.need("", d, "schedule")),
            steps=tuple(
                (float(a), None if r is None else float(r), float(dl)) for a, r, dl in d.get("steps", [])
            ),
            runs=tuple(AdaptRun.from_json(r, f"runs[{i}]") for i, r in enumerate(runs)),
            settings=f.obj("settings", d.get("settings", {})),
        )

    def write(self, path: Path) -> Path:
        write_json_atomic(path, self.to_json())
        return path


def read_study(path: str | Path) -> AdaptStudy:
    return read_document(path, AdaptStudy.from_json)


@dataclass(frozen=True)
class Row:
    """One configuration's run-level figures: medians over its runs with bootstrap intervals."""

    label: str
    runs: int
    mean_ms: Estimate
    p95_ms: Estimate
    overall_ms: Estimate
    accuracy: Estimate
    local_exits: Estimate


def rows(study: AdaptStudy) -> list[Row]:
    out = []
    for label in study.labels():
        runs = study.runs_of(label)

        def est(name: str, runs: list[AdaptRun] = runs) -> Estimate:
            return stats.median_ci([float(getattr(r, name)) for r in runs])

        out.append(
            Row(
                label,
                len(runs),
                est("mean_ms"),
                est("p95_ms"),
                est("overall_ms"),
                est("accuracy"),
                est("local_exits"),
            )
        )
    return out


def table_markdown(study: AdaptStudy) -> str:
    """The table as Markdown: each figure the median over runs with its 95 % interval."""
    head = (
        "| configuration | runs | mean latency ms | p95 latency ms | overall ms/sample | accuracy | local exits |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.label} | {r.runs} | {r.mean_ms.text('.1f')} | {r.p95_ms.text('.1f')} | "
        f"{r.overall_ms.text('.2f')} | {r.accuracy.text('.3f')} | {r.local_exits.text('.0f')} |"
        for r in rows(study)
    ]
    return head + "\n".join(lines) + "\n"


def _gap(a: float, b: float) -> str:
    return f"{100.0 * (a - b) / b:+.1f} %"


def verdicts(study: AdaptStudy) -> list[str]:
    """What the issue asks the report to say, with the numbers (medians of the per-run mean latency)."""
    by = {r.label: r for r in rows(study)}
    out: list[str] = []
    adaptive = by.get(ADAPTIVE)
    if adaptive is None:
        return ["no adaptive MEM run: nothing to compare"]
    a = adaptive.mean_ms.value
    sems = [r for label, r in by.items() if label.startswith("sem-")]
    if sems:
        best = min(sems, key=lambda r: r.mean_ms.value)
        b = best.mean_ms.value
        separated = (
            adaptive.mean_ms.high is not None
            and best.mean_ms.low is not None
            and (adaptive.mean_ms.high < best.mean_ms.low or best.mean_ms.high < adaptive.mean_ms.low)  # type: ignore[operator]
        )
        word = "beats" if a < b else "does not beat"
        sure = "intervals apart" if separated else "intervals overlap"
        out.append(
            f"The adaptive MEM {word} the best fixed SEM ({best.label}): mean latency {a:.1f} ms vs "
            f"{b:.1f} ms ({_gap(a, b)}; {sure})."
        )
    oracle = by.get(ORACLE)
    if oracle is not None:
        o = oracle.mean_ms.value
        within = abs(a - o) <= ORACLE_TARGET * o or a <= o
        out.append(
            f"Adaptive vs oracle: {a:.1f} ms vs {o:.1f} ms ({_gap(a, o)}); target within "
            f"{ORACLE_TARGET:.0%}: {'met' if within else 'NOT met'}."
        )
    fixed = [r for label, r in by.items() if label not in (ADAPTIVE, ORACLE)]
    if fixed:
        best_fixed = min(fixed, key=lambda r: r.mean_ms.value)
        f_ms = best_fixed.mean_ms.value
        ahead = a < f_ms
        out.append(
            f"Ahead of every fixed configuration under this schedule: {'yes' if ahead else 'no'} — the best "
            f"fixed one is {best_fixed.label} at {f_ms:.1f} ms ({_gap(a, f_ms)} for the adaptive MEM)."
        )
    return out


def _schedule_times(run: AdaptRun) -> tuple[np.ndarray, np.ndarray] | None:
    """Each measured batch on the schedule's time axis (s) and its exit, from the edge's decisions:
    the edge counts from the test node's connection, so its times are shifted to put the first
    measured batch where the harness saw the measured phase begin."""
    if not run.decisions or run.schedule_from_s is None:
        return None
    t = np.array([float(d.get("run_s") or 0.0) for d in run.decisions])
    exits = np.array([int(d["exit"]) for d in run.decisions])
    return t - t[0] + run.schedule_from_s, exits


def figure(study: AdaptStudy, out: Path, block: int = 0) -> Path | None:
    """Link rate, per-batch latency and chosen exit over the schedule's time, for the adaptive and
    oracle runs of ``block``; None when there is no such run with decisions."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = [r for r in study.runs if r.block == block and r.label in (ADAPTIVE, ORACLE) and r.decisions]
    series = [(r, times) for r in chosen if (times := _schedule_times(r)) is not None]
    if not series:
        return None
    fig = Figure(figsize=(8, 6.5), dpi=120, layout="constrained")
    FigureCanvasAgg(fig)
    ax_rate, ax_lat, ax_exit = fig.subplots(3, 1, sharex=True)
    end = max(float(s[0][-1]) for _, s in series) + 0.5
    at = [s[0] for s in study.steps if s[0] <= end] + [end]
    rate = [(s[1] or float("nan")) / 1e6 for s in study.steps if s[0] <= end]
    ax_rate.step(at, [*rate, rate[-1]], where="post", color="black")
    ax_rate.set_ylabel("link rate (Mbit/s)")
    shown = study.schedule if len(study.schedule) <= 80 else study.schedule[:77] + "..."
    ax_rate.set_title(f"block {block}: {shown}", fontsize=8)
    for run, (t, exits) in series:
        lat = dict(zip(run.batch_ids, run.batch_latency_ms, strict=False))
        ax_lat.plot(t, [lat.get(i, float("nan")) for i in range(len(t))], ".-", ms=3, label=run.label)
        ax_exit.step(t, exits, where="post", label=run.label)
    ax_lat.set_ylabel("batch latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.legend(fontsize=8)
    ax_exit.set_ylabel("exit chosen")
    ax_exit.set_xlabel("time on the schedule (s)")
    fig.savefig(out, format="png")
    return out


def report_markdown(study: AdaptStudy, figure_name: str | None = None) -> str:
    """Table, verdicts and (when drawn) the figure, as one Markdown section."""
    parts = [table_markdown(study), "", *[f"- {v}" for v in verdicts(study)]]
    if figure_name:
        parts += ["", f"![latency and chosen exit over time]({figure_name})"]
    return "\n".join(parts) + "\n"


def per_run_rows(runs: Sequence[AdaptRun]) -> list[str]:
    """One line per run (for the command's progress output)."""
    return [
        f"block {r.block} {r.label:>13}: mean {r.mean_ms:8.1f} ms  p95 {r.p95_ms:8.1f} ms  "
        f"accuracy {r.accuracy:.3f}  local {r.local_exits}/{r.samples}"
        for r in runs
    ]
