"""The results file: the typed, versioned document the harness writes and ``reports`` and ``check`` read.

One :class:`Results` holds the configuration of a point, the environment it ran in, its runs and the
aggregate of each figure across them; :meth:`Results.to_json` and :meth:`Results.from_json` are the only
writer and reader of its JSON form, and the types' ``__post_init__`` the only validator.

Version history (``VERSION_HISTORY``; the schema of a file is ``localexit/<version>``):

1. ``localexit/1``. ``config``: model, exit, threshold, batch_size, dataset, samples, links and
   link_backend, and every other setting as recorded; ``environment``; ``runs``, each with index,
   summary, procedures_ms, edge_cpu_percent and edge_rss_mib, and per_batch_ms and the other figures
   as recorded; ``aggregate``. Fields were added while the version stayed 1, so a version-1 file may
   lack ``config.cloud_cpuset``, ``config.tcp_congestion_control``, ``runs[].block`` and
   ``runs[].per_batch_ids``. Read as version 1, each one it lacks is None: not recorded.
2. ``localexit/2``. As version 1, and those fields, with ``runs[].position``, are always present:
   ``config.cloud_cpuset`` (null: the cloud ran on any CPU), ``config.tcp_congestion_control`` (null:
   the testbed did not report it), and per run ``block`` and ``position`` (the block of a blocked study
   the run ran in and its place in that block's order; null for a run outside a study) and
   ``per_batch_ids`` (the batch index of each per-batch value; null when not recorded).
3. ``localexit/3``. As version 2, and what the harness recorded besides is typed and always present:
   ``discarded_runs`` (the attempts measured on a busy host and run again; may be empty) and
   ``samples_file`` (the per-sample archive beside the file: path, sha256, schema, rows; null: none);
   ``config.max_other_cpu_percent`` (null: runs were not judged) and ``config.link_schedule`` (null: a
   fixed link); per run ``attempt`` (0: the first try), ``busy``, ``discarded`` (why an attempt was run
   again; null for a kept run), ``clock_check`` (null: not checked) and ``link_schedule``, which holds
   the versions before 3's ``link_changes``, ``link_changes_not_reached``, ``link_schedule_t0_ns`` and
   ``link_schedule_measured_from_s`` as ``changes``, ``not_reached``, ``t0_ns`` and ``measured_from_s``
   (null: the link did not change during the run). Read as version 1 or 2, a file's runs take
   ``attempt``, ``busy``, ``discarded`` and ``clock_check`` as written (0, false, null, null where
   absent), its four link-schedule fields are gathered into ``link_schedule``, and what it lacks of the
   rest is empty or null.

A reader takes every version listed, by its number, and upgrades it to the types below; it refuses a
newer version (the message says to upgrade localexit) and any other schema. Writers add fields freely:
a field no type models is kept as written (``extra``), so rewriting a file loses none.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from contract import _fields as f
from contract.atomic import write_json_atomic
from contract.errors import SchemaError
from contract.jsonfile import read_document
from contract.names import (
    MODEL_KINDS,
    PROCEDURES,
    RESULTS_FAMILY,
    RESULTS_SCHEMA,
    RESULTS_VERSION,
    ModelKind,
    schema_id,
    schema_version,
)
from contract.records import Samples
from contract.rules import check_model_exit, check_threshold

VERSION_HISTORY: Mapping[int, str] = {
    1: "config, environment, runs and aggregate; config.cloud_cpuset, config.tcp_congestion_control, "
    "runs[].block and runs[].per_batch_ids present in some files only",
    2: "config.cloud_cpuset, config.tcp_congestion_control and runs[].block, runs[].position and "
    "runs[].per_batch_ids always present (null: not applicable or not recorded)",
    3: "discarded_runs, samples_file, config.max_other_cpu_percent, config.link_schedule and runs[].attempt, "
    "busy, discarded, clock_check and link_schedule (the link-schedule fields gathered) typed and always present",
}
SUPPORTED_SCHEMAS = tuple(schema_id(RESULTS_FAMILY, v) for v in sorted(VERSION_HISTORY))

#: The paper's §4.1 figures of a run; those in NULLABLE_SUMMARY_FIELDS are null when no sample exited there.
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
NULLABLE_SUMMARY_FIELDS = frozenset(
    {"edge_accuracy", "cloud_accuracy", "edge_latency_ms", "cloud_latency_ms"}
)


@dataclass(frozen=True)
class Summary(f.PlainJson):
    """The paper's §4.1 figures of one run: exit counts, accuracies (fractions) and latencies (ms)."""

    samples: int
    local_exits: int
    cloud_exits: int
    edge_accuracy: float | None
    cloud_accuracy: float | None
    overall_accuracy: float
    edge_latency_ms: float | None
    cloud_latency_ms: float | None
    overall_latency_ms: float

    def __post_init__(self) -> None:
        f.count("samples", self.samples, minimum=1)
        f.count("local_exits", self.local_exits)
        f.count("cloud_exits", self.cloud_exits)
        if self.local_exits + self.cloud_exits != self.samples:
            raise ValueError(
                f"local_exits {self.local_exits} + cloud_exits {self.cloud_exits} is not samples {self.samples}"
            )
        for name in ("edge_accuracy", "cloud_accuracy", "overall_accuracy"):
            check = f.optional_number if name in NULLABLE_SUMMARY_FIELDS else f.number
            object.__setattr__(self, name, check(name, getattr(self, name), lo=0.0, hi=1.0))
        for name in ("edge_latency_ms", "cloud_latency_ms", "overall_latency_ms"):
            check = f.optional_number if name in NULLABLE_SUMMARY_FIELDS else f.number
            object.__setattr__(self, name, check(name, getattr(self, name), lo=0.0))

    def get(self, name: str) -> float | None:
        """A figure by its name in SUMMARY_FIELDS (None: no sample exited there)."""
        if name not in SUMMARY_FIELDS:
            raise KeyError(f"no summary figure {name!r} (figures: {', '.join(SUMMARY_FIELDS)})")
        value = getattr(self, name)
        return None if value is None else float(value)


