"""The test node's result: per-sample records, per-batch procedures, written as "localexit-records/1".

See docs/INTERFACES.md for the schema. A :class:`RecordsResult` exists only for a complete run (the test
node raises instead of returning a partial one), and :func:`write_records` writes it atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models.atomic import write_json_atomic
from nodes.errors import UsageError
from nodes.timing import NS_PER_MS, BatchStamps, ClockEstimate, procedures_ms

RECORDS_SCHEMA = "localexit-records/1"


@dataclass(frozen=True)
class SampleRecord:
    id: int
    label: int
    pred: int
    exit: str
    entropy: float | None
    latency_ms: float
    cloud_entropy: float | None = None

    def __post_init__(self) -> None:
        if self.exit not in ("edge", "cloud"):
            raise ValueError(f"exit must be 'edge' or 'cloud', got {self.exit!r}")


@dataclass(frozen=True)
class BatchRecord:
    index: int
    size: int
    stamps: BatchStamps

    def __post_init__(self) -> None:
        if self.size != self.stamps.local + self.stamps.cloud:
            raise ValueError(f"batch {self.index}: size {self.size} != local + cloud")

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "size": self.size,
            "local": self.stamps.local,
            "cloud": self.stamps.cloud,
            "procedures_ms": procedures_ms(self.stamps),
            "latency_ms": (self.stamps.t_done - self.stamps.t_send) / NS_PER_MS,
        }


@dataclass(frozen=True)
class RecordsResult:
    """A complete run as the test node saw it (warm-up batches excluded)."""

    config: dict[str, Any]
    samples: tuple[SampleRecord, ...]
    batches: tuple[BatchRecord, ...]
    first_send_ns: int
    last_recv_ns: int
    warmup_batches: int
    clock: dict[str, ClockEstimate] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a run needs at least one measured sample")
        if sum(b.size for b in self.batches) != len(self.samples):
            raise ValueError("batch sizes do not add up to the number of samples")
        if self.last_recv_ns < self.first_send_ns:
            raise ValueError("last_recv_ns is before first_send_ns")

    @property
    def overall_latency_ms(self) -> float:
        """Paper §4.1: time from sending the first image to receiving the last prediction, per sample."""
        return (self.last_recv_ns - self.first_send_ns) / NS_PER_MS / len(self.samples)

    def to_json(self) -> dict[str, Any]:
        def num(x: float | None) -> float | None:
            return None if x is None or math.isnan(x) else x

        s = self.samples
        return {
            "schema": RECORDS_SCHEMA,
            "config": dict(self.config),
            "samples": {
                "id": [r.id for r in s],
                "label": [r.label for r in s],
                "pred": [r.pred for r in s],
                "exit": [r.exit for r in s],
                "entropy": [num(r.entropy) for r in s],
                "latency_ms": [r.latency_ms for r in s],
                "cloud_entropy": [num(r.cloud_entropy) for r in s],
            },
            "batches": [b.to_json() for b in self.batches],
            "overall": {
                "first_send_ns": self.first_send_ns,
                "last_recv_ns": self.last_recv_ns,
                "measured_samples": len(s),
                "overall_latency_ms": self.overall_latency_ms,
            },
            "warmup": {"batches": self.warmup_batches},
            "clock": {
                node: {
                    "offset_ns": c.offset_ns,
                    "rtt_ns": c.rtt_ns,
                    "uncertainty_ns": c.uncertainty_ns,
                    "probes": c.probes,
                }
                for node, c in self.clock.items()
            },
            "nodes": self.nodes,
        }


def write_records(result: RecordsResult, path: str | Path) -> Path:
    """Write ``result`` as JSON to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    try:
        write_json_atomic(path, result.to_json(), indent=None, allow_nan=False)
    except OSError as exc:
        raise UsageError(f"cannot write records to {path}: {exc.strerror or exc}") from exc
    return path
