"""The tabulated summary printed after a run. It formats numbers stored in the results; the only
statistic it asks for (pooling per-batch samples across repeats) comes from ``reports.stats``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tabulate import tabulate

from contract.results import Resource, Results, Run
from netem.scheduler import LATE_TARGET_S
from reports import stats

from .busy import other_load
from .placement import format_placement
from .results import PROCEDURES, unstable_figures

#: What each latency of the summary is (paper §4.1; the procedures are those of the table below it).
EDGE_LATENCY_IS = "mean per sample: its batch sent → its prediction back (1→2→3-1)"
CLOUD_LATENCY_IS = "mean per sample: its batch sent → its prediction back (1→2→3-2→4→5)"
OVERALL_LATENCY_IS = "(last prediction back − first batch sent) ÷ samples"


def _num(value: Any, fmt: str = ".3f") -> str:
    return "–" if value is None else format(value, fmt)


def _ms(value: Any, fmt: str = ".3f", per: str = "") -> str:
    return "–" if value is None else f"{format(value, fmt)} ms{per}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _figure(results: Results, key: str) -> Any:
    """A figure of a single run, or its median across repeats."""
    runs = results.runs
    if len(runs) == 1:
        return runs[0].summary.get(key)
    agg = results.aggregate.get(key)
    return agg.median if agg else None


def _spread(results: Results, key: str, fmt: str = ".3f") -> str:
    agg = results.aggregate.get(key)
    if len(results.runs) == 1 or not agg:
        return ""
    flag = "  (unstable)" if agg.unstable else ""
    return f"±{format(agg.mad, fmt)} [{format(agg.min, fmt)}, {format(agg.max, fmt)}]{flag}"


def format_summary(results: Results) -> str:
    """Human-readable summary: exits, accuracy and latency; procedures; edge resources; the link."""
    cfg = results.config
    runs = results.runs
    many = len(runs) > 1
    exit_part = f" exit {cfg.exit}" if cfg.exit is not None else ""
    policy = (cfg.request or {}).get("exit_policy")
    if policy not in (None, "fixed") and cfg.exit is not None:
        exit_part = f", exits chosen by the {policy} policy (from exit {cfg.exit})"
    info = cfg.extra.get("model_info")
    # (a model other than the paper's CNN -- built by a factory -- is named by its own name)
    other = info.get("name") if isinstance(info, dict) and info.get("spec") else None
    head = (
        f"{other or cfg.name or cfg.model}{exit_part}, T = {cfg.threshold:g}, {cfg.dataset} "
        f"({cfg.samples} samples, batch {cfg.batch_size}, warm-up {cfg.warmup_batches or 0}), "
        f"isolation {cfg.isolation}, {len(runs)} run(s)" + (" — medians across runs" if many else "")
    )
    lines = [head, ""]

    # The three latencies are different figures: the edge and cloud ones are means of each sample's own
    # latency, the overall one is the run's wall time divided by its samples (a batch's samples share
    # one trip, so it is about a batch-size-th of the others), so each row says which it is and its unit.
    rows = [
        ["edge (local exit)", _num(_figure(results, "local_exits"), ".0f"), _pct(_figure(results, "edge_accuracy")),
         _ms(_figure(results, "edge_latency_ms")), _spread(results, "edge_latency_ms"), EDGE_LATENCY_IS],
        ["cloud", _num(_figure(results, "cloud_exits"), ".0f"), _pct(_figure(results, "cloud_accuracy")),
         _ms(_figure(results, "cloud_latency_ms")), _spread(results, "cloud_latency_ms"), CLOUD_LATENCY_IS],
        ["overall", _num(_figure(results, "samples"), ".0f"), _pct(_figure(results, "overall_accuracy")),
         _ms(_figure(results, "overall_latency_ms"), ".4f", "/sample"), _spread(results, "overall_latency_ms", ".4f"),
         OVERALL_LATENCY_IS],
    ]  # fmt: skip
    headers = ["exit", "samples", "accuracy", "latency", "± MAD [min, max]", "latency is"]
    if not many:
        rows = [r[:4] + r[5:] for r in rows]
        headers = headers[:4] + headers[5:]
    align = ("left", "right", "right", "right") + (("right",) if many else ()) + ("left",)
    lines.append(tabulate(rows, headers=headers, tablefmt="simple", colalign=align))
    lines.append("")

    pooled: dict[str, list[float]] = {p: [] for p in PROCEDURES}
    for run in runs:
        for p in PROCEDURES:
            pooled[p].extend(run.per_batch_ms.get(p, ()))
    proc_rows = []
    for p in PROCEDURES:
        if not pooled[p]:
            proc_rows.append([p, "–", "–", "–", "–", 0])
            continue
        s = stats.summarize(pooled[p])
        proc_rows.append([p, _num(s["mean"]), _num(s["p50"]), _num(s["p95"]), _num(s["p99"]), s["n"]])
    title = "per-procedure time per batch (ms)" + (", all runs pooled" if many else "")
    lines += [title, tabulate(proc_rows, headers=["procedure", "mean", "p50", "p95", "p99", "batches"])]
    lines += [*clock_lines(runs), ""]

    cpu = [r.edge_cpu_percent for r in runs]
    rss = [r.edge_rss_mib for r in runs]
    res_rows = [
        [
            "CPU %  (100 = one core)",
            _num(_figure_of(cpu, "mean"), ".1f"),
            _num(_figure_of(cpu, "max"), ".1f"),
        ],
        ["RSS MiB", _num(_figure_of(rss, "mean"), ".1f"), _num(_figure_of(rss, "max"), ".1f")],
    ]
    lines += ["edge node resources", tabulate(res_rows, headers=["", "mean", "max"]), ""]

    link_rows = []
    backend = cfg.link_backend
    for link, spec in cfg.links.items():
        if spec is None:
            continue
        for param, value in spec.items():
            mech = backend.get(link, {}).get(param, "none")
            if param == "limit" and value is None:
                continue
            shown = ("unshaped" if param == "rate" else "–") if value is None else value
            link_rows.append([link.replace("_", "–"), param, shown, mech])
    limits = cfg.edge_limits or {}
    for key in ("cpus", "cpuset", "memory"):
        if limits.get(key) is not None:
            link_rows.append(["edge", key, limits[key], limits.get("mechanism") or "none"])
    cloud_cpus = cfg.cloud_cpuset
    if cloud_cpus:
        link_rows.append(["cloud", "cpuset", cloud_cpus["cpuset"], cloud_cpus["mechanism"]])
    tcp = cfg.tcp_congestion_control
    if tcp and tcp.get("name"):
        link_rows.append(["all TCP", "congestion control", tcp["name"], tcp.get("mechanism") or "none"])
    lines += ["link as applied", tabulate(link_rows, headers=["link", "parameter", "value", "mechanism"])]
    for item in cfg.not_applied:
        lines.append(f"NOT applied: {item}")
    lines += schedule_lines(results)
    if cfg.placement is not None:
        lines.append(f"CPU placement {format_placement(cfg.placement)}")
    lines += busy_lines(results)

    for run in runs:
        for warning in run.clock_warnings:
            where = f" (run {run.index})" if many else ""
            lines.append(f"warning: clocks{where}: {warning}")
    unstable = unstable_figures(results)
    too_few = [key for key, reason in unstable if reason.startswith("only ")]
    if too_few:
        lines.append(
            f"warning: {len(runs)} runs are too few to judge the stability of any figure "
            "(pyperf's rules need at least 3): use --repeat 3 or more"
        )
    for key, reason in unstable:
        if key not in too_few:
            lines.append(f"warning: {key} is unstable across runs: {reason}")
    return "\n".join(lines)


def _figure_of(parts: list[Resource], key: str) -> float | None:
    values = [v for p in parts if (v := p.get(key)) is not None]
    if not values:
        return None
    return stats.median(values)


def clock_lines(runs: Sequence[Run]) -> list[str]:
    """How each node's stamps reached the test node's clock (the procedures crossing nodes depend on
    it): ``shared-clock``, or ``offset-corrected`` with the largest uncertainty and drift over the runs."""
    parts = []
    for node in ("edge", "cloud"):
        clocks = [c for run in runs if isinstance(c := run.clock.get(node), dict) and "method" in c]
        if not clocks:
            continue
        methods = sorted({str(c["method"]) for c in clocks})
        text = f"{node} {'/'.join(methods)}"
        corrected = [c for c in clocks if c["method"] != "shared-clock"]
        if corrected:
            uncertainty = max(int(c["uncertainty_ns"]) for c in corrected) / 1e6
            drifts = [
                abs(float(c["drift_ns_per_s"])) for c in corrected if c.get("drift_ns_per_s") is not None
            ]
            text += f" (± {uncertainty:.3f} ms"
            text += f", drift up to {max(drifts) / 1e3:.3f} µs/s)" if drifts else ")"
        parts.append(text)
    return [f"clocks: {', '.join(parts)}"] if parts else []


def busy_lines(results: Results) -> list[str]:
    """What the summary says of runs measured while other programs used the CPU (``harness.busy``)."""
    limit = results.config.max_other_cpu_percent
    shown = f" (limit {limit:g}%)" if limit is not None else ""
    lines = []
    marked = [run for run in results.runs if run.busy]
    if marked:
        loads = [load for run in marked if (load := other_load(run)) is not None]
        if len(loads) > 1:
            used = f"{min(loads):.0f}–{max(loads):.0f}%"
        else:
            used = f"{loads[0]:.0f}%" if loads else "?"
        which = ", ".join(str(run.index) for run in marked)
        lines.append(
            f"warning: run(s) {which} measured while other programs used {used} CPU{shown}, also on their "
            "last re-run: kept, marked busy"
        )
    discarded = results.discarded_runs
    if discarded:
        lines.append(
            f"{len(discarded)} attempt(s) measured on a busy host were run again (kept in the results "
            "file as discarded_runs, out of every figure)"
        )
    return lines


def schedule_lines(results: Results) -> list[str]:
    """The link schedule of the run(s): its steps, the changes applied (over every run) and the latest
    of them against the target, and how far into the schedule the measured phase began."""
    sched = results.config.link_schedule
    if sched is None:
        return []
    runs = results.runs
    records = [run.link_schedule for run in runs if run.link_schedule is not None]
    changes = [c for record in records for c in record.changes]
    not_reached = sum(record.not_reached for record in records)
    steps = f"{len(sched.get('link') or [])} link and {len(sched.get('cpu') or [])} CPU step(s)"
    text = f"link schedule: {steps}, time 0 = the test node's start; {len(changes)} change(s) applied"
    if len(runs) > 1:
        text += f" over {len(runs)} runs"
    lines = []
    if changes:
        worst = max(float(c["late_s"]) for c in changes)
        text += f", the latest {worst * 1e3:.1f} ms after its time (target ≤ {LATE_TARGET_S * 1e3:.0f} ms)"
        if worst > LATE_TARGET_S:
            lines.append(
                f"warning: a change of the link schedule came {worst * 1e3:.0f} ms late, over the "
                f"{LATE_TARGET_S * 1e3:.0f} ms target: the run's conditions lag its schedule (a busy machine?)"
            )
    starts = [record.measured_from_s for record in records if record.measured_from_s is not None]
    if starts:
        text += f"; measured from {min(starts):.1f} s on"
    if not_reached:
        lines.append(f"{not_reached} step(s) of the schedule came after the run's end and were not applied")
    return [text, *lines]