@dataclass(frozen=True)
class Distribution(f.PlainJson):
    """One quantity over a run's batches: arithmetic mean and nearest-rank percentiles (ms), and how many
    batches it rests on."""

    mean: float
    p50: float
    p95: float
    p99: float
    n: int

    def __post_init__(self) -> None:
        for name in ("mean", "p50", "p95", "p99"):
            object.__setattr__(self, name, f.number(name, getattr(self, name)))
        f.count("n", self.n, minimum=1)


@dataclass(frozen=True)
class Resource(f.PlainJson):
    """A sampled figure of a run (the edge's CPU %, its RSS in MiB, other programs' CPU %): mean and
    maximum (None when nothing was sampled) and the number of samples (None: not recorded)."""

    OPTIONAL = ("n",)

    mean: float | None
    max: float | None
    n: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", f.optional_number("mean", self.mean, lo=0.0))
        object.__setattr__(self, "max", f.optional_number("max", self.max, lo=0.0))
        f.optional_count("n", self.n)

    def get(self, which: str) -> float | None:
        """``mean`` or ``max`` by name."""
        if which not in ("mean", "max"):
            raise KeyError(f"a resource has a mean and a max, not {which!r}")
        value: float | None = getattr(self, which)
        return value


@dataclass(frozen=True)
class Aggregate(f.PlainJson):
    """One figure across the runs of a point: median, raw MAD, extremes, count, and the pyperf-style
    stability verdict with its reason."""

    OPTIONAL = ("unstable_reason",)

    median: float
    mad: float
    min: float
    max: float
    n: int
    unstable: bool
    unstable_reason: str = ""

    def __post_init__(self) -> None:
        for name in ("median", "mad", "min", "max"):
            object.__setattr__(self, name, f.number(name, getattr(self, name)))
        f.count("n", self.n, minimum=1)
        if not isinstance(self.unstable, bool):
            raise ValueError(f"unstable must be true or false, got {self.unstable!r}")
        f.text("unstable_reason", self.unstable_reason)


