"""The test node's records of one run (``localexit-records/1``): what each measured sample did and how
long each batch's procedures took, before any statistic.

The test node writes them (``nodes.records``); the harness reads them to build a run of the results file
(``harness.results``). Samples are stored column-wise, one list per field, in the order they arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from contract import _fields as f
from contract.errors import SchemaError
from contract.jsonfile import read_document
from contract.names import EXIT_SOURCES, PROCEDURES, RECORDS_SCHEMA


@dataclass(frozen=True)
class Samples:
    """The measured samples, one tuple per column. ``entropy`` is the normalized entropy at the local exit
    (None where the edge has no exit head), ``cloud_entropy`` the cloud exit's (None for samples that
    exited at the edge, and for the whole column when the file does not record it)."""

    id: tuple[int, ...]
    label: tuple[int, ...]
    pred: tuple[int, ...]
    exit: tuple[str, ...]  # each one of EXIT_SOURCES
    entropy: tuple[float | None, ...]
    latency_ms: tuple[float, ...]
    cloud_entropy: tuple[float | None, ...] | None = None

    def __post_init__(self) -> None:
        columns = [c.name for c in fields(self) if getattr(self, c.name) is not None]
        for name in columns:
            if not isinstance(getattr(self, name), list | tuple):
                raise ValueError(f"{name} must be a list")
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n = len(self.id)
        if not n or any(len(getattr(self, name)) != n for name in columns):
            raise ValueError(f"columns are empty or of different lengths ({n} ids)")
        for name in ("id", "label", "pred"):
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in getattr(self, name)):
                raise ValueError(f"{name} must be a list of integers")
        if any(e not in EXIT_SOURCES for e in self.exit):
            raise ValueError("exit must hold 'edge' or 'cloud' for each sample")
        object.__setattr__(self, "latency_ms", f.numbers("latency_ms", self.latency_ms))
        for name in ("entropy", "cloud_entropy"):
            column = getattr(self, name)
            if column is not None:
                object.__setattr__(
                    self, name, tuple(f.optional_number(name, v, lo=0.0, hi=1.0) for v in column)
                )

    def __len__(self) -> int:
        return len(self.id)

    def to_json(self) -> dict[str, list[Any]]:
        return {
            c.name: list(getattr(self, c.name)) for c in fields(self) if getattr(self, c.name) is not None
        }

    @classmethod
    def from_json(cls, data: object, where: str = "samples") -> Samples:
        d = f.obj(where, data)
        columns = {c.name: f.need(where, d, c.name) for c in fields(cls) if c.name != "cloud_entropy"}
        return f.build(where, cls, **columns, cloud_entropy=d.get("cloud_entropy"))


@dataclass(frozen=True)
class BatchTimes(f.PlainJson):
    """One measured batch: its size, how many of its samples exited where, and the time (ms) of each
    procedure it went through (3-1 only with a local exit, 3-2/4/5 only with a cloud exit)."""

    index: int
    size: int
    local: int
    cloud: int
    procedures_ms: Mapping[str, float]
    latency_ms: float

    def __post_init__(self) -> None:
        for name in ("index", "size", "local", "cloud"):
            f.count(name, getattr(self, name))
        if self.local + self.cloud != self.size:
            raise ValueError(f"size {self.size} is not local {self.local} + cloud {self.cloud}")
        procs = f.mapping("procedures_ms", self.procedures_ms)
        unknown = [p for p in procs if p not in PROCEDURES]
        if unknown:
            raise ValueError(
                f"procedures_ms has unknown procedures {unknown} (known: {', '.join(PROCEDURES)})"
            )
        object.__setattr__(
            self,
            "procedures_ms",
            {p: f.number(f"procedures_ms[{p!r}]", procs[p]) for p in PROCEDURES if p in procs},
        )
        object.__setattr__(self, "latency_ms", f.number("latency_ms", self.latency_ms))


@dataclass(frozen=True)
class Overall(f.PlainJson):
    """The measured phase as a whole: the paper's overall latency, (last prediction received − first
    batch sent) / samples, and the two instants on the test node's clock (None where not recorded)."""

    OPTIONAL = ("first_send_ns", "last_recv_ns", "measured_samples")

    overall_latency_ms: float
    first_send_ns: int | None = None
    last_recv_ns: int | None = None
    measured_samples: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "overall_latency_ms", f.number("overall_latency_ms", self.overall_latency_ms, lo=0.0)
        )
        for name in ("first_send_ns", "last_recv_ns", "measured_samples"):
            f.optional_count(name, getattr(self, name))

    def to_json(self) -> dict[str, Any]:
        return {c.name: getattr(self, c.name) for c in fields(self) if getattr(self, c.name) is not None}


_TOP = ("schema", "config", "samples", "batches", "overall", "warmup", "clock", "nodes")


@dataclass(frozen=True)
class Records:
    """A complete run as the test node saw it (warm-up batches excluded). ``clock`` (how each node's
    stamps were brought onto the test node's clock) and ``nodes`` (what each node reported about itself)
    are kept as recorded, as is every field this type does not model (``extra``)."""

    config: Mapping[str, Any]
    samples: Samples
    batches: tuple[BatchTimes, ...]
    overall: Overall
    warmup_batches: int = 0
    clock: Mapping[str, Any] = field(default_factory=dict)
    nodes: Mapping[str, Any] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "batches", tuple(self.batches))
        if not self.batches:
            raise ValueError("batches: the records hold no measured batch")
        sizes = sum(b.size for b in self.batches)
        if sizes != len(self.samples):
            raise ValueError(
                f"batches: their sizes add up to {sizes}, not to the {len(self.samples)} samples"
            )
        f.count("warmup_batches", self.warmup_batches)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": RECORDS_SCHEMA,
            "config": dict(self.config),
            "samples": self.samples.to_json(),
            "batches": [b.to_json() for b in self.batches],
            "overall": self.overall.to_json(),
            "warmup": {"batches": self.warmup_batches},
            "clock": dict(self.clock),
            "nodes": dict(self.nodes),
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: object) -> Records:
        """Validate a decoded records document; :class:`SchemaError` names the field that is wrong."""
        d = f.obj("", data)
        schema = f.need("", d, "schema")
        if schema != RECORDS_SCHEMA:
            raise SchemaError(
                f"schema {schema!r} is not supported; this version of localexit reads {RECORDS_SCHEMA!r}"
            )
        batches = f.need("", d, "batches")
        if not isinstance(batches, list):
            raise SchemaError("batches must be a list")
        warmup = f.obj("warmup", d.get("warmup", {}))
        return f.build(
            "",
            cls,
            config=f.obj("config", d.get("config", {})),
            samples=Samples.from_json(f.need("", d, "samples")),
            batches=tuple(BatchTimes.from_json(b, f"batches[{i}]") for i, b in enumerate(batches)),
            overall=Overall.from_json(f.need("", d, "overall"), "overall"),
            warmup_batches=warmup.get("batches", 0),
            clock=f.obj("clock", d.get("clock") or {}),
            nodes=f.obj("nodes", d.get("nodes") or {}),
            extra=f.rest(d, _TOP),
        )


def read_records(path: str | Path) -> Records:
    """Read and validate a records file; :class:`SchemaError` names the file and the field."""
    return read_document(path, Records.from_json)
