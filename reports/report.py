"""Assemble tables and figures into a Markdown report and a self-contained HTML one.

The report is a list of blocks (heading, paragraph, table, figure) rendered twice: to Markdown with the
figures beside it, and to HTML with the figures embedded as base64 PNG, so the HTML file can be mailed
or attached on its own.
"""

from __future__ import annotations

import base64
import html
import json
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tabulate import tabulate

from contract.atomic import write_atomic
from reports import architectures, claims, control, export, figures, paper, tables
from reports.errors import ReportError
from reports.loader import (
    ResultsFile,
    TrainLog,
    load_results,
    load_train_logs,
    model_and_device_key,
    scenario_key,
)
from reports.tables import TABLE_FORMATS, Table, TableFormat

logger = logging.getLogger(__name__)

_SUFFIX = {"terminal": "txt", "github": "md", "latex": "tex"}


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str
    #: Set on what a reader must not miss (the noise control when it is off).
    strong: bool = False


@dataclass(frozen=True)
class TableBlock:
    name: str
    table: Table


@dataclass(frozen=True)
class FigureBlock:
    figure: figures.FigureFile


Block = Heading | Paragraph | TableBlock | FigureBlock


def _config_paragraph(scn: tables.Scenario, t: float) -> Paragraph:
    cfg = scn.config
    keep = ("dataset", "samples", "batch_size", "warmup_batches", "inflight", "repeat", "seed", "isolation")
    parts = [f"{k} = {cfg[k]}" for k in keep if k in cfg]
    parts.append(f"links = {json.dumps(cfg.get('links'), sort_keys=True)}")
    parts.append(f"edge limits = {json.dumps(cfg.get('edge_limits'), sort_keys=True)}")
    if cfg.get("cloud_cpuset"):
        parts.append(f"cloud CPU set = {json.dumps(cfg['cloud_cpuset'], sort_keys=True)}")
    if cfg.get("tcp_congestion_control"):
        parts.append(f"TCP congestion control = {json.dumps(cfg['tcp_congestion_control'], sort_keys=True)}")
    ts = ", ".join(f"{x:g}" for x in scn.thresholds)
    return Paragraph(
        f"Configuration: {'; '.join(parts)}. Thresholds present: {ts}; per-exit figures and tables at "
        f"T = {t:g}. {len(scn.results)} results file(s)."
    )


def _scenario_blocks(
    scn: tables.Scenario, t: float, fig_dir: Path, prefix: str, judged: list[claims.Claim]
) -> list[Block]:
    figs = {f.name: f for f in figures.scenario_figures(scn, t, fig_dir)}
    blocks: list[Block] = [
        _config_paragraph(scn, t),
        Heading(3, "Noise control (A/A)"),
        TableBlock(f"{prefix}control", control.control_table(scn)),
    ]
    if "ratios" in figs:
        blocks.append(FigureBlock(figs["ratios"]))
    blocks += [
        Heading(3, "The paper's claims"),
        TableBlock(f"{prefix}claims", claims.claims_table(scn, t, judged)),
        TableBlock(f"{prefix}sem_vs_mem", claims.sem_vs_mem_table(scn, t)),
    ]
    other = architectures.other_model(scn.results[0])
    if other is None:
        blocks += [
            Heading(3, "Fidelity to the paper"),
            Paragraph(paper.fidelity_paragraph(scn, t)),
            TableBlock(f"{prefix}fidelity", paper.fidelity_table(scn, t, judged)),
        ]
    else:
        # (the paper's numbers are of its CNN: beside another model's they would read as a comparison)
        blocks.append(
            Paragraph(
                f"This scenario ran {architectures.model_label(scn.results[0])} ({other}), not the paper's "
                "CNN: the claims above test the paper's findings on it (SEM and MEM name its exit layout: one "
                "local exit or several), and its numbers are not set beside the paper's. The section "
                '"Architectures beside the paper\'s CNN" compares it with the CNN under the same conditions.'
            )
        )
    blocks += [
        Heading(3, "Per exit point (paper Fig. 5 and 6)"),
        FigureBlock(figs["exits"]),
        TableBlock(f"{prefix}exits", tables.exits_table(scn, t)),
        FigureBlock(figs["accuracy"]),
        TableBlock(f"{prefix}accuracy", tables.accuracy_table(scn, t)),
        FigureBlock(figs["latency"]),
        TableBlock(f"{prefix}latency", tables.latency_table(scn, t)),
        Heading(3, "Against the exit threshold T (paper Fig. 7 and 8)"),
    ]
    blocks += [FigureBlock(figs[n]) for n in ("threshold_sem", "threshold_mem") if n in figs]
    blocks += [
        TableBlock(f"{prefix}threshold", tables.threshold_table(scn)),
        Heading(3, "Per-procedure time and edge resources"),
        Paragraph(
            "Procedures (paper Fig. 4): (1) test → edge batch, (2) edge blocks and exit head, "
            "(3-1) edge → test predictions, (3-2) edge → cloud features, (4) cloud blocks, "
            "(5) cloud → test predictions."
        ),
        FigureBlock(figs["procedures"]),
        FigureBlock(figs["resources"]),
        TableBlock(f"{prefix}procedures", tables.procedures_table(scn, t)),
        Heading(3, "Spread and stability"),
        TableBlock(f"{prefix}spread", tables.spread_table(scn)),
    ]
    return blocks


