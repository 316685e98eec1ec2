"""The results file, built from the nodes' records, validated and written atomically.

Data flows one way: the test node's records file (``contract.records``) → one typed ``Run`` per repeat →
the ``Results`` of a point, with the configuration, the environment and the aggregate across runs. The contract
(``contract.results``) defines the file -- its types, versions and the one validator; this module
builds its documents from measurements. The statistics (means, nearest-rank percentiles, median/MAD,
stability) come from ``reports.stats``; this module only decides which numbers go where.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from contract.atomic import write_json_atomic
from contract.errors import SchemaError
from contract.jsonfile import read_json
from contract.names import CLOUD_PATH, EDGE_PATH, PROCEDURES
from contract.records import Records
from contract.results import (
    SUMMARY_FIELDS,
    Aggregate,
    Distribution,
    Resource,
    Results,
    ResultsConfig,
    Run,
    Summary,
)
from reports import stats

from .errors import ConfigError, ResultsError
from .samples import SampleTable, externalize

#: Free space an output location needs before a run starts. A results file keeps every batch's timings:
#: a few hundred KiB per repeat for the whole Fashion-MNIST test set, so a few MiB leave room for it and
#: its temporary copy (the atomic write), and refuse a disk that is full.
MIN_FREE_BYTES = 8 * 2**20
#: Trees of the kernel's own files: writing a results file there fails (or does something else entirely).
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))

T = TypeVar("T")


def read_records(records: Records | Mapping[str, Any]) -> Records:
    """The test node's records, validated by the contract when given as a decoded JSON document;
    ``ResultsError`` saying what is wrong with them otherwise."""
    if isinstance(records, Records):
        return records
    return _read(Records.from_json, records, "the test node's records file is unusable")


@dataclass(frozen=True)
class RunFigures:
    """What one run's records say, before the harness adds what it measured itself.

    ``per_batch_ms`` keeps the raw per-batch values the regression check compares: ``latency`` (the
    batch's end-to-end time), ``edge`` and ``cloud`` (the sums of the procedures on each path, for
    batches that had such samples) and one list per procedure. ``per_batch_ids`` has the same keys and
    lengths and holds the batch index (the records' ``index``) of each of those values: lists of
    procedures that only some batches have (3-1 without a local exit, 3-2/4/5 without a cloud exit) are
    shorter, and only the ids line them up.
    """

    summary: Summary
    procedures_ms: dict[str, Distribution | None]
    per_batch_ms: dict[str, tuple[float, ...]]
    per_batch_ids: dict[str, tuple[int, ...]]


def _distribution(values: Sequence[float]) -> Distribution:
    s = stats.summarize(values)
    return Distribution(
        mean=float(s["mean"]), p50=float(s["p50"]), p95=float(s["p95"]), p99=float(s["p99"]), n=int(s["n"])
    )


def summarize_records(records: Records | Mapping[str, Any]) -> RunFigures:
    """The paper's §4.1 figures of one run from the test node's records."""
    rec = read_records(records)
    s = rec.samples
    n = len(s)
    edge_idx = [i for i in range(n) if s.exit[i] == "edge"]
    cloud_idx = [i for i in range(n) if s.exit[i] == "cloud"]

    def accuracy(idx: Sequence[int]) -> float | None:
        return sum(1 for i in idx if s.pred[i] == s.label[i]) / len(idx) if idx else None

    def mean_latency(idx: Sequence[int]) -> float | None:
        return stats.mean([s.latency_ms[i] for i in idx]) if idx else None

    overall_accuracy = accuracy(range(n))
    assert overall_accuracy is not None  # (the contract's records hold at least one sample)
    summary = Summary(
        samples=n,
        local_exits=len(edge_idx),
        cloud_exits=len(cloud_idx),
        edge_accuracy=accuracy(edge_idx),
        cloud_accuracy=accuracy(cloud_idx),
        overall_accuracy=overall_accuracy,
        edge_latency_ms=mean_latency(edge_idx),
        cloud_latency_ms=mean_latency(cloud_idx),
        overall_latency_ms=rec.overall.overall_latency_ms,
    )

    per_batch: dict[str, list[float]] = {"latency": [], "edge": [], "cloud": []}
    per_batch.update({p: [] for p in PROCEDURES})
    batch_ids: dict[str, list[int]] = {key: [] for key in per_batch}
    for batch in rec.batches:
        procs = batch.procedures_ms
        found = {"latency": batch.latency_ms, **procs}
        if all(p in procs for p in EDGE_PATH):
            found["edge"] = sum(procs[p] for p in EDGE_PATH)
        if all(p in procs for p in CLOUD_PATH):
            found["cloud"] = sum(procs[p] for p in CLOUD_PATH)
        for key, value in found.items():
            per_batch[key].append(value)
            batch_ids[key].append(batch.index)
    procedures = {p: _distribution(per_batch[p]) if per_batch[p] else None for p in PROCEDURES}
    return RunFigures(
        summary,
        procedures,
        {k: tuple(v) for k, v in per_batch.items()},
        {k: tuple(v) for k, v in batch_ids.items()},
    )


def _resource(values: Sequence[float]) -> Resource:
    if not values:
        return Resource(mean=None, max=None, n=0)
    return Resource(mean=stats.mean(values), max=float(max(values)), n=len(values))


def build_run(
    index: int,
    records: Records | Mapping[str, Any],
    *,
    cpu_percent: Sequence[float],
    rss_mib: Sequence[float],
    duration_s: float,
    calibration_ms: float | None,
    host_other_percent: Sequence[float] | None = None,
    in_window: bool | None = None,
    block: int | None = None,
    position: int | None = None,
) -> Run:
    """One repeat as the contract types it (``contract.results.Run``), holding the test node's
    per-sample records until the results are written (``harness.samples``).

    ``cpu_percent``/``rss_mib``: the edge's samples; ``host_other_percent``: the CPU other programs used
    meanwhile (None: not sampled); ``in_window``: whether those samples are of the measured phase alone
    (None: not said). A study's run also carries its ``block`` (the reports pair points' runs by it) and
    its ``position`` in that block's random order."""
    rec = read_records(records)
    figures = summarize_records(rec)
    clock_check = rec.extra.get("clock_check")
    return Run(
        index=index,
        summary=figures.summary,
        procedures_ms=figures.procedures_ms,
        edge_cpu_percent=_resource(cpu_percent),
        edge_rss_mib=_resource(rss_mib),
        per_batch_ms=figures.per_batch_ms,
        per_batch_ids=figures.per_batch_ids,
        duration_s=round(duration_s, 3),
        calibration_ms=calibration_ms,
        warmup_batches=rec.warmup_batches,
        edge_resources_window=None if in_window is None else "measured-phase" if in_window else "whole-run",
        host_other_cpu_percent=None if host_other_percent is None else _resource(host_other_percent),
        clock=rec.clock,
        clock_check=clock_check if isinstance(clock_check, Mapping) else None,
        nodes=rec.nodes,
        block=block,
        position=position,
        samples=rec.samples,
    )


