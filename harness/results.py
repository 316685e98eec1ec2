"""The results file (schema ``localexit/1``): built from the nodes' records, validated, written atomically.

Data flows one way: the test node's records file (``localexit-records/1``) → one ``run`` object per
repeat → the results file with the configuration, the environment and the aggregate across runs. The
statistics themselves (means, nearest-rank percentiles, median/MAD, stability) come from
``reports.stats``; this module only decides which numbers go where.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from models import atomic
from reports import stats

from .errors import ConfigError, ResultsError

SCHEMA = "localexit/1"
RECORDS_SCHEMA = "localexit-records/1"
PROCEDURES = ("1", "2", "3-1", "3-2", "4", "5")
#: A locally exited sample goes 1 → 2 → 3-1; a cloud-exited one 1 → 2 → 3-2 → 4 → 5 (paper Fig. 4).
EDGE_PATH = ("1", "2", "3-1")
CLOUD_PATH = ("1", "2", "3-2", "4", "5")
SUMMARY_KEYS = (
    "samples",
    "local_exits",
    "cloud_exits",
    "edge_accuracy",
    "cloud_accuracy",
    "overall_accuracy",
    "edge_latency_ms",
    "cloud_latency_ms",
    "overall_latency_ms",
)
CONFIG_KEYS = ("model", "exit", "threshold", "batch_size", "dataset", "samples", "links", "link_backend")
RUN_KEYS = ("index", "summary", "procedures_ms", "edge_cpu_percent", "edge_rss_mib", "per_batch_ms")
#: Free space an output location needs before a run starts. A results file keeps every batch's timings:
#: a few hundred KiB per repeat for the whole Fashion-MNIST test set, so a few MiB leave room for it and
#: its temporary copy (the atomic write), and refuse a disk that is full.
MIN_FREE_BYTES = 8 * 2**20
#: Trees of the kernel's own files: writing a results file there fails (or does something else entirely).
SYSTEM_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def _records_error(why: str) -> ResultsError:
    return ResultsError(f"the test node's records file is unusable: {why}")


def summarize_records(records: Mapping[str, Any]) -> dict[str, Any]:
    """The paper's §4.1 figures of one run from a ``localexit-records/1`` object.

    Returns ``{"summary", "procedures_ms", "per_batch_ms"}``. ``per_batch_ms`` keeps the raw per-batch
    values the regression check compares: ``latency`` (the batch's end-to-end time), ``edge`` and
    ``cloud`` (the sums of the procedures on each path, for batches that had such samples) and one list
    per procedure.
    """
    if records.get("schema") != RECORDS_SCHEMA:
        raise _records_error(f"schema is {records.get('schema')!r}, expected {RECORDS_SCHEMA!r}")
    try:
        samples = records["samples"]
        labels = list(samples["label"])
        preds = list(samples["pred"])
        exits = list(samples["exit"])
        latency = [float(v) for v in samples["latency_ms"]]
        batches = list(records["batches"])
        overall = records["overall"]
    except (KeyError, TypeError, ValueError) as exc:
        raise _records_error(f"missing or malformed field {exc}") from exc
    n = len(labels)
    if not n or not (len(preds) == len(exits) == len(latency) == n):
        raise _records_error(f"sample columns are empty or of different lengths ({n} labels)")
    if any(e not in ("edge", "cloud") for e in exits):
        raise _records_error("sample exits must be 'edge' or 'cloud'")

    edge_idx = [i for i in range(n) if exits[i] == "edge"]
    cloud_idx = [i for i in range(n) if exits[i] == "cloud"]

    def accuracy(idx: Sequence[int]) -> float | None:
        return sum(1 for i in idx if preds[i] == labels[i]) / len(idx) if idx else None

    def mean_latency(idx: Sequence[int]) -> float | None:
        return stats.mean([latency[i] for i in idx]) if idx else None

    try:
        overall_latency = float(overall["overall_latency_ms"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _records_error("overall.overall_latency_ms is missing") from exc
    if not math.isfinite(overall_latency) or overall_latency < 0:
        raise _records_error(f"overall latency {overall_latency} is not a duration")

    summary: dict[str, Any] = {
        "samples": n,
        "local_exits": len(edge_idx),
        "cloud_exits": len(cloud_idx),
        "edge_accuracy": accuracy(edge_idx),
        "cloud_accuracy": accuracy(cloud_idx),
        "overall_accuracy": accuracy(range(n)),
        "edge_latency_ms": mean_latency(edge_idx),
        "cloud_latency_ms": mean_latency(cloud_idx),
        "overall_latency_ms": overall_latency,
    }

    per_batch: dict[str, list[float]] = {"latency": [], "edge": [], "cloud": []}
    per_batch.update({p: [] for p in PROCEDURES})
    for batch in batches:
        try:
            procs = {str(k): float(v) for k, v in batch["procedures_ms"].items()}
            per_batch["latency"].append(float(batch["latency_ms"]))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _records_error(f"batch {batch!r:.80} is malformed") from exc
        for p in PROCEDURES:
            if p in procs:
                per_batch[p].append(procs[p])
        if all(p in procs for p in EDGE_PATH):
            per_batch["edge"].append(sum(procs[p] for p in EDGE_PATH))
        if all(p in procs for p in CLOUD_PATH):
            per_batch["cloud"].append(sum(procs[p] for p in CLOUD_PATH))
    if not per_batch["latency"]:
        raise _records_error("it holds no measured batch")
    procedures = {p: (stats.summarize(per_batch[p]) if per_batch[p] else None) for p in PROCEDURES}
    return {"summary": summary, "procedures_ms": procedures, "per_batch_ms": per_batch}


def resource_summary(values: Sequence[float]) -> dict[str, float | int | None]:
    """``{"mean", "max", "n"}`` of the edge's sampled CPU % or RSS (None when nothing was sampled)."""
    if not values:
        return {"mean": None, "max": None, "n": 0}
    return {"mean": stats.mean(values), "max": float(max(values)), "n": len(values)}


def build_run(
    index: int,
    records: Mapping[str, Any],
    *,
    cpu_percent: Sequence[float],
    rss_mib: Sequence[float],
    duration_s: float,
    calibration_ms: float | None,
) -> dict[str, Any]:
    """One ``runs[]`` entry of the results file."""
    run: dict[str, Any] = {"index": index, "duration_s": round(duration_s, 3)}
    run.update(summarize_records(records))
    run["edge_cpu_percent"] = resource_summary(cpu_percent)
    run["edge_rss_mib"] = resource_summary(rss_mib)
    run["calibration_ms"] = calibration_ms
    run["warmup_batches"] = int(records.get("warmup", {}).get("batches", 0))
    run["clock"] = records.get("clock", {})
    run["nodes"] = records.get("nodes", {})
    return run


def _figures(run: Mapping[str, Any]) -> dict[str, float | None]:
    """The numbers of one run that the aggregate summarises across runs."""
    figures: dict[str, float | None] = {k: run["summary"].get(k) for k in SUMMARY_KEYS}
    figures["edge_cpu_percent_mean"] = run["edge_cpu_percent"].get("mean")
    figures["edge_rss_mib_max"] = run["edge_rss_mib"].get("max")
    for p in PROCEDURES:
        proc = run["procedures_ms"].get(p)
        figures[f"procedure_{p}_mean_ms"] = proc["mean"] if proc else None
    figures["calibration_ms"] = run.get("calibration_ms")
    return figures


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Median, MAD, extremes and the pyperf-style stability verdict of each figure across runs.

    A figure that is ``null`` in some runs (no sample exited there) is summarised over the others and
    its ``n`` says how many; one that is ``null`` in every run stays ``null``. A single run has no
    spread to judge, so its figures are never flagged unstable.
    """
    if not runs:
        raise ValueError("aggregate_runs() needs at least one run")
    per_run = [_figures(r) for r in runs]
    out: dict[str, Any] = {}
    for key in per_run[0]:
        values = [float(v) for f in per_run if (v := f.get(key)) is not None]
        if not values:
            out[key] = None
            continue
        agg = stats.aggregate(values)
        if len(runs) == 1:
            agg["unstable"], agg["unstable_reason"] = False, ""
        out[key] = agg
    return out


def unstable_figures(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(figure, reason)`` for every aggregate figure flagged unstable."""
    return [
        (key, str(agg.get("unstable_reason", "")))
        for key, agg in results.get("aggregate", {}).items()
        if isinstance(agg, dict) and agg.get("unstable")
    ]


def build_results(
    config: Mapping[str, Any], environment: Mapping[str, Any], runs: Sequence[Any]
) -> dict[str, Any]:
    """The complete results object; raises ``ResultsError`` if it would not validate."""
    results = {
        "schema": SCHEMA,
        "config": dict(config),
        "environment": dict(environment),
        "runs": list(runs),
        "aggregate": aggregate_runs(runs),
    }
    validate_results(results)
    return results


def validate_results(data: Any, source: str = "results") -> None:
    """Raise ``ResultsError`` saying what is wrong unless ``data`` follows ``localexit/1``."""

    def bad(why: str) -> ResultsError:
        return ResultsError(f"{source} is not a usable {SCHEMA} results file: {why}")

    if not isinstance(data, dict):
        raise bad("the top level is not a JSON object")
    if data.get("schema") != SCHEMA:
        raise bad(f"schema is {data.get('schema')!r}")
    for key in ("config", "environment", "aggregate"):
        if not isinstance(data.get(key), dict):
            raise bad(f"{key!r} is missing or not an object")
    missing = [k for k in CONFIG_KEYS if k not in data["config"]]
    if missing:
        raise bad(f"config lacks {', '.join(missing)}")
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise bad("'runs' is missing or empty")
    for i, run in enumerate(runs):
        if not isinstance(run, dict):
            raise bad(f"runs[{i}] is not an object")
        lacking = [k for k in RUN_KEYS if k not in run]
        if lacking:
            raise bad(f"runs[{i}] lacks {', '.join(lacking)}")
        summary = run["summary"]
        if not isinstance(summary, dict) or any(k not in summary for k in SUMMARY_KEYS):
            raise bad(f"runs[{i}].summary lacks some of {', '.join(SUMMARY_KEYS)}")
        per_batch = run["per_batch_ms"]
        if not isinstance(per_batch, dict) or not isinstance(per_batch.get("latency"), list):
            raise bad(f"runs[{i}].per_batch_ms.latency is missing")
        for key, values in per_batch.items():
            if not isinstance(values, list) or not all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in values
            ):
                raise bad(f"runs[{i}].per_batch_ms.{key} is not a list of finite numbers")


