"""Read results files and training logs for the report.

Results files are read through the contract (``contract.results``): its one validator, and every
version it reads, an older one upgraded. A file that is not JSON, has a schema this version does not
read or lacks a field the report needs is refused with a ``ReportError`` naming the file and the field,
before any table is drawn. Training logs (``localexit-trainlog/1``) are validated here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from contract.errors import SchemaError
from contract.jsonfile import read_json
from contract.names import (
    CLOUD,
    LOCAL_EXITS,
    MODEL_KINDS,
    PROCEDURES,
    RESULTS_FAMILY,
    STUDY_MANIFEST_NAME,
    TRAINLOG_SCHEMA,
)
from contract.results import SUMMARY_FIELDS, Results, Run
from contract.rules import is_number
from reports import stats
from reports.errors import ReportError

logger = logging.getLogger(__name__)

__all__ = [
    "PROCEDURES",
    "SUMMARY_FIELDS",
    "ResultsFile",
    "RunSeries",
    "TrainLog",
    "load_results",
    "load_train_logs",
    "parse_results",
    "parse_train_log",
    "scenario_key",
]


def _read_json(path: Path) -> Any:
    try:
        return read_json(path)
    except SchemaError as exc:
        raise ReportError(str(exc)) from exc


def _need_mapping(path: Path, data: object, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ReportError(f"{path}: {where} must be a JSON object, got {type(data).__name__}")
    return data


def _need(path: Path, data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ReportError(f"{path}: missing field {where}{key!r}; was it written by the localexit harness?")
    return data[key]


@dataclass(frozen=True)
class ResultsFile:
    """One results file: ``results`` is the typed document (``contract.results.Results``); ``config``,
    ``environment``, ``runs`` and ``aggregate`` are the same as JSON objects in the current version, for
    code that reads recorded settings by name."""

    path: Path
    results: Results

    @cached_property
    def config(self) -> Mapping[str, Any]:
        return self.results.config.to_json()

    @property
    def environment(self) -> Mapping[str, Any]:
        return self.results.environment

    @cached_property
    def runs(self) -> tuple[Mapping[str, Any], ...]:
        return tuple(run.to_json() for run in self.results.runs)

    @cached_property
    def aggregate(self) -> Mapping[str, Any]:
        return self.results.to_json()["aggregate"]

    @property
    def kind(self) -> str:
        return self.results.config.model

    @property
    def exit(self) -> int | None:
        return self.results.config.exit

    @property
    def threshold(self) -> float:
        return self.results.config.threshold

    @property
    def label(self) -> str:
        """Short name used in tables: ``SEM-3``, ``MEM@3`` or ``standard``."""
        if self.kind == "sem":
            return f"SEM-{self.exit}"
        if self.kind == "mem":
            return f"MEM@{self.exit}"
        return "standard"

    def values(self, metric: str) -> list[float]:
        """One summary figure across runs, leaving out runs where it is null."""
        return [v for run in self.results.runs if (v := run.summary.get(metric)) is not None]

    @property
    def blocked(self) -> bool:
        """Whether the runs carry the block they ran in (a blocked study)."""
        return self.results.blocked

    def _series(self, value: Callable[[Run], float | None]) -> RunSeries:
        kept = [(run, v) for run in self.results.runs if (v := value(run)) is not None]
        return RunSeries(
            tuple(v for _, v in kept),
            tuple(run.block for run, _ in kept if run.block is not None) if self.blocked else None,
        )

    def series(self, metric: str) -> RunSeries:
        """One summary figure per run (runs where it is null left out), with each run's block."""
        return self._series(lambda run: run.summary.get(metric))

    def procedure_series(self, name: str) -> RunSeries:
        """Each run's mean per-batch time of procedure ``name`` (ms), with each run's block; runs where
        no batch went through it are left out."""
        return self._series(lambda run: _procedure_mean(run, name))

    def procedures_total_series(self) -> RunSeries:
        """Each run's sum of the mean per-batch times of the procedures it had (ms): the height of its
        stacked procedure bar."""

        def total(run: Run) -> float | None:
            means = [m for name in PROCEDURES if (m := _procedure_mean(run, name)) is not None]
            return sum(means) if means else None

        return self._series(total)

    def resource_series(self, field: str, which: str) -> RunSeries:
        """Each run's ``edge_cpu_percent``/``edge_rss_mib`` ``mean`` or ``max``; unsampled runs left out."""
        return self._series(lambda run: _resource(run, field).get(which))

    def metric(self, metric: str) -> float | None:
        """Median of a summary figure across runs (None when no run has it, e.g. no local exit)."""
        vals = self.values(metric)
        return stats.median(vals) if vals else None

    def procedure_mean(self, name: str) -> float | None:
        """Median across runs of the mean per-batch time of procedure ``name`` (ms)."""
        vals = [m for run in self.results.runs if (m := _procedure_mean(run, name)) is not None]
        return stats.median(vals) if vals else None

    def resource(self, field: str, which: str) -> float | None:
        """Median across runs of ``edge_cpu_percent``/``edge_rss_mib`` ``mean`` or ``max`` (None: unsampled)."""
        vals = [v for run in self.results.runs if (v := _resource(run, field).get(which)) is not None]
        return stats.median(vals) if vals else None

    def batch_latencies_by_run(self) -> list[list[float]]:
        """Per-batch latencies (ms) of each run that stored them. Kept per run: batches of one run share
        its machine state, so they describe that run and are never pooled into one sample."""
        return [list(lat) for run in self.results.runs if (lat := run.per_batch_ms.get("latency"))]