def _figures(run: Run) -> dict[str, float | None]:
    """The numbers of one run that the aggregate summarises across runs."""
    figures: dict[str, float | None] = {k: run.summary.get(k) for k in SUMMARY_FIELDS}
    figures["edge_cpu_percent_mean"] = run.edge_cpu_percent.mean
    figures["edge_rss_mib_max"] = run.edge_rss_mib.max
    for p in PROCEDURES:
        proc = run.procedures_ms.get(p)
        figures[f"procedure_{p}_mean_ms"] = proc.mean if proc else None
    figures["calibration_ms"] = run.calibration_ms
    return figures


def aggregate_runs(runs: Sequence[Run]) -> dict[str, Aggregate | None]:
    """Median, MAD, extremes and the pyperf-style stability verdict of each figure across runs.

    A figure that is ``null`` in some runs (no sample exited there) is summarised over the others and
    its ``n`` says how many; one that is ``null`` in every run stays ``null``. A single run has no
    spread to judge, so its figures are never flagged unstable.
    """
    if not runs:
        raise ValueError("aggregate_runs() needs at least one run")
    per_run = [_figures(r) for r in runs]
    out: dict[str, Aggregate | None] = {}
    for key in per_run[0]:
        values = [float(v) for f in per_run if (v := f.get(key)) is not None]
        if not values:
            out[key] = None
            continue
        agg = stats.aggregate(values)
        judged = len(runs) > 1  # (one run has no spread to judge)
        out[key] = Aggregate(
            median=float(agg["median"]),
            mad=float(agg["mad"]),
            min=float(agg["min"]),
            max=float(agg["max"]),
            n=int(agg["n"]),
            unstable=judged and bool(agg["unstable"]),
            unstable_reason=str(agg["unstable_reason"]) if judged else "",
        )
    return out


def unstable_figures(results: Results) -> list[tuple[str, str]]:
    """``(figure, reason)`` for every aggregate figure flagged unstable."""
    return [(key, agg.unstable_reason) for key, agg in results.aggregate.items() if agg and agg.unstable]


def build_results(
    config: ResultsConfig | Mapping[str, Any],
    environment: Mapping[str, Any],
    runs: Sequence[Run],
    discarded: Sequence[Run] = (),
) -> Results:
    """The results of a point (``contract.results.Results``): the aggregate of ``runs`` beside them;
    ``ResultsError`` if they would not validate. ``discarded``: attempts measured on a busy host and run
    again (``harness.busy``), kept apart from ``runs``, which alone the aggregate and every reader of
    figures use. ``config`` given as a mapping is read by the contract, with the fields a caller need
    not know of (the cloud's CPU set, the congestion control, the busy limit, a link schedule) null."""
    if not isinstance(config, ResultsConfig):
        defaults = {
            name: None for name in ("cloud_cpuset", "tcp_congestion_control", "max_other_cpu_percent")
        }
        config = _read(ResultsConfig.from_json, {**defaults, "link_schedule": None, **config}, "the config")
    try:
        return Results(config, dict(environment), tuple(runs), aggregate_runs(runs), tuple(discarded))
    except ValueError as exc:
        raise ResultsError(f"the results would not validate: {exc}") from exc


