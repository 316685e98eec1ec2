"""Matplotlib figures (PNG and SVG) of a scenario, laid out like the paper's Fig. 5-10.

Figures are built on ``matplotlib.figure.Figure`` with an explicit Agg canvas, never through pyplot: no
global figure registry, no GUI backend, whatever MPLBACKEND says.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from contract.names import LOCAL_EXITS, PROCEDURES
from reports import stats
from reports.claims import compare
from reports.control import TOLERANCE, scenario_control
from reports.loader import ResultsFile, RunSeries, TrainLog
from reports.stats import Estimate
from reports.tables import Scenario

KINDS = (("sem", "SEM"), ("mem", "MEM"))
_COLORS = {
    "local": "#1f77b4",
    "cloud": "#ff7f0e",
    "edge": "#1f77b4",
    "overall": "#7f7f7f",
}
_PROC_COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")
_DPI = 110
#: Said in every caption whose figure has error bars.
_BARS = "error bars: 95 % interval over runs (none with fewer than 3 runs)"


@dataclass(frozen=True)
class FigureFile:
    """A saved figure: its name, caption and the PNG and SVG files."""

    name: str
    caption: str
    png: Path
    svg: Path


def _new(
    nrows: int,
    ncols: int,
    size: tuple[float, float],
    *,
    sharey: bool = False,
) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=size, dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def _save(fig: Figure, out_dir: Path, name: str, caption: str) -> FigureFile:
    png, svg = out_dir / f"{name}.png", out_dir / f"{name}.svg"
    fig.savefig(png, format="png")
    fig.savefig(svg, format="svg")
    return FigureFile(name, caption, png, svg)


def _figure_legend(fig: Figure, axes: np.ndarray, title: str | None = None) -> None:
    """One legend below the panels, so it never hides a bar."""
    for ax in axes.flat:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(
                handles,
                labels,
                loc="outside lower center",
                ncols=len(handles),
                title=title,
                fontsize="small",
                frameon=False,
            )
            return


def _nan(value: float | None) -> float:
    return np.nan if value is None else value


def _no_data(ax: Axes, what: str, message: str = "no {} results") -> None:
    ax.text(0.5, 0.5, message.format(what), ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _error_kw(color: str = "0.15") -> dict[str, Any]:
    """How error bars (95 % intervals) are drawn; the gid marks them in the SVG."""
    return {"ecolor": color, "elinewidth": 1.0, "capsize": 3, "gid": "interval"}


def _yerr(estimates: Sequence[Estimate | None]) -> npt.NDArray[np.float64]:
    """Asymmetric error bars (2 × n: below, above) from run-level intervals; NaN where there is none."""
    out = np.full((2, len(estimates)), np.nan)
    for i, est in enumerate(estimates):
        if est is not None and est.interval is not None:
            low, high = est.interval
            out[:, i] = max(0.0, est.value - low), max(0.0, high - est.value)
    return out


def _values(estimates: Sequence[Estimate | None]) -> list[float]:
    return [np.nan if est is None else est.value for est in estimates]


def _grouped_bars(
    ax: Axes,
    exits: Sequence[int],
    series: Sequence[tuple[str, str, Sequence[Estimate | None]]],
    ylabel: str,
) -> None:
    width = 0.8 / len(series)
    x = np.arange(len(exits), dtype=float)
    for i, (label, color, estimates) in enumerate(series):
        ax.bar(
            x + (i - (len(series) - 1) / 2) * width,
            _values(estimates),
            width,
            yerr=_yerr(estimates),
            error_kw=_error_kw(),
            label=label,
            color=color,
        )
    ax.set_xticks(x, [str(e) for e in exits])
    ax.set_xlabel("exit point")
    ax.set_ylabel(ylabel)
    ax.grid(axis="y", alpha=0.3)


def _estimate(r: ResultsFile | None, metric: str, scale: float = 1.0) -> Estimate | None:
    """A point's figure: median over runs with its interval (None when no run has it)."""
    vals = [] if r is None else r.values(metric)
    return stats.median_ci([v * scale for v in vals]) if vals else None