def _procedure_mean(run: Run, name: str) -> float | None:
    proc = run.procedures_ms.get(name)
    return None if proc is None else proc.mean


def _resource(run: Run, field: str) -> Any:
    if field not in ("edge_cpu_percent", "edge_rss_mib"):
        raise KeyError(f"no resource {field!r}: edge_cpu_percent or edge_rss_mib")
    return getattr(run, field)


@dataclass(frozen=True)
class RunSeries:
    """One figure of one point, one value per run, with the block each run ran in.

    ``blocks`` is None for files whose runs carry no block index (runs outside a blocked study); such
    runs cannot be paired with another point's.
    """

    values: tuple[float, ...]
    blocks: tuple[int, ...] | None

    def __post_init__(self) -> None:
        if self.blocks is not None and len(self.blocks) != len(self.values):
            raise ValueError(f"{len(self.values)} values but {len(self.blocks)} blocks")

    def by_block(self) -> dict[int, float]:
        """``{block: value}``; empty when the runs carry no block."""
        return {} if self.blocks is None else dict(zip(self.blocks, self.values, strict=True))


def parse_results(path: Path, data: object) -> ResultsFile:
    """Validate the decoded JSON of one results file (through the contract)."""
    try:
        return ResultsFile(path=path, results=Results.from_json(data))
    except SchemaError as exc:
        raise ReportError(f"{path}: {exc}") from exc


def _family_of(path: Path) -> str | None:
    """The family of the localexit document in ``path`` (``localexit-calibration`` for
    ``localexit-calibration/1``), or None when it is not one or cannot be read (its reader then says why)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    schema = data.get("schema") if isinstance(data, dict) else None
    if not isinstance(schema, str) or not schema.startswith(RESULTS_FAMILY):
        return None
    family, sep, _version = schema.rpartition("/")
    return family if sep else None


def _expand(paths: Iterable[Path | str], what: str, family: str) -> list[Path]:
    """Files named, and the ``*.json`` under folders named. In a folder, the project's other documents
    (a study's manifest beside its points, a calibration or profile file beside results) are skipped: a
    folder reads as the ``family`` documents in it. A file named on its own is always read."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*.json")
                if p.is_file() and p.name != STUDY_MANIFEST_NAME and _family_of(p) in (family, None)
            )
            if not found:
                raise ReportError(f"{path}: folder holds no {what} (*.json)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path}: no such file or folder")
    return files