def load_results(path: Path) -> dict[str, Any]:
    """Read and validate a results file; every failure is a ``ResultsError`` naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ResultsError(f"results file {path} does not exist") from exc
    except OSError as exc:
        raise ResultsError(f"cannot read results file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{path} is not JSON ({exc.msg} at line {exc.lineno})") from exc
    validate_results(data, source=str(path))
    return data


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as strict JSON (no NaN) to ``path`` atomically (see ``models.atomic``)."""
    atomic.write_json_atomic(path, data, allow_nan=False)


def write_results(path: Path, results: Mapping[str, Any]) -> None:
    """Validate, then write atomically."""
    validate_results(results)
    try:
        write_json_atomic(path, results)
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


def write_results_fallback(failed: Path, results: Mapping[str, Any]) -> Path | None:
    """Save results that could not be written to ``failed`` somewhere else; returns where, or None.

    Tried in order: the current directory, then the temporary directory, under ``failed``'s file name
    (``results.json`` if it has none that ends in ``.json``) when no file of that name is there yet, and
    last under a fresh unique name in the temporary directory. A run's results are never lost to a
    typo in ``--out`` or a disk that filled up during the run.
    """
    validate_results(results)
    name = failed.name if failed.suffix == ".json" else "results.json"
    for folder in (Path.cwd(), Path(tempfile.gettempdir())):
        candidate = folder / name
        if candidate.exists() or candidate.resolve() == Path(os.path.abspath(failed)).resolve():
            continue
        try:
            write_json_atomic(candidate, results)
        except OSError:
            continue
        return candidate
    try:
        fd, unique = tempfile.mkstemp(prefix="localexit-results-", suffix=".json")
        os.close(fd)
        write_json_atomic(Path(unique), results)
    except OSError:
        return None
    return Path(unique)