def _series_estimate(r: ResultsFile | None, series: Callable[[ResultsFile], RunSeries]) -> Estimate | None:
    vals = () if r is None else series(r).values
    return stats.median_ci(vals) if vals else None


def _resource_estimate(r: ResultsFile | None, field: str) -> Estimate | None:
    vals = () if r is None else r.resource_series(field, "mean").values
    return stats.median_ci(vals) if vals else None


def _metric_series(
    scn: Scenario,
    kind: str,
    t: float,
    exits: Sequence[int],
    metric: str,
    scale: float = 1.0,
) -> list[Estimate | None]:
    return [_estimate(scn.get(kind, e, t), metric, scale) for e in exits]


def _kind_exits(scn: Scenario, kind: str, t: float) -> list[int]:
    return [e for e in scn.exits(t) if scn.get(kind, e, t) is not None]


def _per_exit_figure(
    scn: Scenario,
    t: float,
    out_dir: Path,
    name: str,
    title: str,
    ylabel: str,
    metrics: Sequence[tuple[str, str, str]],
    scale: float = 1.0,
    ylim: tuple[float, float] | None = None,
) -> FigureFile:
    fig, axes = _new(1, 2, (12, 4.4), sharey=True)
    for ax, (kind, label) in zip(axes[0], KINDS, strict=True):
        exits = _kind_exits(scn, kind, t)
        if not exits:
            _no_data(ax, label)
            continue
        series = [(leg, _COLORS[c], _metric_series(scn, kind, t, exits, m, scale)) for leg, c, m in metrics]
        _grouped_bars(ax, exits, series, ylabel)
        ax.set_title(label)
        ax.yaxis.set_tick_params(labelleft=True)
        if ylim:
            ax.set_ylim(*ylim)
    _figure_legend(fig, axes)
    fig.suptitle(f"{title} — {scn.caption(t)}")
    return _save(fig, out_dir, name, f"{title} — {scn.caption(t)}; {_BARS}")


def exits_figure(scn: Scenario, t: float, out_dir: Path) -> FigureFile:
    """Local and cloud exit counts per exit point, SEM | MEM (paper Fig. 5A/6A)."""
    return _per_exit_figure(
        scn,
        t,
        out_dir,
        "exits",
        "Samples exited locally and in the cloud",
        "samples",
        [("local exit", "local", "local_exits"), ("cloud exit", "cloud", "cloud_exits")],
    )


def accuracy_figure(scn: Scenario, t: float, out_dir: Path) -> FigureFile:
    """Edge, cloud and overall accuracy per exit point (paper Fig. 5B/6B)."""
    return _per_exit_figure(
        scn,
        t,
        out_dir,
        "accuracy",
        "Inference accuracy",
        "accuracy (%)",
        [
            ("edge", "edge", "edge_accuracy"),
            ("cloud", "cloud", "cloud_accuracy"),
            ("overall", "overall", "overall_accuracy"),
        ],
        100.0,
        (0.0, 105.0),
    )


def latency_figure(scn: Scenario, t: float, out_dir: Path) -> FigureFile:
    """Edge, cloud and overall latency per exit point (paper Fig. 5C/6C)."""
    return _per_exit_figure(
        scn,
        t,
        out_dir,
        "latency",
        "Inference latency per sample",
        "latency (ms)",
        [
            ("edge", "edge", "edge_latency_ms"),
            ("cloud", "cloud", "cloud_latency_ms"),
            ("overall", "overall", "overall_latency_ms"),
        ],
    )


_THRESHOLD_PANELS = (
    ("local_exits", "local exits (samples)", 1.0),
    ("edge_accuracy", "edge accuracy (%)", 100.0),
    ("cloud_accuracy", "cloud accuracy (%)", 100.0),
    ("overall_accuracy", "overall accuracy (%)", 100.0),
    ("cloud_exits", "cloud exits (samples)", 1.0),
    ("edge_latency_ms", "edge latency (ms)", 1.0),
    ("cloud_latency_ms", "cloud latency (ms)", 1.0),
    ("overall_latency_ms", "overall latency (ms)", 1.0),
)