@dataclass(frozen=True)
class ScheduleRecord:
    """What a link schedule did during one run: the changes applied (each as the scheduler recorded
    it), how many were not reached before the run ended, the schedule's time 0 (``CLOCK_MONOTONIC``, ns)
    and where the measured phase began on it (s; None: the test node did not say)."""

    changes: tuple[Mapping[str, Any], ...] = ()
    not_reached: int = 0
    t0_ns: int | None = None
    measured_from_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.changes, list | tuple) or not all(
            isinstance(c, Mapping) for c in self.changes
        ):
            raise ValueError("changes must be a list of objects")
        object.__setattr__(self, "changes", tuple(self.changes))
        f.count("not_reached", self.not_reached)
        f.optional_count("t0_ns", self.t0_ns)
        object.__setattr__(
            self, "measured_from_s", f.optional_number("measured_from_s", self.measured_from_s)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "changes": [dict(c) for c in self.changes],
            "not_reached": self.not_reached,
            "t0_ns": self.t0_ns,
            "measured_from_s": self.measured_from_s,
        }

    @classmethod
    def from_json(cls, data: object, where: str) -> ScheduleRecord:
        d = f.obj(where, data)
        return f.build(where, cls, **{c.name: f.need(where, d, c.name) for c in fields(cls)})


#: How versions before 3 wrote a run's link schedule (flat in the run): their names in ScheduleRecord.
_SCHEDULE_BEFORE_3 = {
    "link_changes": "changes",
    "link_changes_not_reached": "not_reached",
    "link_schedule_t0_ns": "t0_ns",
    "link_schedule_measured_from_s": "measured_from_s",
}

_RUN_REQUIRED = ("index", "summary", "procedures_ms", "edge_cpu_percent", "edge_rss_mib")
_RUN_SINCE_2 = ("block", "position", "per_batch_ids")
_RUN_SINCE_3 = ("attempt", "busy", "discarded", "clock_check", "link_schedule")
#: Where a run's edge resources were sampled: only while the test node measured, or (when its clock
#: did not place that phase) over the whole run.
RESOURCE_WINDOWS = ("measured-phase", "whole-run")