def load_results(paths: Iterable[Path | str], *, one_per_point: bool = True) -> list[ResultsFile]:
    """Load results files, expanding folders to the results files under them (sorted).

    Raises ``ReportError`` naming the file when one is unreadable, not JSON, of another schema, or
    missing a field; and, with ``one_per_point``, when two files hold the same configuration (a report
    could not tell which one to show; an export of every run takes them all).
    """
    results = [parse_results(p, _read_json(p)) for p in _expand(paths, "results files", RESULTS_FAMILY)]
    if not results:
        raise ReportError("no results files given")
    if not one_per_point:
        return results
    seen: dict[tuple[object, ...], Path] = {}
    for res in results:
        key = (*scenario_key(res), res.kind, res.exit, res.threshold)
        if key in seen:
            raise ReportError(
                f"{res.path} and {seen[key]} both hold {res.label} at T={res.threshold:g} under the same "
                "configuration; pass only one of them"
            )
        seen[key] = res.path
    logger.info("loaded %d results file(s)", len(results))
    return results


def scenario_key(res: ResultsFile) -> tuple[str, ...]:
    """What must agree for two results to share a figure: dataset, links, batch size, edge limits, the
    cloud's CPU set, the TCP congestion control in force (where recorded), whether the nodes ran in
    containers (``--isolation docker``: a testbed of its own, compared with namespaces, not pooled), the
    exit policy (an adaptive or oracle MEM records its starting exit as ``exit``, yet is no fixed MEM at
    that exit) and whether a calibration divided the exits' logits by a temperature (the same T then
    selects other samples)."""
    cfg = res.results.config
    return (
        cfg.dataset,
        json.dumps(cfg.links, sort_keys=True),
        str(cfg.batch_size),
        json.dumps(cfg.edge_limits, sort_keys=True),
        json.dumps(cfg.cloud_cpuset, sort_keys=True),
        str(cfg.congestion_control),
        *(["containers"] if cfg.isolation == "docker" else []),
        # (a model not of the paper -- its factory's spec -- and a cloud off the CPU are scenarios of their own)
        *model_and_device_key(cfg.extra),
        *policy_key(cfg.request, cfg.extra),
    )


def policy_key(request: Mapping[str, Any] | None, extra: Mapping[str, Any]) -> list[str]:
    """The parts of a scenario's key that name an exit policy other than fixed, or temperature-scaled
    exits; none for a fixed exit at plain thresholds, so that results written before either existed
    agree with today's fixed runs."""
    policy = (request or {}).get("exit_policy") or "fixed"
    calibration = extra.get("calibration")
    temperatures = calibration.get("temperatures") if isinstance(calibration, Mapping) else None
    scaled = isinstance(temperatures, Mapping) and any(t != 1 for t in temperatures.values())
    return ([f"exit policy {policy}"] if policy != "fixed" else []) + (
        ["temperature-scaled"] if scaled else []
    )


def model_and_device_key(extra: Mapping[str, Any]) -> list[str]:
    """The parts of a scenario's key that name another model than the paper's CNN, or a node not on the
    CPU; none for the paper's CNN on CPUs, so that results written before either was recorded agree."""
    info = extra.get("model_info")
    spec = info.get("spec") if isinstance(info, Mapping) else None
    devices = extra.get("devices")
    on = {
        node: d.get("device")
        for node, d in (devices.items() if isinstance(devices, Mapping) else ())
        if isinstance(d, Mapping) and d.get("device") not in (None, "cpu")
    }
    return ([f"model {spec}"] if spec else []) + [f"{node} on {dev}" for node, dev in sorted(on.items())]