def as_results(data: object, source: str = "results") -> Results:
    """``data`` as the contract's type: a decoded document is read through the contract (its one
    validator; any version it reads), ``ResultsError`` naming ``source`` if it is not a usable one."""
    if isinstance(data, Results):
        return data
    return _read(Results.from_json, data, f"{source} is not a usable results file")


def _read(parse: Callable[[object], T], data: object, failure: str) -> T:
    try:
        return parse(data)
    except SchemaError as exc:
        raise ResultsError(f"{failure}: {exc}") from exc


def validate_results(data: object, source: str = "results") -> None:
    """Raise ``ResultsError`` saying what is wrong unless ``data`` is a results document the contract
    reads (``contract.results``)."""
    as_results(data, source)


def load_results(path: Path) -> Results:
    """Read and validate a results file of any version the contract reads (an older one upgraded, see
    ``contract.results``); every failure is a ``ResultsError`` naming the file."""
    try:
        data = read_json(path)
    except SchemaError as exc:
        raise ResultsError(f"results file {exc}") from exc
    return as_results(data, str(path))


def write_results(path: Path, results: Results, *, earlier_samples: SampleTable | None = None) -> None:
    """Write atomically: the runs' per-sample records first, beside it (``harness.samples``;
    ``earlier_samples``: rows of runs whose records are no longer in memory), then the results file,
    which names them."""
    try:
        write_json_atomic(path, externalize(path, results, earlier_samples).to_json())
    except OSError as exc:
        raise ResultsError(f"cannot write results file {path}: {exc.strerror or exc}") from exc


def check_output_path(path: Path, option: str = "--out") -> None:
    """Refuse (``ConfigError``), before anything runs, a results file that could not be written.

    Checked: not inside ``/proc``, ``/sys`` or ``/dev``; not an existing directory; the nearest existing
    folder on the way is a folder we can create files in (tried, not guessed from permission bits, which
    root ignores and a read-only mount overrides); and ``MIN_FREE_BYTES`` are free there. Folders that do
    not exist yet are created by the write.
    """
    target = Path(os.path.abspath(path))
    if target.is_dir():
        raise ConfigError(f"{option} {path} is a directory: give a file name, e.g. {path}/results.json")
    _check_location(target.parent, f"{option} {path}")


def check_output_dir(path: Path, option: str = "--out-dir") -> None:
    """As :func:`check_output_path`, for a folder that will hold results files (a sweep's)."""
    target = Path(os.path.abspath(path))
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{option} {path} is a file, not a directory")
    _check_location(target, f"{option} {path}")


def _check_location(folder: Path, shown: str) -> None:
    resolved = folder.resolve()
    for tree in SYSTEM_TREES:
        if resolved == tree or tree in resolved.parents:
            raise ConfigError(f"{shown} is under {tree}, the kernel's own files: choose a path elsewhere")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{shown} cannot be written: {existing} is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".localexit-probe-")
    except OSError as exc:
        raise ConfigError(
            f"{shown} cannot be written ({exc.strerror or exc} in {existing}): choose a writable location"
        ) from exc
    os.close(fd)
    os.unlink(probe)
    free = shutil.disk_usage(existing).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"{shown}: only {free / 2**20:.1f} MiB free in {existing}, and a results file needs up to "
            f"{MIN_FREE_BYTES // 2**20} MiB: free some space or choose another location"
        )


def write_results_fallback(failed: Path, results: Results) -> Path | None:
    """Save results that could not be written to ``failed`` somewhere else; returns where, or None.

    Tried in order: the current directory, then the temporary directory, under ``failed``'s file name
    (``results.json`` if it has none that ends in ``.json``) when no file of that name is there yet, and
    last under a fresh unique name in the temporary directory. A run's results are never lost to a
    typo in ``--out`` or a disk that filled up during the run.
    """
    name = failed.name if failed.suffix == ".json" else "results.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        candidate = folder / name
        if candidate.exists() or candidate.resolve() == Path(os.path.abspath(failed)).resolve():
            continue
        try:
            write_json_atomic(candidate, externalize(candidate, results).to_json())
        except OSError:
            continue
        return candidate
    try:
        fd, unique = tempfile.mkstemp(prefix="localexit-results-", suffix=".json")
        os.close(fd)
        write_json_atomic(Path(unique), externalize(Path(unique), results).to_json())
    except OSError:
        return None
    return Path(unique)