@dataclass(frozen=True)
class Run:
    """One repeat of a point: its figures, per-procedure distributions, the edge's resources, the raw
    per-batch values (ms) the regression check compares, and what else the harness recorded about it.

    ``per_batch_ms`` has ``latency`` (each batch's end-to-end time), ``edge`` and ``cloud`` (the sums of
    the procedures on each path, for batches that had such samples) and one list per procedure;
    ``per_batch_ids`` the same keys and lengths, holding the batch index of each value (lists of
    procedures only some batches went through are shorter, and only these line them up).

    ``attempt`` is 0 for a run's first try; ``busy`` says other programs used more CPU than the limit
    while it measured, and ``discarded`` why an attempt was run again (``harness.busy``).
    ``samples`` holds the test node's per-sample records while the results are in memory; it is never
    written to the JSON (the harness moves it to the archive ``Results.samples_file`` names).
    """

    index: int
    summary: Summary
    procedures_ms: Mapping[str, Distribution | None]
    edge_cpu_percent: Resource
    edge_rss_mib: Resource
    per_batch_ms: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    per_batch_ids: Mapping[str, tuple[int, ...]] | None = None
    duration_s: float | None = None
    calibration_ms: float | None = None
    warmup_batches: int | None = None
    edge_resources_window: str | None = None
    host_other_cpu_percent: Resource | None = None
    clock: Mapping[str, Any] = field(default_factory=dict)
    clock_check: Mapping[str, Any] | None = None
    nodes: Mapping[str, Any] = field(default_factory=dict)
    block: int | None = None
    position: int | None = None
    attempt: int = 0
    busy: bool = False
    discarded: str | None = None
    link_schedule: ScheduleRecord | None = None
    samples: Samples | None = field(default=None, compare=False, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        f.count("index", self.index)
        procs = f.mapping("procedures_ms", self.procedures_ms)
        unknown = [p for p in procs if p not in PROCEDURES]
        if unknown:
            raise ValueError(
                f"procedures_ms has unknown procedures {unknown} (known: {', '.join(PROCEDURES)})"
            )
        per_batch = f.mapping("per_batch_ms", self.per_batch_ms)
        object.__setattr__(
            self, "per_batch_ms", {str(k): f.numbers(f"per_batch_ms[{k!r}]", v) for k, v in per_batch.items()}
        )
        if self.per_batch_ids is not None:
            ids = f.mapping("per_batch_ids", self.per_batch_ids)
            checked: dict[str, tuple[int, ...]] = {}
            for key, values in ids.items():
                if not isinstance(values, list | tuple) or not all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values
                ):
                    raise ValueError(f"per_batch_ids[{key!r}] must be a list of batch indices (integers ≥ 0)")
                if key not in self.per_batch_ms or len(values) != len(self.per_batch_ms[key]):
                    have = len(self.per_batch_ms.get(key, ()))
                    raise ValueError(
                        f"per_batch_ids[{key!r}] has {len(values)} batch indices for {have} values in per_batch_ms[{key!r}]"
                    )
                checked[str(key)] = tuple(values)
            object.__setattr__(self, "per_batch_ids", checked)
        object.__setattr__(self, "duration_s", f.optional_number("duration_s", self.duration_s, lo=0.0))
        object.__setattr__(
            self, "calibration_ms", f.optional_number("calibration_ms", self.calibration_ms, lo=0.0)
        )
        f.optional_count("warmup_batches", self.warmup_batches)
        if self.edge_resources_window is not None and self.edge_resources_window not in RESOURCE_WINDOWS:
            raise ValueError(
                f"edge_resources_window must be one of {', '.join(RESOURCE_WINDOWS)}, got {self.edge_resources_window!r}"
            )
        f.mapping("clock", self.clock)
        f.optional_mapping("clock_check", self.clock_check)
        f.mapping("nodes", self.nodes)
        f.optional_count("block", self.block)
        f.optional_count("position", self.position)
        f.count("attempt", self.attempt)
        if not isinstance(self.busy, bool):
            raise ValueError(f"busy must be true or false, got {self.busy!r}")
        if self.discarded is not None:
            f.text("discarded", self.discarded)
        f.mapping("extra", self.extra)

    @property
    def clock_warnings(self) -> list[str]:
        """What the test node's clock check found wrong in this run (a procedure whose clock correction
        is uncertain, or drifted, by more than the bound); empty when the clocks are trusted or were not
        checked."""
        warnings = (self.clock_check or {}).get("warnings") or []
        return [str(w) for w in warnings]

    def with_extra(self, **recorded: Any) -> Run:
        """This run with more recorded fields that no type models (written as given, read back as
        ``extra``)."""
        return replace(self, extra={**self.extra, **recorded})

    def to_json(self) -> dict[str, Any]:
        """The run as written; the figures recorded only sometimes (``duration_s``, ``calibration_ms``,
        ``warmup_batches``, ``edge_resources_window``, ``host_other_cpu_percent``) only where known."""
        recorded = {
            "duration_s": self.duration_s,
            "calibration_ms": self.calibration_ms,
            "warmup_batches": self.warmup_batches,
            "edge_resources_window": self.edge_resources_window,
            "host_other_cpu_percent": None
            if self.host_other_cpu_percent is None
            else self.host_other_cpu_percent.to_json(),
        }
        return {
            **self.extra,
            "index": self.index,
            "summary": self.summary.to_json(),
            "procedures_ms": {p: None if d is None else d.to_json() for p, d in self.procedures_ms.items()},
            "per_batch_ms": {k: list(v) for k, v in self.per_batch_ms.items()},
            "per_batch_ids": None
            if self.per_batch_ids is None
            else {k: list(v) for k, v in self.per_batch_ids.items()},
            "edge_cpu_percent": self.edge_cpu_percent.to_json(),
            "edge_rss_mib": self.edge_rss_mib.to_json(),
            **{k: v for k, v in recorded.items() if v is not None},
            "clock": dict(self.clock),
            "clock_check": None if self.clock_check is None else dict(self.clock_check),
            "nodes": dict(self.nodes),
            "block": self.block,
            "position": self.position,
            "attempt": self.attempt,
            "busy": self.busy,
            "discarded": self.discarded,
            "link_schedule": None if self.link_schedule is None else self.link_schedule.to_json(),
        }

    @classmethod
    def from_json(cls, data: object, where: str, version: int = RESULTS_VERSION) -> Run:
        d = f.obj(where, data)
        values: dict[str, Any] = {key: f.need(where, d, key) for key in _RUN_REQUIRED}
        procs = f.obj(f.place(where, "procedures_ms"), values["procedures_ms"])
        values["summary"] = Summary.from_json(values["summary"], f.place(where, "summary"))
        values["procedures_ms"] = {
            str(p): None if raw is None else Distribution.from_json(raw, f"{where}.procedures_ms[{p!r}]")
            for p, raw in procs.items()
        }
        for name in ("edge_cpu_percent", "edge_rss_mib"):
            values[name] = Resource.from_json(values[name], f.place(where, name))
        other = d.get("host_other_cpu_percent")
        if other is not None:
            values["host_other_cpu_percent"] = Resource.from_json(
                other, f.place(where, "host_other_cpu_percent")
            )
        for name in _RUN_SINCE_2:
            values[name] = f.need(where, d, name) if version >= 2 else d.get(name)
        for name in ("per_batch_ms", "clock", "nodes"):
            values[name] = d.get(name) or {}
        for name in ("duration_s", "calibration_ms", "warmup_batches", "edge_resources_window"):
            values[name] = d.get(name)
        known = {c.name for c in fields(cls)} - {"samples", "extra"}
        if version >= 3:
            for name in _RUN_SINCE_3:
                values[name] = f.need(where, d, name)
            if values["link_schedule"] is not None:
                values["link_schedule"] = ScheduleRecord.from_json(
                    values["link_schedule"], f.place(where, "link_schedule")
                )
        else:  # (written before version 3: as recorded where present, gathered where they were flat)
            values.update(
                attempt=d.get("attempt", 0),
                busy=d.get("busy", False),
                discarded=d.get("discarded"),
                clock_check=d.get("clock_check"),
            )
            flat = {new: d[old] for old, new in _SCHEDULE_BEFORE_3.items() if d.get(old) is not None}
            values["link_schedule"] = (
                f.build(f.place(where, "link_changes"), ScheduleRecord, **flat) if flat else None
            )
            known |= set(_SCHEDULE_BEFORE_3)
        return f.build(where, cls, **values, extra=f.rest(d, known))


