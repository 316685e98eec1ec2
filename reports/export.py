"""Data out: every run and every batch of a set of results files as one tidy CSV, and tables as CSV.

The tidy (long-format) CSV has one row per run and figure (scope ``run``) plus one row per batch and
per-batch figure (scope ``batch``), each carrying its point, link and run, so that one
``pandas.read_csv`` gives a frame to filter and group without knowing the results file's layout.

Per-batch lists of one run have different lengths: procedure 3-1 exists only for batches with a local
exit, 3-2/4/5 only for batches that sent samples to the cloud. Results files carry ``per_batch_ids``
(the batch index of every per-batch value); batch rows take their ``batch`` from it and are
``aligned``. Files written before it existed still give every batch row: lists as long as ``latency``
(one value per batch, in batch order) get their position as the batch index; shorter lists cannot be
lined up, and their rows have no ``batch`` and ``aligned`` false.

Written with the csv module: numbers at full precision (``repr``), missing values as empty cells.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, Literal

from contract.atomic import atomic_open
from contract.results import Resource, Run
from reports.errors import ReportError
from reports.loader import PROCEDURES, SUMMARY_FIELDS, ResultsFile, load_results
from reports.tables import Table

logger = logging.getLogger(__name__)

Value = float | int | None
Scope = Literal["run", "batch"]

#: Unit of each summary figure of a run (paper §4.1); accuracies are fractions in [0, 1], as stored.
SUMMARY_UNITS: Mapping[str, str] = {
    "samples": "samples",
    "local_exits": "samples",
    "cloud_exits": "samples",
    "edge_accuracy": "fraction",
    "cloud_accuracy": "fraction",
    "overall_accuracy": "fraction",
    "edge_latency_ms": "ms",
    "cloud_latency_ms": "ms",
    "overall_latency_ms": "ms",
}
#: Per-procedure statistics of a run (``stats.summarize``: mean and nearest-rank percentiles of batches).
PROCEDURE_STATS = ("mean", "p50", "p95", "p99")
RESOURCES: Mapping[str, str] = {"edge_cpu_percent": "%", "edge_rss_mib": "MiB"}
#: Figures only some results files carry; a row is written where the run has the field.
OPTIONAL_RUN_FIGURES: Mapping[str, str] = {"duration_s": "s", "calibration_ms": "ms"}
#: Names of the per-batch lists that are not a procedure's.
BATCH_METRICS: Mapping[str, str] = {"latency": "latency_ms", "edge": "edge_path_ms", "cloud": "cloud_path_ms"}
#: The edge–cloud link's parameters shown as columns (tc words, e.g. ``10mbit``, ``20ms``, ``1%``).
LINK_PARAMETERS = ("rate", "delay", "jitter", "loss")


@dataclass(frozen=True)
class Row:
    """One value of the tidy CSV; the field order is the column order."""

    file: str
    point: str
    model: str
    exit: int | None
    threshold: float
    link_rate: str | None
    link_delay: str | None
    link_jitter: str | None
    link_loss: str | None
    isolation: str | None
    run: int
    block: int | None
    scope: Scope
    batch: int | None
    aligned: bool | None
    metric: str
    value: Value
    unit: str

    def __post_init__(self) -> None:
        if self.scope not in ("run", "batch"):
            raise ValueError(f"scope must be 'run' or 'batch', got {self.scope!r}")
        if self.scope == "run" and (self.batch is not None or self.aligned is not None):
            raise ValueError("a run row has no batch index and no alignment")


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(Row))


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: to tell the user, and to warn when batch rows could not be lined up."""

    path: Path
    files: int
    runs: int
    rows: int
    batch_rows: int
    unaligned_batch_rows: int


def _point_fields(res: ResultsFile) -> dict[str, Any]:
    ec = res.results.config.links.get("edge_cloud")
    ec = ec if isinstance(ec, Mapping) else {}
    isolation = res.results.config.isolation
    return {
        "file": str(res.path),
        "point": res.label,
        "model": res.kind,
        "exit": res.exit,
        "threshold": res.threshold,
        **{f"link_{k}": None if ec.get(k) is None else str(ec[k]) for k in LINK_PARAMETERS},
        "isolation": None if isolation is None else str(isolation),
    }


