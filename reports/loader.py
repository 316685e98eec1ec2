"""Read and validate results files (``localexit/1``) and training logs (``localexit-trainlog/1``).

A file that is not JSON, has another schema version or lacks a field the report needs is refused with a
``ReportError`` naming the file and the field, before any table is drawn.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reports import stats
from reports.errors import ReportError

logger = logging.getLogger(__name__)

RESULTS_SCHEMA = "localexit/1"
TRAINLOG_SCHEMA = "localexit-trainlog/1"
MODEL_KINDS = ("standard", "sem", "mem")
LOCAL_EXITS = tuple(range(1, 9))
PROCEDURES = ("1", "2", "3-1", "3-2", "4", "5")
#: Summary figures every run must carry; the ones in NULLABLE are null when no sample exited there.
SUMMARY_FIELDS = (
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
NULLABLE = frozenset({"edge_accuracy", "cloud_accuracy", "edge_latency_ms", "cloud_latency_ms"})
CONFIG_FIELDS = ("model", "exit", "threshold", "batch_size", "dataset", "samples", "links")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReportError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not a text (JSON) file") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


def _need_mapping(path: Path, data: object, where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ReportError(f"{path}: {where} must be a JSON object, got {type(data).__name__}")
    return data


def _need(path: Path, data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise ReportError(f"{path}: missing field {where}{key!r}; was it written by the localexit harness?")
    return data[key]


def _check_schema(path: Path, data: Mapping[str, Any], expected: str) -> None:
    schema = data.get("schema")
    if schema is None:
        raise ReportError(f"{path}: missing field 'schema' (expected {expected!r})")
    if schema != expected:
        raise ReportError(
            f"{path}: schema {schema!r} is not supported; this version of reports reads {expected!r}"
        )


@dataclass(frozen=True)
class ResultsFile:
    """One validated results file: a configuration and its repeated runs."""

    path: Path
    config: Mapping[str, Any]
    environment: Mapping[str, Any]
    runs: tuple[Mapping[str, Any], ...]
    aggregate: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not self.runs:
            raise ValueError(f"{self.path}: a results file needs at least one run")

    @property
    def kind(self) -> str:
        return str(self.config["model"])

    @property
    def exit(self) -> int | None:
        value = self.config["exit"]
        return None if value is None else int(value)

    @property
    def threshold(self) -> float:
        return float(self.config["threshold"])

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
        return [float(run["summary"][metric]) for run in self.runs if run["summary"][metric] is not None]

    @property
    def blocked(self) -> bool:
        """Whether the runs carry the block they ran in (a blocked study); older files do not."""
        return "block" in self.runs[0]

    def _series(self, value: Callable[[Mapping[str, Any]], float | None]) -> RunSeries:
        kept = [(run, v) for run in self.runs if (v := value(run)) is not None]
        return RunSeries(
            tuple(v for _, v in kept),
            tuple(int(run["block"]) for run, _ in kept) if self.blocked else None,
        )

    def series(self, metric: str) -> RunSeries:
        """One summary figure per run (runs where it is null left out), with each run's block."""
        return self._series(
            lambda run: None if run["summary"][metric] is None else float(run["summary"][metric])
        )

    def procedure_series(self, name: str) -> RunSeries:
        """Each run's mean per-batch time of procedure ``name`` (ms), with each run's block; runs where
        no batch went through it are left out."""

        def mean_of(run: Mapping[str, Any]) -> float | None:
            proc = run["procedures_ms"].get(name)
            return float(proc["mean"]) if isinstance(proc, Mapping) and _is_number(proc.get("mean")) else None

        return self._series(mean_of)

    def procedures_total_series(self) -> RunSeries:
        """Each run's sum of the mean per-batch times of the procedures it had (ms): the height of its
        stacked procedure bar."""

        def total(run: Mapping[str, Any]) -> float | None:
            means = [
                float(p["mean"])
                for name in PROCEDURES
                if isinstance(p := run["procedures_ms"].get(name), Mapping) and _is_number(p.get("mean"))
            ]
            return sum(means) if means else None

        return self._series(total)

    def resource_series(self, field: str, which: str) -> RunSeries:
        """Each run's ``edge_cpu_percent``/``edge_rss_mib`` ``mean`` or ``max``; unsampled runs left out."""
        return self._series(lambda run: None if run[field][which] is None else float(run[field][which]))

    def metric(self, metric: str) -> float | None:
        """Median of a summary figure across runs (None when no run has it, e.g. no local exit)."""
        vals = self.values(metric)
        return stats.median(vals) if vals else None

    def procedure_mean(self, name: str) -> float | None:
        """Median across runs of the mean per-batch time of procedure ``name`` (ms)."""
        vals = [
            float(run["procedures_ms"][name]["mean"])
            for run in self.runs
            if isinstance(run["procedures_ms"].get(name), Mapping)
            and _is_number(run["procedures_ms"][name].get("mean"))
        ]
        return stats.median(vals) if vals else None

    def resource(self, field: str, which: str) -> float | None:
        """Median across runs of ``edge_cpu_percent``/``edge_rss_mib`` ``mean`` or ``max`` (None: unsampled)."""
        vals = [float(run[field][which]) for run in self.runs if run[field][which] is not None]
        return stats.median(vals) if vals else None

    def batch_latencies_by_run(self) -> list[list[float]]:
        """Per-batch latencies (ms) of each run that stored them. Kept per run: batches of one run share
        its machine state, so they describe that run and are never pooled into one sample."""
        out: list[list[float]] = []
        for run in self.runs:
            per_batch = run.get("per_batch_ms")
            if isinstance(per_batch, Mapping) and isinstance(per_batch.get("latency"), list):
                values = [float(v) for v in per_batch["latency"] if _is_number(v)]
                if values:
                    out.append(values)
        return out