def _threshold(scn: tables.Scenario, threshold: float | None) -> float:
    if threshold is None:
        return scn.primary_threshold()
    if threshold not in scn.thresholds:
        raise ReportError(
            f"no results at T = {threshold:g} for {scn.caption()}; present: "
            f"{', '.join(f'{x:g}' for x in scn.thresholds)}"
        )
    return threshold


def noise_headline(scenarios: Sequence[tables.Scenario]) -> tuple[bool, str]:
    """``(off, text)`` of the A/A control over every scenario: the line at the top of the report."""
    multi = len(scenarios) > 1
    return control.headline(
        [
            control.scenario_control(scn, f"scenario {i}, " if multi else "")
            for i, scn in enumerate(scenarios, start=1)
        ]
    )


def architecture_groups(results: Sequence[ResultsFile]) -> list[tuple[str, list[ResultsFile]]]:
    """Per set of conditions (a scenario but for the model) where some run used a model other than the
    paper's CNN: its caption, and those runs with the CNN's runs at the same exits and thresholds."""
    groups: dict[tuple[str, ...], list[ResultsFile]] = {}
    for r in results:
        model = {p for p in model_and_device_key(r.results.config.extra) if " on " not in p}
        groups.setdefault(tuple(p for p in scenario_key(r) if p not in model), []).append(r)
    out: list[tuple[str, list[ResultsFile]]] = []
    for group in groups.values():
        others = [r for r in group if architectures.other_model(r) is not None]
        if not others:
            continue
        points = {(r.exit or 0, r.threshold) for r in others}
        cnn = [
            r for r in group if architectures.other_model(r) is None and (r.exit or 0, r.threshold) in points
        ]
        scn = tables.Scenario((others[0],))
        out.append((scn.caption().removesuffix(scn.model), [*others, *cnn]))
    return out


def architecture_blocks(results: Sequence[ResultsFile]) -> list[Block]:
    """The architectures section: empty unless some run used a model other than the paper's CNN."""
    groups = architecture_groups(results)
    if not groups:
        return []
    blocks: list[Block] = [
        Heading(2, "Architectures beside the paper's CNN"),
        Paragraph(
            "Runs of models other than the paper's CNN (--model-spec, models.torchvision_exits), each a "
            "scenario of its own above, with the CNN's runs at the same exits and thresholds under the same "
            "conditions."
        ),
    ]
    for i, (caption, group) in enumerate(groups, start=1):
        name = "architectures" if len(groups) == 1 else f"architectures_{i}"
        blocks.append(TableBlock(name, architectures.architectures_table(group, caption)))
    return blocks


def build_blocks(
    results: Sequence[ResultsFile],
    logs: Sequence[TrainLog],
    out_dir: Path,
    title: str,
    threshold: float | None = None,
) -> list[Block]:
    """The report's blocks; writes the figures under ``out_dir/figures`` as it goes."""
    scenarios = tables.group_scenarios(results)
    ts = [_threshold(scn, threshold) for scn in scenarios]
    off, headline = noise_headline(scenarios)
    blocks: list[Block] = [
        Heading(1, title),
        Paragraph(headline, strong=off),
        Paragraph(
            f"Generated {datetime.now(timezone.utc).isoformat(timespec='seconds')} on {platform.node()} from "
            f"{len(results)} results file(s) and {len(logs)} training log(s)."
        ),
    ]
    for i, (scn, t) in enumerate(zip(scenarios, ts, strict=True), start=1):
        multi = len(scenarios) > 1
        blocks.append(Heading(2, f"Scenario {i}: {scn.caption()}" if multi else f"Results: {scn.caption()}"))
        fig_dir = out_dir / "figures" / (f"s{i}" if multi else "")
        judged = claims.evaluate_claims(scn, t)
        blocks += _scenario_blocks(scn, t, fig_dir, f"s{i}_" if multi else "", judged)
    blocks += architecture_blocks(results)
    if logs:
        fig_dir = out_dir / "figures"
        blocks.append(Heading(2, "Training (paper Fig. 9 and 10)"))
        for fig in (
            figures.training_curves_figure(logs, fig_dir),
            figures.training_final_figure(logs, fig_dir),
        ):
            if fig is not None:
                blocks.append(FigureBlock(fig))
        blocks.append(TableBlock("training", tables.training_table(logs)))
    blocks += [
        Heading(2, "Environment and link mechanisms"),
        TableBlock("mechanisms", tables.mechanism_table(results)),
        TableBlock("environment", tables.environment_table(results)),
        Paragraph(
            "Inputs: "
            + ", ".join(str(r.path) for r in results)
            + ("; training logs: " + ", ".join(str(log.path) for log in logs) if logs else "")
            + "."
        ),
    ]
    return blocks