@dataclass(frozen=True)
class TrainLog:
    """One validated training log: per-epoch and final accuracy per exit."""

    path: Path
    kind: str
    exit: int | None
    dataset: str
    epochs: tuple[Mapping[str, Any], ...]
    final_train: Mapping[str, float]
    final_test: Mapping[str, float]

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"{self.path}: unknown model kind {self.kind!r}")

    @property
    def label(self) -> str:
        return f"SEM-{self.exit}" if self.kind == "sem" else self.kind.upper()

    def curve(self, exit_key: str, split: str = "train_accuracy") -> tuple[list[int], list[float]]:
        """(epochs, accuracies) of one exit ("1".."8" or "cloud") over training."""
        xs: list[int] = []
        ys: list[float] = []
        for epoch in self.epochs:
            acc = epoch.get(split)
            if isinstance(acc, Mapping) and is_number(acc.get(exit_key)):
                xs.append(int(epoch["epoch"]))
                ys.append(float(acc[exit_key]))
        return xs, ys


def _accuracy_map(path: Path, data: object, where: str) -> dict[str, float]:
    data = _need_mapping(path, data, where)
    out: dict[str, float] = {}
    for key, value in data.items():
        if key != CLOUD and key not in {str(k) for k in LOCAL_EXITS}:
            raise ReportError(f"{path}: {where} has unknown exit {key!r} (expected '1'..'8' or 'cloud')")
        if not is_number(value):
            raise ReportError(f"{path}: {where}[{key!r}] must be a number, got {value!r}")
        out[key] = float(value)
    return out


def parse_train_log(path: Path, data: object) -> TrainLog:
    """Validate the decoded JSON of one training log."""
    data = _need_mapping(path, data, "the top level")
    schema = data.get("schema")
    if schema is None:
        raise ReportError(f"{path}: missing field 'schema' (expected {TRAINLOG_SCHEMA!r})")
    if schema != TRAINLOG_SCHEMA:
        raise ReportError(
            f"{path}: schema {schema!r} is not supported; this version of reports reads {TRAINLOG_SCHEMA!r}"
        )
    model = _need_mapping(path, _need(path, data, "model", ""), "model")
    kind = _need(path, model, "kind", "model.")
    if kind not in MODEL_KINDS:
        raise ReportError(f"{path}: model.kind must be one of {MODEL_KINDS}, got {kind!r}")
    exit_ = model.get("exit")
    if kind == "sem" and exit_ not in LOCAL_EXITS:
        raise ReportError(f"{path}: model.exit must be 1..8 for a SEM, got {exit_!r}")
    epochs = _need(path, data, "epochs", "")
    if not isinstance(epochs, list):
        raise ReportError(f"{path}: 'epochs' must be a list")
    for i, raw in enumerate(epochs):
        epoch = _need_mapping(path, raw, f"epochs[{i}]")
        if not is_number(_need(path, epoch, "epoch", f"epochs[{i}].")):
            raise ReportError(f"{path}: epochs[{i}].epoch must be a number")
        _accuracy_map(
            path, _need(path, epoch, "train_accuracy", f"epochs[{i}]."), f"epochs[{i}].train_accuracy"
        )
    final = _need_mapping(path, _need(path, data, "final", ""), "final")
    final_train = _accuracy_map(path, _need(path, final, "train_accuracy", "final."), "final.train_accuracy")
    final_test = _accuracy_map(path, final.get("test_accuracy", {}), "final.test_accuracy")
    return TrainLog(
        path=path,
        kind=str(kind),
        exit=None if exit_ is None else int(exit_),
        dataset=str(_need(path, data, "dataset", "")),
        epochs=tuple(epochs),
        final_train=final_train,
        final_test=final_test,
    )


def load_train_logs(paths: Iterable[Path | str]) -> list[TrainLog]:
    """Load training logs (files or folders of ``*.json``); refuses bad ones naming the file."""
    return [
        parse_train_log(p, _read_json(p))
        for p in _expand(paths, "training logs", TRAINLOG_SCHEMA.rpartition("/")[0])
    ]