def threshold_figure(scn: Scenario, kind: str, out_dir: Path) -> FigureFile | None:
    """Every metric against the exit point, one line per threshold T (paper Fig. 7 for SEM, 8 for MEM)."""
    label = dict(KINDS)[kind]
    ts = [t for t in scn.thresholds if _kind_exits(scn, kind, t)]
    if not ts:
        return None
    fig, axes = _new(2, 4, (16, 7.2))
    cmap = [f"C{i}" for i in range(10)]
    for ax, (metric, ylabel, scale) in zip(axes.flat, _THRESHOLD_PANELS, strict=True):
        for i, t in enumerate(ts):
            exits = _kind_exits(scn, kind, t)
            ests = _metric_series(scn, kind, t, exits, metric, scale)
            dodge = (i - (len(ts) - 1) / 2) * 0.08  # so that the thresholds' error bars do not overlap
            ax.errorbar(
                [e + dodge for e in exits],
                _values(ests),
                yerr=_yerr(ests),
                marker="o",
                color=cmap[i % 10],
                label=f"T = {t:g}",
                **_error_kw(cmap[i % 10]),
            )
        ax.set_xlabel("exit point")
        ax.set_ylabel(ylabel)
        ax.set_xticks(list(LOCAL_EXITS))
        ax.grid(alpha=0.3)
    _figure_legend(fig, axes, "exit threshold")
    fig.suptitle(f"{label} against the exit threshold T — {scn.caption()}")
    return _save(
        fig, out_dir, f"threshold_{kind}", f"{label} against the exit threshold T — {scn.caption()}; {_BARS}"
    )


def procedures_figure(scn: Scenario, t: float, out_dir: Path) -> FigureFile:
    """Mean per-batch time of procedures 1, 2, 3-1, 3-2, 4, 5 as stacked bars, SEM | MEM."""
    fig, axes = _new(1, 2, (12, 4.4))
    top = 0.0
    for ax, (kind, label) in zip(axes[0], KINDS, strict=True):
        exits = _kind_exits(scn, kind, t)
        if not exits:
            _no_data(ax, label)
            continue
        bottom = np.zeros(len(exits))
        for proc, color in zip(PROCEDURES, _PROC_COLORS, strict=True):
            vals = np.array(
                [
                    v
                    if (r := scn.get(kind, e, t)) is not None and (v := r.procedure_mean(proc)) is not None
                    else 0.0
                    for e in exits
                ]
            )
            ax.bar([str(e) for e in exits], vals, 0.7, bottom=bottom, label=f"({proc})", color=color)
            bottom += vals
        # The stack's uncertainty: the interval of each run's total, drawn around the stack's top.
        totals = [_series_estimate(scn.get(kind, e, t), lambda r: r.procedures_total_series()) for e in exits]
        yerr = _yerr(totals)
        ax.errorbar([str(e) for e in exits], bottom, yerr=yerr, fmt="none", **_error_kw())
        top = max(top, float(np.nanmax(np.append(bottom + np.nan_to_num(yerr[1]), 0.0))))
        ax.set_title(label)
        ax.set_xlabel("exit point")
        ax.set_ylabel("time per batch (ms)")
        ax.grid(axis="y", alpha=0.3)
    for ax in axes[0]:
        if ax.has_data():
            ax.set_ylim(0, top * 1.08 if top > 0 else 1)
    _figure_legend(fig, axes, "procedure (paper Fig. 4)")
    title = f"Per-procedure time (mean per batch, stacked) — {scn.caption(t)}"
    fig.suptitle(title)
    return _save(fig, out_dir, "procedures", f"{title}; error bars: 95 % interval of each run's total")