def _run_figures(run: Run) -> Iterator[tuple[str, Value, str]]:
    """``(metric, value, unit)`` of every run-level figure, in a fixed order."""
    for name in SUMMARY_FIELDS:
        yield name, getattr(run.summary, name), SUMMARY_UNITS.get(name, "")  # (counts stay integers)
    for p in PROCEDURES:
        proc = run.procedures_ms.get(p)
        for stat in PROCEDURE_STATS:
            yield f"procedure_{p}_{stat}_ms", None if proc is None else getattr(proc, stat), "ms"
        yield f"procedure_{p}_batches", None if proc is None else proc.n, "batches"
    for name, unit in RESOURCES.items():
        resource: Resource = getattr(run, name)
        for which in ("mean", "max"):
            yield f"{name}_{which}", resource.get(which), unit
    for name, unit in OPTIONAL_RUN_FIGURES.items():
        value = getattr(run, name)
        if value is not None:
            yield name, value, unit


def batch_metric(key: str) -> str:
    """The tidy name of the per-batch list ``key``: ``latency_ms``, ``procedure_3-2_ms``, ..."""
    if key in BATCH_METRICS:
        return BATCH_METRICS[key]
    return f"procedure_{key}_ms" if key in PROCEDURES else f"{key}_ms"


def _batch_lists(run: Run) -> Iterator[tuple[str, tuple[float, ...], Sequence[int] | None]]:
    """``(key, values, batch ids or None)`` of each per-batch list of one run (the contract has checked
    that ids and values line up)."""
    batches = len(run.per_batch_ms.get("latency", ()))
    for key, values in run.per_batch_ms.items():
        found = None if run.per_batch_ids is None else run.per_batch_ids.get(key)
        if found is not None:
            yield key, values, found
        elif len(values) == batches:
            # One value per batch, in batch order: its position is its batch index.
            yield key, values, range(len(values))
        else:
            yield key, values, None


def tidy_rows(results: Iterable[ResultsFile]) -> Iterator[Row]:
    """Every run-level figure of every run, then each of its per-batch values, as tidy rows."""
    for res in results:
        point = _point_fields(res)
        for run in res.results.runs:
            common = {**point, "run": run.index, "block": run.block}
            for metric, value, unit in _run_figures(run):
                yield Row(
                    **common, scope="run", batch=None, aligned=None, metric=metric, value=value, unit=unit
                )
            for key, values, ids in _batch_lists(run):
                metric = batch_metric(key)
                for j, value in enumerate(values):
                    yield Row(
                        **common,
                        scope="batch",
                        batch=None if ids is None else ids[j],
                        aligned=ids is not None,
                        metric=metric,
                        value=value,
                        unit="ms",
                    )


def _cell(value: object) -> str | int | float:
    """How a cell is written: empty for a missing value, ``true``/``false`` (which pandas reads as
    booleans), numbers at full precision."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value
    return str(value)


def write_rows(fh: IO[str], rows: Iterable[Row]) -> tuple[int, int, int]:
    """Write the header and ``rows`` to ``fh``; returns ``(rows, batch rows, unaligned batch rows)``."""
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(COLUMNS)
    n = batch = unaligned = 0
    for row in rows:
        writer.writerow([_cell(getattr(row, c)) for c in COLUMNS])
        n += 1
        if row.scope == "batch":
            batch += 1
            unaligned += row.aligned is False
    return n, batch, unaligned


def export_csv(inputs: Sequence[Path | str], out: Path) -> ExportSummary:
    """Write the tidy CSV of every run in ``inputs`` (results files, or folders searched for ``*.json``)
    to ``out``, atomically; raises ``ReportError`` for bad input (naming the file) or an unwritable ``out``."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"{out} is a directory: give a file name, e.g. {out / 'results.csv'}")
    results = load_results(inputs, one_per_point=False)  # (every run of every file, repeats included)
    try:
        with atomic_open(out, "w") as fh:
            n, batch, unaligned = write_rows(fh, tidy_rows(results))
    except OSError as exc:
        raise ReportError(f"{out}: cannot write the CSV ({exc.strerror or exc})") from exc
    runs = sum(len(r.runs) for r in results)
    logger.info("%d rows of %d run(s) in %d file(s) written to %s", n, runs, len(results), out)
    return ExportSummary(out, len(results), runs, n, batch, unaligned)


def table_csv(table: Table) -> str:
    """A table as CSV: its headers, then its rows with raw numbers (full precision, missing cells empty);
    the title and note stay in the report."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.headers)
    writer.writerows([_cell(v) for v in row] for row in table.rows)
    return buf.getvalue()
