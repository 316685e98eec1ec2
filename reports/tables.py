"""Tables (rows of raw numbers) built from results files, and their rendering with tabulate.

Rows keep raw numbers (accuracies in %, times in ms) so tests can compare them with hand-computed values;
``render`` formats them for a terminal, GitHub Markdown or LaTeX.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tabulate import tabulate

from contract.names import LOCAL_EXIT_KINDS, LOCAL_EXITS, PROCEDURES
from reports import stats
from reports.errors import ReportError
from reports.loader import ResultsFile, TrainLog, model_and_device_key, scenario_key

Cell = float | int | str | None
TableFormat = Literal["terminal", "github", "latex"]
TABLE_FORMATS: tuple[TableFormat, ...] = ("terminal", "github", "latex")
_TABULATE_FMT = {"terminal": "simple", "github": "github", "latex": "latex_booktabs"}
PAPER_THRESHOLD = 0.3  # the paper's per-exit figures (5, 6) use T = 0.3


@dataclass(frozen=True)
class Table:
    """A titled table; ``floatfmt`` gives one format per column (tabulate's floatfmt)."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    floatfmt: tuple[str, ...]
    note: str = ""

    def __post_init__(self) -> None:
        if len(self.floatfmt) != len(self.headers):
            raise ValueError(
                f"table {self.title!r}: {len(self.floatfmt)} formats for {len(self.headers)} columns"
            )
        for row in self.rows:
            if len(row) != len(self.headers):
                raise ValueError(
                    f"table {self.title!r}: row {row!r} has {len(row)} cells, expected {len(self.headers)}"
                )

    def column(self, header: str) -> list[Cell]:
        """The cells of one column, by header."""
        i = self.headers.index(header)
        return [row[i] for row in self.rows]


def render(table: Table, fmt: TableFormat) -> str:
    """Render a table as plain text, GitHub Markdown or LaTeX (booktabs); missing values show as '–'."""
    if fmt not in _TABULATE_FMT:
        raise ValueError(f"unknown table format {fmt!r}; choose one of {TABLE_FORMATS}")
    return tabulate(
        [list(r) for r in table.rows],
        headers=list(table.headers),
        tablefmt=_TABULATE_FMT[fmt],
        floatfmt=table.floatfmt,
        missingval="–" if fmt != "latex" else "--",
        disable_numparse=False,
    )


def _pct(value: float | None) -> float | None:
    return None if value is None else 100.0 * value


@dataclass(frozen=True)
class Scenario:
    """Results that share dataset, links, batch size and edge limits: one set of figures."""

    results: tuple[ResultsFile, ...]
    by_point: dict[tuple[str, int | None, float], ResultsFile] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.results:
            raise ValueError("a scenario needs at least one results file")
        keys = {scenario_key(r) for r in self.results}
        if len(keys) != 1:
            raise ValueError(
                "results of one scenario must share dataset, links, batch size, edge limits and cloud CPUs"
            )
        object.__setattr__(self, "by_point", {(r.kind, r.exit, r.threshold): r for r in self.results})

    @property
    def config(self) -> dict[str, object]:
        return dict(self.results[0].config)

    @property
    def dataset(self) -> str:
        return str(self.results[0].config["dataset"])

    @property
    def link(self) -> str:
        """The edge–cloud link in tc words, e.g. 'rate 10mbit, delay 0ms'."""
        links = self.results[0].config["links"]
        ec = links.get("edge_cloud") if isinstance(links, dict) else None
        if not isinstance(ec, dict):
            return "unshaped link"
        parts = [f"{k} {v}" for k, v in ec.items() if v not in (None, "0ms", "0%", "0")]
        return ", ".join(parts) if parts else "unshaped link"

    @property
    def thresholds(self) -> list[float]:
        return sorted({r.threshold for r in self.results})

    def primary_threshold(self) -> float:
        """The paper's T = 0.3 when present, otherwise the threshold with the most results."""
        ts = self.thresholds
        if PAPER_THRESHOLD in ts:
            return PAPER_THRESHOLD
        return max(ts, key=lambda t: (sum(1 for r in self.results if r.threshold == t), -t))

    def get(self, kind: str, exit_: int | None, threshold: float) -> ResultsFile | None:
        return self.by_point.get((kind, exit_, threshold))

    def exits(self, threshold: float) -> list[int]:
        """Exit points with a SEM or MEM result at ``threshold``."""
        return sorted(
            {
                r.exit
                for r in self.results
                if r.threshold == threshold and r.exit is not None and r.kind != "standard"
            }
        )

    def caption(self, threshold: float | None = None) -> str:
        t = "" if threshold is None else f", T = {threshold:g}"
        return f"{self.dataset}, {self.link}, batch {self.config.get('batch_size')}{self.placement}{self.model}{t}"

    @property
    def model(self) -> str:
        """The model when it is not the paper's CNN (``", model resnet18"``), else ""."""
        info = self.config.get("model_info")
        if not isinstance(info, dict) or not info.get("spec"):
            return ""
        return f", model {info.get('name') or info['spec']}"

    @property
    def placement(self) -> str:
        """The edge's limits and the cloud's CPUs when set (``", edge cpuset 0, cloud CPUs 1"``), else ""."""
        parts = []
        limits = self.config.get("edge_limits")
        if isinstance(limits, dict):
            parts += [f"edge {key} {limits[key]}" for key in ("cpus", "cpuset", "memory") if limits.get(key)]
        cloud = self.config.get("cloud_cpuset")
        if isinstance(cloud, dict) and cloud.get("cpuset"):
            parts.append(f"cloud CPUs {cloud['cpuset']}")
        tcp = self.config.get("tcp_congestion_control")
        if isinstance(tcp, dict) and tcp.get("requested"):  # (the kernel's default is in the table below)
            parts.append(f"TCP {tcp.get('name') or tcp['requested']}")
        # (a node off the CPU: "cloud on cuda:0")
        parts += [p for p in model_and_device_key(self.results[0].results.config.extra) if " on " in p]
        return "".join(f", {p}" for p in parts)


def group_scenarios(results: Sequence[ResultsFile]) -> list[Scenario]:
    """Split results by scenario (dataset, links, batch size, edge limits, cloud CPUs, TCP congestion
    control), in first-seen order."""
    groups: dict[tuple[str, ...], list[ResultsFile]] = {}
    for r in results:
        groups.setdefault(scenario_key(r), []).append(r)
    return [Scenario(tuple(g)) for g in groups.values()]


def _pair(scn: Scenario, exit_: int, t: float, metric: str, scale: float = 1.0) -> tuple[Cell, Cell]:
    out: list[Cell] = []
    for kind in LOCAL_EXIT_KINDS:
        r = scn.get(kind, exit_, t)
        v = None if r is None else r.metric(metric)
        out.append(None if v is None else v * scale)
    return out[0], out[1]


def exits_table(scn: Scenario, t: float) -> Table:
    """Local and cloud exit counts per exit point, SEM and MEM side by side (paper Fig. 5A/6A)."""
    rows = []
    for e in scn.exits(t):
        sl, ml = _pair(scn, e, t, "local_exits")
        sc, mc = _pair(scn, e, t, "cloud_exits")
        rows.append((e, sl, sc, ml, mc))
    return Table(
        f"Exit counts per exit point ({scn.caption(t)})",
        ("exit", "SEM local (samples)", "SEM cloud (samples)", "MEM local (samples)", "MEM cloud (samples)"),
        tuple(rows),
        ("g", ".0f", ".0f", ".0f", ".0f"),
        "Median across runs.",
    )


def accuracy_table(scn: Scenario, t: float) -> Table:
    """Edge, cloud and overall accuracy (%) per exit point, SEM and MEM (paper Fig. 5B/6B)."""
    rows = []
    for e in scn.exits(t):
        cells: list[Cell] = [e]
        for m in ("edge_accuracy", "cloud_accuracy", "overall_accuracy"):
            cells.extend(_pair(scn, e, t, m, 100.0))
        rows.append(tuple(cells))
    return Table(
        f"Accuracy per exit point ({scn.caption(t)})",
        (
            "exit",
            "SEM edge (%)",
            "MEM edge (%)",
            "SEM cloud (%)",
            "MEM cloud (%)",
            "SEM overall (%)",
            "MEM overall (%)",
        ),
        tuple(rows),
        ("g",) + (".2f",) * 6,
        "Median across runs; – where no sample exited there.",
    )


def latency_table(scn: Scenario, t: float) -> Table:
    """Edge, cloud and overall latency (ms) per exit point, SEM and MEM (paper Fig. 5C/6C)."""
    rows = []
    for e in scn.exits(t):
        cells: list[Cell] = [e]
        for m in ("edge_latency_ms", "cloud_latency_ms", "overall_latency_ms"):
            cells.extend(_pair(scn, e, t, m))
        rows.append(tuple(cells))
    return Table(
        f"Latency per exit point ({scn.caption(t)})",
        (
            "exit",
            "SEM edge (ms)",
            "MEM edge (ms)",
            "SEM cloud (ms)",
            "MEM cloud (ms)",
            "SEM overall (ms)",
            "MEM overall (ms)",
        ),
        tuple(rows),
        ("g",) + (".3f",) * 6,
        "Edge/cloud: mean per-sample latency; overall: (last prediction − first send) / samples. Median across runs.",
    )


def threshold_table(scn: Scenario) -> Table:
    """Every configuration against the threshold T (paper Fig. 7/8)."""
    rows = []
    for r in sorted(scn.results, key=lambda r: (r.kind, r.exit or 0, r.threshold)):
        rows.append(
            (
                r.label,
                r.threshold,
                r.metric("local_exits"),
                r.metric("cloud_exits"),
                _pct(r.metric("edge_accuracy")),
                _pct(r.metric("cloud_accuracy")),
                _pct(r.metric("overall_accuracy")),
                r.metric("edge_latency_ms"),
                r.metric("cloud_latency_ms"),
                r.metric("overall_latency_ms"),
            )
        )
    return Table(
        f"Results against the exit threshold T ({scn.caption()})",
        (
            "model",
            "T",
            "local (samples)",
            "cloud (samples)",
            "edge acc. (%)",
            "cloud acc. (%)",
            "overall acc. (%)",
            "edge lat. (ms)",
            "cloud lat. (ms)",
            "overall lat. (ms)",
        ),
        tuple(rows),
        ("", "g", ".0f", ".0f", ".2f", ".2f", ".2f", ".3f", ".3f", ".3f"),
        "Median across runs.",
    )


def procedures_table(scn: Scenario, t: float) -> Table:
    """Mean per-batch time of each procedure (ms) and the edge's CPU and memory, per configuration."""
    rows = []
    for r in sorted((r for r in scn.results if r.threshold == t), key=lambda r: (r.kind, r.exit or 0)):
        rows.append(
            (
                r.label,
                *(r.procedure_mean(p) for p in PROCEDURES),
                r.resource("edge_cpu_percent", "mean"),
                r.resource("edge_cpu_percent", "max"),
                r.resource("edge_rss_mib", "mean"),
                r.resource("edge_rss_mib", "max"),
            )
        )
    return Table(
        f"Per-procedure time and edge resources ({scn.caption(t)})",
        (
            "model",
            *(f"({p}) (ms)" for p in PROCEDURES),
            "edge CPU mean (%)",
            "edge CPU max (%)",
            "edge RSS mean (MiB)",
            "edge RSS max (MiB)",
        ),
        tuple(rows),
        ("",) + (".3f",) * len(PROCEDURES) + (".1f",) * 4,
        "Procedures: mean time per batch, median across runs; – where no batch had that procedure. "
        "CPU %: 100 = one core.",
    )


def spread_table(scn: Scenario) -> Table:
    """How each configuration's overall latency spread across runs, and its batches within a run."""
    rows = []
    for r in sorted(scn.results, key=lambda r: (r.kind, r.exit or 0, r.threshold)):
        vals = r.values("overall_latency_ms")
        est = stats.median_ci(vals)
        unstable, why = stats.is_unstable(vals)
        per_run = r.batch_latencies_by_run()
        # Batch percentiles describe one run each (its batches share its machine state); across runs only
        # their median is shown, never a percentile of batches pooled from several runs.
        p50 = stats.median([stats.percentile(b, 50) for b in per_run]) if per_run else None
        p95 = stats.median([stats.percentile(b, 95) for b in per_run]) if per_run else None
        rows.append(
            (
                r.label,
                r.threshold,
                len(vals),
                "yes" if r.blocked else "no",
                est.value,
                est.interval_text(".3f"),
                stats.mad(vals),
                p50,
                p95,
                why if unstable else "stable",
            )
        )
    return Table(
        f"Spread across runs, and of batches within a run ({scn.caption()})",
        (
            "model",
            "T",
            "runs",
            "blocks",
            "overall lat. median (ms)",
            "95 % interval (ms)",
            "MAD (ms)",
            "batch lat. p50 (ms)",
            "batch lat. p95 (ms)",
            "stability",
        ),
        tuple(rows),
        ("", "g", "d", "", ".3f", "", ".3f", ".3f", ".3f", ""),
        "Median, interval (percentile bootstrap over runs, none below 3 runs) and MAD (median absolute "
        "deviation) across runs: the run is the unit of replication. Batch p50/p95: nearest rank within each "
        "run, median over runs. Blocks: whether runs carry the block they ran in (paired comparisons). "
        "Stability: pyperf-style rules.",
    )


def training_table(logs: Sequence[TrainLog]) -> Table:
    """Final train accuracy (%) at each exit: SEM-k's local exit vs the MEM's exit k (paper Fig. 10)."""
    sem = {log.exit: log for log in logs if log.kind == "sem"}
    mems = [log for log in logs if log.kind == "mem"]
    if len(mems) > 1:
        raise ReportError(
            f"{len(mems)} MEM training logs given ({', '.join(str(m.path) for m in mems)}); pass one"
        )
    mem = mems[0] if mems else None
    rows = []
    for e in LOCAL_EXITS:
        s = sem.get(e)
        if s is None and (mem is None or str(e) not in mem.final_train):
            continue
        rows.append(
            (
                e,
                _pct(s.final_train.get(str(e))) if s else None,
                _pct(mem.final_train.get(str(e))) if mem else None,
                _pct(s.final_train.get("cloud")) if s else None,
                _pct(mem.final_train.get("cloud")) if mem else None,
            )
        )
    return Table(
        "Final train accuracy per exit",
        ("exit", "SEM edge (%)", "MEM edge (%)", "SEM cloud (%)", "MEM cloud (%)"),
        tuple(rows),
        ("g", ".2f", ".2f", ".2f", ".2f"),
        "SEM row k: the SEM-k model's local exit and its cloud exit; MEM: the one multi-exit model.",
    )


def environment_table(results: Sequence[ResultsFile]) -> Table:
    """The environment every results file recorded (values that differ are listed together)."""
    keys: dict[str, list[str]] = {}
    for r in results:
        for k, v in r.environment.items():
            vals = keys.setdefault(str(k), [])
            text = v if isinstance(v, str) else json.dumps(v)
            if text not in vals:
                vals.append(text)
    rows = tuple(
        (k, "; ".join(v) if len(v) <= 3 else f"{len(v)} values, e.g. {v[0]}") for k, v in keys.items()
    )
    return Table("Environment", ("field", "value"), rows, ("", ""))


def mechanism_table(results: Sequence[ResultsFile]) -> Table:
    """Which mechanism applied each link parameter (tc qdisc or user-space emulation), and edge limits."""
    seen: dict[tuple[str, str, str], set[str]] = {}
    not_applied: set[str] = set()
    for r in results:
        links = r.config.get("links")
        backend = r.config.get("link_backend")
        backend = backend if isinstance(backend, dict) else {}
        for link, spec in links.items() if isinstance(links, dict) else ():
            if not isinstance(spec, dict):
                continue
            for param, value in spec.items():
                if value is None:
                    continue
                mech = (backend.get(link) or {}).get(param, "none" if backend else "not recorded")
                seen.setdefault((str(link), str(param), str(value)), set()).add(str(mech))
        limits = r.config.get("edge_limits")
        if isinstance(limits, dict):
            for key in ("cpus", "cpuset", "memory"):
                if limits.get(key) is not None:
                    mech = str(limits.get("mechanism") or "none")
                    seen.setdefault(("edge", key, str(limits[key])), set()).add(mech)
        cloud_cpus = r.config.get("cloud_cpuset")
        if isinstance(cloud_cpus, dict) and cloud_cpus.get("cpuset") is not None:
            mech = str(cloud_cpus.get("mechanism") or "none")
            seen.setdefault(("cloud", "cpuset", str(cloud_cpus["cpuset"])), set()).add(mech)
        tcp = r.config.get("tcp_congestion_control")
        if isinstance(tcp, dict) and tcp.get("name"):
            mech = str(tcp.get("mechanism") or "none")
            seen.setdefault(("all TCP", "congestion control", str(tcp["name"])), set()).add(mech)
        not_applied.update(str(x) for x in r.config.get("not_applied") or [])
    rows = tuple(
        (link, param, value, ", ".join(sorted(m))) for (link, param, value), m in sorted(seen.items())
    )
    isolation = sorted({str(r.config.get("isolation", "not recorded")) for r in results})
    note = f"Isolation: {', '.join(isolation)}. 'none': the parameter needed no shaping (e.g. 0ms)."
    if not_applied:
        note += " NOT applied: " + "; ".join(sorted(not_applied)) + "."
    return Table(
        "Link parameters and the mechanism that applied them",
        ("link", "parameter", "value", "mechanism"),
        rows,
        ("", "", "", ""),
        note,
    )