def resources_figure(scn: Scenario, t: float, out_dir: Path) -> FigureFile:
    """The edge's CPU (% of one core) and memory (RSS MiB): mean bars with the maximum marked."""
    fig, axes = _new(1, 2, (12, 4.2))
    panels: tuple[tuple[str, str], ...] = (
        ("edge_cpu_percent", "edge CPU (% of one core)"),
        ("edge_rss_mib", "edge memory, RSS (MiB)"),
    )
    exits = scn.exits(t)
    x = np.arange(len(exits), dtype=float)
    for ax, (field, ylabel) in zip(axes[0], panels, strict=True):
        drawn = False
        for i, (kind, label) in enumerate(KINDS):
            found = [scn.get(kind, e, t) for e in exits]
            means = [_resource_estimate(r, field) for r in found]
            drawn = drawn or any(m is not None for m in means)
            maxes = [_nan(None if r is None else r.resource(field, "max")) for r in found]
            xs = x + (i - 0.5) * 0.38
            ax.bar(
                xs,
                _values(means),
                0.38,
                yerr=_yerr(means),
                error_kw=_error_kw(),
                label=f"{label} mean",
                color=f"C{i}",
            )
            ax.plot(xs, maxes, "v", color="k", markersize=5, label="max" if i == 0 else None)
        ax.set_xticks(x, [str(e) for e in exits])
        ax.set_xlabel("exit point")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
        if not drawn:
            ax.cla()
            _no_data(ax, ylabel, "{}: not sampled")
    _figure_legend(fig, axes)
    title = f"Edge resources while running — {scn.caption(t)}"
    fig.suptitle(title)
    return _save(fig, out_dir, "resources", f"{title}; {_BARS}")


def _ratio_panel(
    ax: Axes, points: Sequence[tuple[float, int, Estimate | None]], ylabel: str, band: float | None
) -> None:
    """Ratios with their intervals against the exit point, one series per threshold, around 1.0."""
    ts = sorted({t for t, _, _ in points})
    step = 0.6 / max(1, len(ts))
    for i, t in enumerate(ts):
        mine = [(e, est) for tt, e, est in points if tt == t]
        xs = [e + (i - (len(ts) - 1) / 2) * step for e, _ in mine]
        ests = [est for _, est in mine]
        ax.errorbar(
            xs,
            _values(ests),
            yerr=_yerr(ests),
            fmt="o",
            color=f"C{i % 10}",
            label=f"T = {t:g}",
            **_error_kw(f"C{i % 10}"),
        )
    ax.axhline(1.0, color="k", linewidth=0.8)
    if band is not None:
        ax.axhspan(1.0 - band, 1.0 + band, color="0.85", zorder=0, label=f"1.0 ± {100 * band:g} %")
    ax.set_xticks(list(LOCAL_EXITS))
    ax.set_xlabel("exit point")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def ratios_figure(scn: Scenario, out_dir: Path) -> FigureFile | None:
    """Left: the A/A control (procedure (2), SEM-k / MEM@k, should read 1.0). Right: SEM/MEM overall
    latency. Both as median per-block ratios with their 95 % intervals over blocks."""
    control = [(p.threshold, p.exit, p.estimate) for p in scenario_control(scn).pairs]
    if not control:
        return None
    latency = []
    for t in scn.thresholds:
        for e in scn.exits(t):
            s, m = scn.get("sem", e, t), scn.get("mem", e, t)
            if s is not None and m is not None:
                latency.append(
                    (t, e, compare(s.series("overall_latency_ms"), m.series("overall_latency_ms"), "ratio"))
                )
    fig, axes = _new(1, 2, (12, 4.4))
    _ratio_panel(axes[0, 0], control, "procedure (2) time, SEM-k / MEM@k", TOLERANCE)
    axes[0, 0].set_title("A/A control: identical edge layers (should read 1.0)")
    _ratio_panel(axes[0, 1], latency, "overall latency, SEM / MEM", None)
    axes[0, 1].set_title("SEM against MEM (below 1.0: SEM faster)")
    _figure_legend(fig, axes, "exit threshold")
    title = f"Paired ratios — {scn.caption()}"
    fig.suptitle(title)
    return _save(fig, out_dir, "ratios", f"{title}; error bars: 95 % interval over blocks")


