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
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import IO, Any, Literal, TypeGuard

from contract.atomic import atomic_open
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


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _value(value: object) -> Value:
    """A stored figure as a cell: numbers as they are, anything else (null, a missing field) empty."""
    return value if _number(value) else None


def _point_fields(res: ResultsFile) -> dict[str, Any]:
    links = res.config.get("links")
    ec = links.get("edge_cloud") if isinstance(links, Mapping) else None
    ec = ec if isinstance(ec, Mapping) else {}
    isolation = res.config.get("isolation")
    return {
        "file": str(res.path),
        "point": res.label,
        "model": res.kind,
        "exit": res.exit,
        "threshold": res.threshold,
        **{f"link_{k}": None if ec.get(k) is None else str(ec[k]) for k in LINK_PARAMETERS},
        "isolation": None if isolation is None else str(isolation),
    }


def _run_figures(run: Mapping[str, Any]) -> Iterator[tuple[str, Value, str]]:
    """``(metric, value, unit)`` of every run-level figure, in a fixed order."""
    summary = run["summary"]
    for name in SUMMARY_FIELDS:
        yield name, _value(summary.get(name)), SUMMARY_UNITS.get(name, "")
    procedures = run["procedures_ms"]
    for p in PROCEDURES:
        proc = procedures.get(p)
        proc = proc if isinstance(proc, Mapping) else {}
        for stat in PROCEDURE_STATS:
            yield f"procedure_{p}_{stat}_ms", _value(proc.get(stat)), "ms"
        yield f"procedure_{p}_batches", _value(proc.get("n")), "batches"
    for field, unit in RESOURCES.items():
        for which in ("mean", "max"):
            yield f"{field}_{which}", _value(run[field].get(which)), unit
    for field, unit in OPTIONAL_RUN_FIGURES.items():
        if field in run:
            yield field, _value(run[field]), unit


def batch_metric(key: str) -> str:
    """The tidy name of the per-batch list ``key``: ``latency_ms``, ``procedure_3-2_ms``, ..."""
    if key in BATCH_METRICS:
        return BATCH_METRICS[key]
    return f"procedure_{key}_ms" if key in PROCEDURES else f"{key}_ms"


def _batch_lists(
    res: ResultsFile, i: int, run: Mapping[str, Any]
) -> Iterator[tuple[str, list[float], list[int] | None]]:
    """``(key, values, batch ids or None)`` of each per-batch list of one run, checked."""
    where = f"{res.path}: runs[{i}]"
    per_batch = run.get("per_batch_ms")
    if per_batch is None:
        return
    if not isinstance(per_batch, Mapping):
        raise ReportError(f"{where}.per_batch_ms must be an object of lists")
    ids = run.get("per_batch_ids")
    if ids is not None and not isinstance(ids, Mapping):
        raise ReportError(f"{where}.per_batch_ids must be an object of lists")
    latency = per_batch.get("latency")
    batches = len(latency) if isinstance(latency, list) else None
    for key, values in per_batch.items():
        if not isinstance(values, list) or not all(_number(v) for v in values):
            raise ReportError(f"{where}.per_batch_ms[{key!r}] must be a list of finite numbers")
        found = ids.get(key) if ids is not None else None
        if found is not None:
            if not isinstance(found, list) or not all(
                isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in found
            ):
                raise ReportError(
                    f"{where}.per_batch_ids[{key!r}] must be a list of batch indices (integers ≥ 0)"
                )
            if len(found) != len(values):
                raise ReportError(
                    f"{where}.per_batch_ids[{key!r}] has {len(found)} batch indices for "
                    f"{len(values)} values in per_batch_ms[{key!r}]"
                )
            yield str(key), [float(v) for v in values], list(found)
        elif len(values) == batches:
            # One value per batch, in batch order: its position is its batch index.
            yield str(key), [float(v) for v in values], list(range(len(values)))
        else:
            yield str(key), [float(v) for v in values], None


def tidy_rows(results: Iterable[ResultsFile]) -> Iterator[Row]:
    """Every run-level figure of every run, then each of its per-batch values, as tidy rows."""
    for res in results:
        point = _point_fields(res)
        for i, run in enumerate(res.runs):
            index = run.get("index")
            block = run.get("block")
            common = {
                **point,
                "run": index if isinstance(index, int) and not isinstance(index, bool) else i,
                "block": block if isinstance(block, int) and not isinstance(block, bool) else None,
            }
            for metric, value, unit in _run_figures(run):
                yield Row(
                    **common, scope="run", batch=None, aligned=None, metric=metric, value=value, unit=unit
                )
            for key, values, ids in _batch_lists(res, i, run):
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
    results = load_results(inputs)
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