_CONFIG_REQUIRED = ("model", "exit", "threshold", "batch_size", "dataset", "samples", "links", "link_backend")
_CONFIG_SINCE_2 = ("cloud_cpuset", "tcp_congestion_control")
_CONFIG_SINCE_3 = ("max_other_cpu_percent", "link_schedule")


@dataclass(frozen=True)
class ResultsConfig:
    """What a point measured and what the testbed applied.

    ``links`` holds each link's spec in tc words (``edge_cloud``, ``test_edge``: null when not shaped)
    and ``link_backend`` the mechanism that applied each parameter; ``cloud_cpuset`` the cloud's CPU set
    and how it was applied (None: any CPU); ``tcp_congestion_control`` the congestion control the nodes'
    connections used (None: not reported); ``max_other_cpu_percent`` the other programs' CPU (100 = one
    core) above which a run counted as busy (None: runs were not judged); ``link_schedule`` the schedule
    the links followed (None: fixed links). The fields after it are None where the file did not record
    them; ``placement`` is where each node's CPUs were, ``study`` what identifies the study a point ran
    in, ``request`` the run's configuration as the harness reads it back (``check`` re-runs it), and
    ``extra`` every other recorded setting by its name (checkpoint, node environments, ...).
    """

    model: ModelKind
    exit: int | None
    threshold: float
    batch_size: int
    dataset: str
    samples: int
    links: Mapping[str, Any]
    link_backend: Mapping[str, Any]
    cloud_cpuset: Mapping[str, Any] | None = None
    tcp_congestion_control: Mapping[str, Any] | None = None
    max_other_cpu_percent: float | None = None
    link_schedule: Mapping[str, Any] | None = None
    name: str | None = None
    warmup_batches: int | None = None
    inflight: int | None = None
    checkpoint_sha256: str | None = None
    edge_limits: Mapping[str, Any] | None = None
    not_applied: tuple[str, ...] = ()
    isolation: str | None = None
    seed: int | None = None
    repeat: int | None = None
    busy_retries: int | None = None
    placement: Mapping[str, Any] | None = None
    study: Mapping[str, Any] | None = None
    request: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            check_model_exit(self.model, self.exit)
        except ValueError as exc:
            raise ValueError(f"{'exit' if self.model in MODEL_KINDS else 'model'}: {exc}") from None
        try:
            object.__setattr__(self, "threshold", check_threshold(self.threshold))
        except ValueError as exc:
            raise ValueError(f"threshold: {exc}") from None
        f.count("batch_size", self.batch_size, minimum=1)
        f.text("dataset", self.dataset)
        f.count("samples", self.samples, minimum=1)
        f.mapping("links", self.links)
        f.mapping("link_backend", self.link_backend)
        for name in ("cloud_cpuset", "tcp_congestion_control", "link_schedule", "edge_limits", "placement"):
            f.optional_mapping(name, getattr(self, name))
        for name in ("study", "request"):
            f.optional_mapping(name, getattr(self, name))
        object.__setattr__(
            self,
            "max_other_cpu_percent",
            f.optional_number("max_other_cpu_percent", self.max_other_cpu_percent, lo=0.0),
        )
        f.optional_count("repeat", self.repeat, minimum=1)
        f.optional_count("busy_retries", self.busy_retries)
        if self.seed is not None and (not isinstance(self.seed, int) or isinstance(self.seed, bool)):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        for name in ("name", "checkpoint_sha256", "isolation"):
            if getattr(self, name) is not None:
                f.text(name, getattr(self, name))
        f.optional_count("warmup_batches", self.warmup_batches)
        f.optional_count("inflight", self.inflight, minimum=1)
        if not isinstance(self.not_applied, list | tuple) or not all(
            isinstance(x, str) for x in self.not_applied
        ):
            raise ValueError("not_applied must be a list of strings")
        object.__setattr__(self, "not_applied", tuple(self.not_applied))

    @property
    def congestion_control(self) -> str | None:
        """The name of the TCP congestion control the nodes' connections used; None where not recorded."""
        name = None if self.tcp_congestion_control is None else self.tcp_congestion_control.get("name")
        return name if isinstance(name, str) else None

    def to_json(self) -> dict[str, Any]:
        """The configuration as written: the schema's fields always, the settings recorded only
        sometimes only where known."""
        out: dict[str, Any] = {}
        for c in fields(self):
            value = getattr(self, c.name)
            if c.name in (*_CONFIG_REQUIRED, *_CONFIG_SINCE_2, *_CONFIG_SINCE_3) or value is not None:
                out[c.name] = value
        out["not_applied"] = list(self.not_applied)
        del out["extra"]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, data: object, where: str = "config", version: int = RESULTS_VERSION) -> ResultsConfig:
        d = f.obj(where, data)
        values = {key: f.need(where, d, key) for key in _CONFIG_REQUIRED}
        for name in _CONFIG_SINCE_2:
            values[name] = f.need(where, d, name) if version >= 2 else d.get(name)
        for name in _CONFIG_SINCE_3:
            values[name] = f.need(where, d, name) if version >= 3 else d.get(name)
        known = {c.name for c in fields(cls)}
        optional = known - set(values) - {"extra"}
        values.update((name, d[name]) for name in optional if d.get(name) is not None)
        return f.build(where, cls, **values, extra=f.rest(d, known))