@dataclass(frozen=True)
class RunSeries:
    """One figure of one point, one value per run, with the block each run ran in.

    ``blocks`` is None for files whose runs carry no block index (written before studies ran points in
    blocks); such runs cannot be paired with another point's.
    """

    values: tuple[float, ...]
    blocks: tuple[int, ...] | None

    def __post_init__(self) -> None:
        if self.blocks is not None and len(self.blocks) != len(self.values):
            raise ValueError(f"{len(self.values)} values but {len(self.blocks)} blocks")

    def by_block(self) -> dict[int, float]:
        """``{block: value}``; empty when the runs carry no block."""
        return {} if self.blocks is None else dict(zip(self.blocks, self.values, strict=True))


def _validate_run(path: Path, index: int, run: object) -> Mapping[str, Any]:
    where = f"runs[{index}]"
    run = _need_mapping(path, run, where)
    if "block" in run:
        block = run["block"]
        if not isinstance(block, int) or isinstance(block, bool) or block < 0:
            raise ReportError(f"{path}: {where}.block must be a block index (an integer ≥ 0), got {block!r}")
    summary = _need_mapping(path, _need(path, run, "summary", f"{where}."), f"{where}.summary")
    for field in SUMMARY_FIELDS:
        value = _need(path, summary, field, f"{where}.summary.")
        if value is None and field in NULLABLE:
            continue
        if not _is_number(value):
            raise ReportError(f"{path}: {where}.summary.{field} must be a number, got {value!r}")
    procedures = _need_mapping(path, _need(path, run, "procedures_ms", f"{where}."), f"{where}.procedures_ms")
    for name, raw in procedures.items():
        if raw is None:  # no batch went through this procedure (e.g. no cloud exit)
            continue
        proc = _need_mapping(path, raw, f"{where}.procedures_ms[{name!r}]")
        if proc and not _is_number(proc.get("mean")):
            raise ReportError(f"{path}: {where}.procedures_ms[{name!r}].mean must be a number")
    for field in ("edge_cpu_percent", "edge_rss_mib"):
        res = _need_mapping(path, _need(path, run, field, f"{where}."), f"{where}.{field}")
        for which in ("mean", "max"):
            value = _need(path, res, which, f"{where}.{field}.")
            if value is not None and not _is_number(value):  # null: nothing was sampled
                raise ReportError(f"{path}: {where}.{field}.{which} must be a number or null, got {value!r}")
    return run


def _check_blocks(path: Path, runs: tuple[Mapping[str, Any], ...]) -> None:
    """A blocked study runs every point once per block: all runs carry a block, each a different one."""
    with_block = [i for i, run in enumerate(runs) if "block" in run]
    if with_block and len(with_block) != len(runs):
        missing = next(i for i in range(len(runs)) if i not in with_block)
        raise ReportError(f"{path}: runs[{missing}] has no block while other runs have one")
    seen: dict[int, int] = {}
    for i in with_block:
        block = int(runs[i]["block"])
        if block in seen:
            raise ReportError(
                f"{path}: runs[{seen[block]}] and runs[{i}] both ran in block {block}; a study runs each "
                "point once per block"
            )
        seen[block] = i


