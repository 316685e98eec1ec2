"""Every run's per-sample records, kept beside the results file as a compressed NumPy archive.

The test node records each measured sample: its id, label, prediction, where it exited, the edge's
normalized entropy and its latency. The results file keeps figures and per-batch times; the samples go
to ``<results>.samples.npz`` (``numpy.savez_compressed``, schema ``localexit-samples/1``), which the
results file names with its SHA-256, so that every per-sample figure can be recomputed from the run
(:meth:`SampleTable.summary` gives those of the summary) and a file that does not belong to it is
refused. Runs discarded as measured on a busy host are in it too, told apart by ``attempt`` and
``kept``.

In memory each run carries its records as ``Run.samples`` (the records file's ``samples``);
:func:`externalize`, called by ``harness.results.write_results``, moves them into the archive and names
it in ``Results.samples_file``. A study rewrites a point's results file after each run, when only the
new run's records are in memory: it passes the rows of the runs written before, read back from the
archive (:func:`earlier_rows`), and the archive is written again with every run so far.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from contract.atomic import atomic_open
from contract.errors import LocalExitError
from contract.names import SAMPLES_SCHEMA
from contract.results import Results, Run, SamplesFile, read_results
from reports import stats

from .errors import ResultsError

EXITS = ("edge", "cloud")


@dataclass(frozen=True, eq=False)
class SampleTable:
    """One row per measured sample of every run (and every discarded attempt), as NumPy columns.

    ``run``: the run's index; ``attempt``: 0 for a run's first try; ``kept``: False for a discarded
    attempt; ``exit``: ``"edge"`` or ``"cloud"``; ``entropy``/``cloud_entropy``: NaN where the node
    sent none; ``latency_ms``: the sample's batch sent → its prediction back.
    """

    run: np.ndarray
    attempt: np.ndarray
    kept: np.ndarray
    id: np.ndarray
    label: np.ndarray
    prediction: np.ndarray
    exit: np.ndarray
    entropy: np.ndarray
    cloud_entropy: np.ndarray
    latency_ms: np.ndarray

    def __post_init__(self) -> None:
        lengths = {f.name: len(getattr(self, f.name)) for f in fields(self)}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"sample columns have different lengths: {lengths}")
        if not np.isin(self.exit, EXITS).all():
            raise ValueError("sample exits must be 'edge' or 'cloud'")

    def __len__(self) -> int:
        return len(self.id)

    @classmethod
    def from_columns(
        cls, columns: Mapping[str, Sequence[Any]], *, run: int, attempt: int = 0, kept: bool = True
    ) -> SampleTable:
        """The rows of one run from the test node's ``samples`` object (``id``, ``label``, ``pred``,
        ``exit``, ``entropy``, ``latency_ms`` and, where present, ``cloud_entropy``)."""
        n = len(columns["id"])

        def floats(name: str) -> np.ndarray:
            values = columns.get(name)
            if values is None:
                return np.full(n, np.nan)
            return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)

        return cls(
            run=np.full(n, run, dtype=np.int32),
            attempt=np.full(n, attempt, dtype=np.int32),
            kept=np.full(n, kept, dtype=bool),
            id=np.asarray(columns["id"], dtype=np.int64),
            label=np.asarray(columns["label"], dtype=np.int64),
            prediction=np.asarray(columns["pred"], dtype=np.int64),
            exit=np.asarray(columns["exit"], dtype="<U5"),
            entropy=floats("entropy"),
            cloud_entropy=floats("cloud_entropy"),
            latency_ms=np.asarray(columns["latency_ms"], dtype=np.float64),
        )

    @classmethod
    def concat(cls, tables: Sequence[SampleTable]) -> SampleTable:
        return cls(**{f.name: np.concatenate([getattr(t, f.name) for t in tables]) for f in fields(cls)})

    def select(self, run: int, attempt: int | None = None) -> SampleTable:
        """The rows of run ``run``: its kept attempt, or attempt ``attempt``."""
        rows = self.run == run
        rows &= self.kept if attempt is None else self.attempt == attempt
        return self.where(rows)

    def where(self, rows: np.ndarray) -> SampleTable:
        """The rows where the boolean mask ``rows`` is true."""
        return SampleTable(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    def of_attempts(self, attempts: Collection[tuple[int, int, bool]]) -> SampleTable:
        """The rows of the attempts ``(run, attempt, kept)`` listed."""
        rows = np.zeros(len(self), dtype=bool)
        for run, attempt, kept in attempts:
            rows |= (self.run == run) & (self.attempt == attempt) & (self.kept == kept)
        return self.where(rows)

    def summary(self) -> dict[str, Any]:
        """The per-sample figures of a run's summary (paper §4.1), computed as ``harness.results`` does:
        ``samples``, ``local_exits``, ``cloud_exits``, the three accuracies and the edge and cloud
        latencies. (The overall latency is the run's wall time per sample, not a per-sample figure.)"""
        correct = self.prediction == self.label
        edge = self.exit == "edge"
        cloud = ~edge

        def accuracy(rows: np.ndarray) -> float | None:
            n = int(rows.sum())
            return int((correct & rows).sum()) / n if n else None

        def latency(rows: np.ndarray) -> float | None:
            return stats.mean(self.latency_ms[rows].tolist()) if rows.any() else None

        return {
            "samples": len(self),
            "local_exits": int(edge.sum()),
            "cloud_exits": int(cloud.sum()),
            "edge_accuracy": accuracy(edge),
            "cloud_accuracy": accuracy(cloud),
            "overall_accuracy": accuracy(np.ones(len(self), dtype=bool)),
            "edge_latency_ms": latency(edge),
            "cloud_latency_ms": latency(cloud),
        }

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        np.savez_compressed(buffer, schema=np.array(SAMPLES_SCHEMA), **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "samples file") -> SampleTable:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                schema = str(archive["schema"]) if "schema" in archive.files else None
                if schema != SAMPLES_SCHEMA:
                    raise ResultsError(f"{source}: schema is {schema!r}, expected {SAMPLES_SCHEMA!r}")
                return cls(**{f.name: archive[f.name] for f in fields(cls)})
        except (OSError, ValueError, KeyError) as exc:
            raise ResultsError(f"{source} is not a usable {SAMPLES_SCHEMA} archive: {exc}") from exc


def samples_path(results_path: Path) -> Path:
    """``results/x.json`` → ``results/x.samples.npz``."""
    path = Path(results_path)
    stem = path.name[: -len(".json")] if path.name.endswith(".json") else path.name
    return path.with_name(f"{stem}.samples.npz")


def _attempts(runs: Sequence[Run], discarded: Sequence[Run]) -> list[tuple[Run, bool]]:
    return [(run, True) for run in runs] + [(run, False) for run in discarded]


def table_of(results: Results) -> SampleTable | None:
    """The in-memory per-sample records of every run and discarded attempt, as one table (None: none)."""
    tables = [
        SampleTable.from_columns(run.samples.to_json(), run=run.index, attempt=run.attempt, kept=kept)
        for run, kept in _attempts(results.runs, results.discarded_runs)
        if run.samples is not None
    ]
    return SampleTable.concat(tables) if tables else None


def attempts_of(runs: Sequence[Run], discarded: Sequence[Run] = ()) -> set[tuple[int, int, bool]]:
    """``(run, attempt, kept)`` of every run and discarded attempt, as the archive's columns tell them
    apart."""
    return {(run.index, run.attempt, kept) for run, kept in _attempts(runs, discarded)}


def earlier_rows(path: Path, runs: Sequence[Run], discarded: Sequence[Run] = ()) -> SampleTable | None:
    """The archive rows of ``runs`` and the ``discarded`` attempts (what the results file at ``path``
    holds and is to hold again), read back from the archive that file names, for :func:`externalize` to
    write again beside the new ones; None when there is no run. A missing or foreign archive raises
    ``ResultsError``."""
    attempts = attempts_of(runs, discarded)
    if not attempts:
        return None
    return load_samples(path).of_attempts(attempts)


def externalize(path: Path, results: Results, earlier: SampleTable | None = None) -> Results:
    """Write the runs' per-sample records to the archive beside ``path`` (atomically) and return the
    results to write at ``path``: without the records, naming the archive and its SHA-256.

    ``earlier``: rows of runs whose records are no longer in memory (:func:`earlier_rows`), written
    first. The archive is written before the results file, so a results file never names one that is
    not there; a results file whose write then fails leaves an archive that no results file names.
    Results without records (read back from a file) and no ``earlier`` rows are returned as they are.
    """
    tables = [t for t in (earlier, table_of(results)) if t is not None]
    if not tables:
        return results
    table = SampleTable.concat(tables)
    data = table.to_bytes()
    archive = samples_path(path)
    with atomic_open(archive, "wb") as fh:
        fh.write(data)
    return replace(
        results,
        runs=tuple(without_samples(run) for run in results.runs),
        discarded_runs=tuple(without_samples(run) for run in results.discarded_runs),
        samples_file=SamplesFile(
            path=archive.name, sha256=hashlib.sha256(data).hexdigest(), schema=SAMPLES_SCHEMA, rows=len(table)
        ),
    )


def without_samples(run: Run) -> Run:
    """``run`` without its per-sample records (once they are in the archive)."""
    return run if run.samples is None else replace(run, samples=None)


def load_samples(results_path: Path, results: Results | None = None) -> SampleTable:
    """The per-sample table of the results file at ``results_path`` (``results``: its content, if read
    already); ``ResultsError`` when it names none, or the archive is missing or not the one it names."""
    path = Path(results_path)
    if results is None:
        try:
            results = read_results(path)
        except (OSError, LocalExitError) as exc:
            raise ResultsError(f"cannot read results file {path}: {exc}") from exc
    ref = results.samples_file
    if ref is None:
        raise ResultsError(f"{path} names no per-sample file (written before the harness kept them?)")
    archive = path.parent / ref.path
    try:
        data = archive.read_bytes()
    except OSError as exc:
        raise ResultsError(
            f"the per-sample file of {path}, {archive}, cannot be read: {exc.strerror}"
        ) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != ref.sha256:
        raise ResultsError(
            f"{archive} is not the per-sample file {path} was written with (SHA-256 {digest[:12]}…, the "
            f"results file names {ref.sha256[:12]}…)"
        )
    return SampleTable.from_bytes(data, str(archive))