def results_version(schema: object) -> int:
    """The version of a results file's ``schema``; :class:`SchemaError` unless this program reads it."""
    version = schema_version(schema, RESULTS_FAMILY)
    supported = ", ".join(repr(s) for s in SUPPORTED_SCHEMAS)
    if version is not None and version > RESULTS_VERSION:
        raise SchemaError(
            f"schema {schema!r} is newer than this version of localexit reads ({supported}): upgrade localexit"
        )
    if version is None or version not in VERSION_HISTORY:
        raise SchemaError(f"schema {schema!r} is not supported; this version of localexit reads {supported}")
    return version


@dataclass(frozen=True)
class SamplesFile(f.PlainJson):
    """The per-sample archive beside a results file: its file name (in the results file's folder), its
    SHA-256 (an archive that is not this one is refused), its schema and its number of rows."""

    path: str
    sha256: str
    schema: str
    rows: int

    def __post_init__(self) -> None:
        for name in ("path", "sha256", "schema"):
            f.text(name, getattr(self, name))
        f.count("rows", self.rows)


_RESULTS_SINCE_3 = ("discarded_runs", "samples_file")


@dataclass(frozen=True)
class Results:
    """One results file: a point's configuration, the environment, its runs and their aggregate.

    ``discarded_runs`` are the attempts measured on a busy host and run again (``harness.busy``), kept
    apart from ``runs``, which alone the aggregate and every reader of figures use. The runs of a
    blocked study each carry their block, all of them or none, each block once (a study runs every point
    once per block).
    """

    config: ResultsConfig
    environment: Mapping[str, Any]
    runs: tuple[Run, ...]
    aggregate: Mapping[str, Aggregate | None]
    discarded_runs: tuple[Run, ...] = ()
    samples_file: SamplesFile | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "discarded_runs", tuple(self.discarded_runs))
        if not self.runs:
            raise ValueError("runs must hold at least one run")
        f.mapping("environment", self.environment)
        f.mapping("aggregate", self.aggregate)
        with_block = [i for i, run in enumerate(self.runs) if run.block is not None]
        if with_block and len(with_block) != len(self.runs):
            missing = next(i for i, run in enumerate(self.runs) if run.block is None)
            raise ValueError(f"runs[{missing}] has no block while other runs have one")
        seen: dict[int, int] = {}
        for i in with_block:
            block = self.runs[i].block
            assert block is not None
            if block in seen:
                raise ValueError(
                    f"runs[{seen[block]}] and runs[{i}] both ran in block {block}; a study runs each point "
                    "once per block"
                )
            seen[block] = i

    @property
    def blocked(self) -> bool:
        """Whether the runs carry the block they ran in (a blocked study)."""
        return self.runs[0].block is not None

    def with_extra(self, **recorded: Any) -> Results:
        """These results with more recorded top-level fields that no type models."""
        return replace(self, extra={**self.extra, **recorded})

    def to_json(self) -> dict[str, Any]:
        """The document as written, always in the current version (``RESULTS_SCHEMA``)."""
        return {
            **self.extra,
            "schema": RESULTS_SCHEMA,
            "config": self.config.to_json(),
            "environment": dict(self.environment),
            "runs": [run.to_json() for run in self.runs],
            "discarded_runs": [run.to_json() for run in self.discarded_runs],
            "aggregate": {k: None if a is None else a.to_json() for k, a in self.aggregate.items()},
            "samples_file": None if self.samples_file is None else self.samples_file.to_json(),
        }

    @classmethod
    def from_json(cls, data: object) -> Results:
        """Validate a decoded results document of any version this program reads and upgrade it to the
        current types; :class:`SchemaError` names the field that is wrong."""
        d = f.obj("", data)
        version = results_version(f.need("", d, "schema"))
        runs = f.need("", d, "runs")
        if not isinstance(runs, list) or not runs:
            raise SchemaError("runs must be a non-empty list of runs")
        since_3 = {k: f.need("", d, k) if version >= 3 else d.get(k) for k in _RESULTS_SINCE_3}
        discarded = since_3["discarded_runs"] or []
        if not isinstance(discarded, list):
            raise SchemaError("discarded_runs must be a list of runs")
        samples_file = since_3["samples_file"]
        aggregate = f.obj("aggregate", f.need("", d, "aggregate"))
        return f.build(
            "",
            cls,
            config=ResultsConfig.from_json(f.need("", d, "config"), "config", version),
            environment=f.obj("environment", f.need("", d, "environment")),
            runs=tuple(Run.from_json(run, f"runs[{i}]", version) for i, run in enumerate(runs)),
            aggregate={
                str(k): None if a is None else Aggregate.from_json(a, f"aggregate[{k!r}]")
                for k, a in aggregate.items()
            },
            discarded_runs=tuple(
                Run.from_json(run, f"discarded_runs[{i}]", version) for i, run in enumerate(discarded)
            ),
            samples_file=None
            if samples_file is None
            else SamplesFile.from_json(samples_file, "samples_file"),
            extra=f.rest(d, ("schema", "config", "environment", "runs", "aggregate", *_RESULTS_SINCE_3)),
        )


def read_results(path: str | Path) -> Results:
    """Read and validate a results file; :class:`SchemaError` names the file and the field."""
    return read_document(path, Results.from_json)


def write_results(path: str | Path, results: Results) -> None:
    """Write ``results`` to ``path`` atomically, as strict JSON in the current version."""
    write_json_atomic(path, results.to_json())
