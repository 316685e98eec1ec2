"""Turn results files and training logs into tables, figures and a Markdown/HTML report.

``stats`` holds the statistics shared with ``harness/`` (per-batch descriptions of one run) and the
run-level ones every comparison rests on; ``build_report`` is the one entry point the reproduction
command calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reports import stats
from reports.claims import Claim, Comparison, claims_table, compare, evaluate_claims, sem_vs_mem_table
from reports.control import Control, ControlPair, control_table, scenario_control
from reports.errors import ReportError
from reports.loader import (
    ResultsFile,
    RunSeries,
    TrainLog,
    load_results,
    load_train_logs,
)
from reports.paper import fidelity_table
from reports.stats import Estimate
from reports.tables import TABLE_FORMATS, Scenario, Table, TableFormat, group_scenarios, render

__all__ = [
    "TABLE_FORMATS",
    "Claim",
    "Comparison",
    "Control",
    "ControlPair",
    "Estimate",
    "ReportError",
    "ResultsFile",
    "RunSeries",
    "Scenario",
    "Table",
    "TableFormat",
    "TrainLog",
    "build_report",
    "claims_table",
    "compare",
    "control_table",
    "evaluate_claims",
    "fidelity_table",
    "group_scenarios",
    "load_results",
    "load_train_logs",
    "render",
    "scenario_control",
    "sem_vs_mem_table",
    "stats",
]


def build_report(
    inputs: list[Path],
    out_dir: Path,
    *,
    train_logs: list[Path] | None = None,
    title: str | None = None,
    threshold: float | None = None,
    table_formats: Sequence[TableFormat] = TABLE_FORMATS,
) -> Path:
    """Build ``report.md`` + ``report.html`` with figures and tables under ``out_dir``; return the .md path.

    Imported lazily so that ``from reports import stats`` does not pay for matplotlib.
    """
    from reports.report import build_report as _build

    return _build(
        inputs, out_dir, train_logs=train_logs, title=title, threshold=threshold, table_formats=table_formats
    )