def to_markdown(blocks: Sequence[Block], base: Path) -> str:
    """Markdown with GitHub tables; figures linked relative to ``base`` (the report's folder)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + b.text)
        elif isinstance(b, Paragraph):
            out.append(f"**{b.text}**" if b.strong else b.text)
        elif isinstance(b, TableBlock):
            out.append(f"**{b.table.title}**\n\n{tables.render(b.table, 'github')}")
            if b.table.note:
                out.append(f"*{b.table.note}*")
        else:
            rel = b.figure.png.relative_to(base).as_posix()
            svg = b.figure.svg.relative_to(base).as_posix()
            out.append(f"![{b.figure.caption}]({rel})\n\n*{b.figure.caption}* ([SVG]({svg}))")
    return "\n\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.25em .5em}
th{background:#f3f3f3}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}
figcaption,.note{color:#555;font-size:.9em;font-style:italic}
.warning{border-left:4px solid #c00;background:#fff3f3;padding:.5em 1em}"""


def to_html(blocks: Sequence[Block]) -> str:
    """A self-contained HTML page: inline CSS, figures as base64 PNG, no external assets."""
    title = next((b.text for b in blocks if isinstance(b, Heading)), "localexit report")
    out = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head><body>"
    ]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            text = html.escape(b.text)
            out.append(f'<p class="warning"><strong>{text}</strong></p>' if b.strong else f"<p>{text}</p>")
        elif isinstance(b, TableBlock):
            t = b.table
            body = tabulate(
                [list(r) for r in t.rows],
                headers=list(t.headers),
                tablefmt="html",
                floatfmt=t.floatfmt,
                missingval="–",
            )
            out.append(f"<h4>{html.escape(t.title)}</h4>{body}")
            if t.note:
                out.append(f'<p class="note">{html.escape(t.note)}</p>')
        else:
            data = base64.b64encode(b.figure.png.read_bytes()).decode("ascii")
            cap = html.escape(b.figure.caption)
            out.append(
                f'<figure><img alt="{cap}" src="data:image/png;base64,{data}">'
                f"<figcaption>{cap}</figcaption></figure>"
            )
    out.append("</body></html>\n")
    return "\n".join(out)


def build_report(
    inputs: list[Path],
    out_dir: Path,
    *,
    train_logs: list[Path] | None = None,
    title: str | None = None,
    threshold: float | None = None,
    table_formats: Sequence[TableFormat] = TABLE_FORMATS,
) -> Path:
    """Build the whole report from results files/folders (and training logs); return ``report.md``.

    Writes ``report.md``, ``report.html``, ``figures/*.png|svg`` and ``tables/<name>.txt|md|tex`` under
    ``out_dir``, and every table's raw numbers as ``tables/<name>.csv`` whatever the formats. Raises
    ``ReportError`` for unreadable or invalid inputs, naming the file.
    """
    unknown = [f for f in table_formats if f not in TABLE_FORMATS]
    if unknown:
        raise ReportError(f"unknown table format(s) {unknown}; choose from {list(TABLE_FORMATS)}")
    results = load_results(inputs)
    logs = load_train_logs(train_logs) if train_logs else []
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"{out_dir}: cannot create the output folder ({exc.strerror or exc})") from exc
    blocks = build_blocks(results, logs, out_dir, title or "Local-exit inference: SEM vs MEM", threshold)
    for b in blocks:
        if isinstance(b, TableBlock):
            for fmt in table_formats:
                write_atomic(
                    out_dir / "tables" / f"{b.name}.{_SUFFIX[fmt]}", tables.render(b.table, fmt) + "\n"
                )
            write_atomic(out_dir / "tables" / f"{b.name}.csv", export.table_csv(b.table))
    md = out_dir / "report.md"
    write_atomic(md, to_markdown(blocks, out_dir))
    write_atomic(out_dir / "report.html", to_html(blocks))
    logger.info("report written to %s", md)
    return md