def parse_results(path: Path, data: object) -> ResultsFile:
    """Validate the decoded JSON of one results file."""
    data = _need_mapping(path, data, "the top level")
    _check_schema(path, data, RESULTS_SCHEMA)
    config = _need_mapping(path, _need(path, data, "config", ""), "config")
    for field in CONFIG_FIELDS:
        _need(path, config, field, "config.")
    if config["model"] not in MODEL_KINDS:
        raise ReportError(f"{path}: config.model must be one of {MODEL_KINDS}, got {config['model']!r}")
    exit_ = config["exit"]
    if config["model"] in ("sem", "mem") and exit_ not in LOCAL_EXITS:
        raise ReportError(f"{path}: config.exit must be 1..8 for model {config['model']}, got {exit_!r}")
    if not _is_number(config["threshold"]) or not 0.0 <= float(config["threshold"]) <= 1.0:
        raise ReportError(f"{path}: config.threshold must be a number in [0, 1], got {config['threshold']!r}")
    _need_mapping(path, config["links"], "config.links")
    environment = _need_mapping(path, _need(path, data, "environment", ""), "environment")
    runs = _need(path, data, "runs", "")
    if not isinstance(runs, list) or not runs:
        raise ReportError(f"{path}: 'runs' must be a non-empty list of runs")
    checked = tuple(_validate_run(path, i, run) for i, run in enumerate(runs))
    _check_blocks(path, checked)
    aggregate = _need_mapping(path, _need(path, data, "aggregate", ""), "aggregate")
    return ResultsFile(path=path, config=config, environment=environment, runs=checked, aggregate=aggregate)


def _expand(paths: Iterable[Path | str], what: str) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.json") if p.is_file())
            if not found:
                raise ReportError(f"{path}: folder holds no {what} (*.json)")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ReportError(f"{path}: no such file or folder")
    return files


def load_results(paths: Iterable[Path | str]) -> list[ResultsFile]:
    """Load results files, expanding folders to the ``*.json`` files under them (sorted).

    Raises ``ReportError`` naming the file when one is unreadable, not JSON, of another schema, or
    missing a field; and when two files hold the same configuration (the report could not tell which
    one to show).
    """
    results = [parse_results(p, _read_json(p)) for p in _expand(paths, "results files")]
    if not results:
        raise ReportError("no results files given")
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
    cloud's CPU set and the TCP congestion control in force (where recorded)."""
    cfg = res.config
    return (
        str(cfg["dataset"]),
        json.dumps(cfg["links"], sort_keys=True),
        str(cfg["batch_size"]),
        json.dumps(cfg.get("edge_limits"), sort_keys=True),
        json.dumps(cfg.get("cloud_cpuset"), sort_keys=True),
        str(congestion_control(cfg)),
    )


def congestion_control(cfg: Mapping[str, Any]) -> str | None:
    """The TCP congestion control the nodes' connections used, or None where not recorded (files
    written before the harness recorded it)."""
    tcp = cfg.get("tcp_congestion_control")
    name = tcp.get("name") if isinstance(tcp, dict) else None
    return name if isinstance(name, str) else None


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
            if isinstance(acc, Mapping) and _is_number(acc.get(exit_key)):
                xs.append(int(epoch["epoch"]))
                ys.append(float(acc[exit_key]))
        return xs, ys


def _accuracy_map(path: Path, data: object, where: str) -> dict[str, float]:
    data = _need_mapping(path, data, where)
    out: dict[str, float] = {}
    for key, value in data.items():
        if key != "cloud" and key not in {str(k) for k in LOCAL_EXITS}:
            raise ReportError(f"{path}: {where} has unknown exit {key!r} (expected '1'..'8' or 'cloud')")
        if not _is_number(value):
            raise ReportError(f"{path}: {where}[{key!r}] must be a number, got {value!r}")
        out[key] = float(value)
    return out


def parse_train_log(path: Path, data: object) -> TrainLog:
    """Validate the decoded JSON of one training log."""
    data = _need_mapping(path, data, "the top level")
    _check_schema(path, data, TRAINLOG_SCHEMA)
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
        if not _is_number(_need(path, epoch, "epoch", f"epochs[{i}].")):
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
    return [parse_train_log(p, _read_json(p)) for p in _expand(paths, "training logs")]