def training_curves_figure(logs: Sequence[TrainLog], out_dir: Path) -> FigureFile | None:
    """Train accuracy over epochs at each exit: SEM-k solid, the MEM's exit k dotted (paper Fig. 9)."""
    sem = {log.exit: log for log in logs if log.kind == "sem"}
    mem = next((log for log in logs if log.kind == "mem"), None)
    if not sem and mem is None:
        return None
    fig, axes = _new(2, 4, (15, 6.6), sharey=True)
    for ax, e in zip(axes.flat, LOCAL_EXITS, strict=True):
        drawn = False
        if e in sem:
            xs, ys = sem[e].curve(str(e))
            ax.plot(xs, [100 * y for y in ys], "-", color="C0", label=f"SEM-{e}")
            drawn = drawn or bool(xs)
        if mem is not None:
            xs, ys = mem.curve(str(e))
            ax.plot(xs, [100 * y for y in ys], ":", color="C3", linewidth=2, label=f"MEM exit {e}")
            drawn = drawn or bool(xs)
        if not drawn:
            _no_data(ax, f"exit {e}")
            continue
        ax.set_title(f"exit point {e}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("train accuracy (%)")
        ax.yaxis.set_tick_params(labelleft=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    dataset = (next(iter(sem.values())) if sem else mem).dataset  # type: ignore[union-attr]
    caption = f"Train accuracy per exit over epochs — {dataset}"
    fig.suptitle(caption)
    return _save(fig, out_dir, "training_curves", caption)


def training_final_figure(logs: Sequence[TrainLog], out_dir: Path) -> FigureFile | None:
    """Final train accuracy: edge exit as bars, cloud exit as lines, SEM vs MEM (paper Fig. 10)."""
    sem = {log.exit: log for log in logs if log.kind == "sem"}
    mem = next((log for log in logs if log.kind == "mem"), None)
    if not sem and mem is None:
        return None
    fig, axes = _new(1, 1, (9, 4.4))
    ax = axes[0, 0]
    x = np.arange(len(LOCAL_EXITS), dtype=float)

    def final(log: TrainLog | None, key: str) -> float:
        return 100 * log.final_train[key] if log is not None and key in log.final_train else np.nan

    sem_edge = [final(sem.get(e), str(e)) for e in LOCAL_EXITS]
    mem_edge = [final(mem, str(e)) for e in LOCAL_EXITS]
    sem_cloud = [final(sem.get(e), "cloud") for e in LOCAL_EXITS]
    mem_cloud = [final(mem, "cloud")] * len(x)
    ax.bar(x - 0.2, sem_edge, 0.4, color="#6baed6", label="SEM-k edge exit")
    ax.bar(x + 0.2, mem_edge, 0.4, color="#fc9272", label="MEM edge exit k")
    ax.plot(x, sem_cloud, "o-", color="#08519c", label="SEM-k cloud exit", zorder=3)
    ax.plot(x, mem_cloud, "s--", color="#a50f15", label="MEM cloud exit", zorder=3)
    shown = [v for v in (*sem_edge, *mem_edge, *sem_cloud, *mem_cloud) if not np.isnan(v)]
    low = max(0.0, 10.0 * np.floor((min(shown) - 5.0) / 10.0)) if shown else 0.0
    ax.set_xticks(x, [str(e) for e in LOCAL_EXITS])
    ax.set_xlabel("exit point")
    ax.set_ylabel("final train accuracy (%)")
    ax.set_ylim(low, 101)
    ax.grid(axis="y", alpha=0.3)
    _figure_legend(fig, axes)
    dataset = (next(iter(sem.values())) if sem else mem).dataset  # type: ignore[union-attr]
    caption = f"Final train accuracy at each exit — {dataset}"
    fig.suptitle(caption)
    return _save(fig, out_dir, "training_final", caption)


def scenario_figures(scn: Scenario, t: float, out_dir: Path) -> list[FigureFile]:
    """Every results figure of one scenario, written into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figs = [
        exits_figure(scn, t, out_dir),
        accuracy_figure(scn, t, out_dir),
        latency_figure(scn, t, out_dir),
        threshold_figure(scn, "sem", out_dir),
        threshold_figure(scn, "mem", out_dir),
        procedures_figure(scn, t, out_dir),
        resources_figure(scn, t, out_dir),
        ratios_figure(scn, out_dir),
    ]
    return [f for f in figs if f is not None]
