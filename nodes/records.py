"""The test node's result: per-sample records and per-batch procedures of one run, as the contract's
``localexit-records/1`` document (:class:`contract.records.Records`, which defines and checks it).

A :class:`RecordsResult` exists only for a complete run (the test node raises instead of returning a
partial one); it turns its stamps into the document when built, and :func:`write_records` writes that
atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.atomic import write_json_atomic
from contract.records import BatchTimes, Overall, Records, Samples
from nodes.errors import UsageError
from nodes.timing import NS_PER_MS, BatchStamps, ClockCheck, NodeClock, procedures_ms

#: Key of the records document (and of a results run) holding, per measured batch, the exit an edge with
#: an exit policy chose and why: ``{"exit", "policy", "reason", "rate_bps", "rtt_ms", "expected_ms",
#: "run_s"}`` (see nodes.policy.Decision); absent for a fixed-exit run.
EXIT_DECISIONS = "exit_decisions"


@dataclass(frozen=True)
class SampleRecord:
    id: int
    label: int
    pred: int
    exit: str  # "edge" or "cloud" (contract.names.EXIT_SOURCES)
    entropy: float | None
    latency_ms: float
    cloud_entropy: float | None = None


@dataclass(frozen=True)
class BatchRecord:
    index: int
    size: int
    stamps: BatchStamps

    def to_times(self) -> BatchTimes:
        """The batch as the records file stores it: its counts and the time of each procedure (ms)."""
        return BatchTimes(
            index=self.index,
            size=self.size,
            local=self.stamps.local,
            cloud=self.stamps.cloud,
            procedures_ms=procedures_ms(self.stamps),
            latency_ms=(self.stamps.t_done - self.stamps.t_send) / NS_PER_MS,
        )

    def to_json(self) -> dict[str, Any]:
        return self.to_times().to_json()


def _number(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


@dataclass(frozen=True)
class RecordsResult:
    """A complete run as the test node saw it (warm-up batches excluded). ``records`` is the document it
    makes, built (and so checked) with the result: a run the contract would refuse raises ``ValueError``."""

    config: dict[str, Any]
    samples: tuple[SampleRecord, ...]
    batches: tuple[BatchRecord, ...]
    first_send_ns: int
    last_recv_ns: int
    warmup_batches: int
    clock: dict[str, NodeClock] = field(default_factory=dict)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    clock_check: ClockCheck | None = None
    # Per measured batch, the exit an edge with an exit policy chose and why (None each: a fixed exit);
    # recorded as the document's ``EXIT_DECISIONS`` list only when some batch has one.
    decisions: tuple[dict[str, Any] | None, ...] = ()
    records: Records = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a run needs at least one measured sample")
        s = self.samples
        records = Records(
            config=dict(self.config),
            samples=Samples(
                id=tuple(r.id for r in s),
                label=tuple(r.label for r in s),
                pred=tuple(r.pred for r in s),
                exit=tuple(r.exit for r in s),
                entropy=tuple(_number(r.entropy) for r in s),
                latency_ms=tuple(r.latency_ms for r in s),
                cloud_entropy=tuple(_number(r.cloud_entropy) for r in s),
            ),
            batches=tuple(b.to_times() for b in self.batches),
            overall=Overall(
                first_send_ns=self.first_send_ns,
                last_recv_ns=self.last_recv_ns,
                measured_samples=len(s),
                overall_latency_ms=self.overall_latency_ms,
            ),
            warmup_batches=self.warmup_batches,
            clock={node: c.to_json() for node, c in self.clock.items()},
            nodes=self.nodes,
            extra={
                "clock_check": None if self.clock_check is None else self.clock_check.to_json(),
                **({EXIT_DECISIONS: list(self.decisions)} if any(self.decisions) else {}),
            },
        )
        object.__setattr__(self, "records", records)

    @property
    def overall_latency_ms(self) -> float:
        """Paper §4.1: time from sending the first image to receiving the last prediction, per sample."""
        return (self.last_recv_ns - self.first_send_ns) / NS_PER_MS / len(self.samples)

    def to_json(self) -> dict[str, Any]:
        return self.records.to_json()


def write_records(result: RecordsResult, path: str | Path) -> Path:
    """Write ``result`` as JSON to ``path`` atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    try:
        write_json_atomic(path, result.to_json(), indent=None)
    except OSError as exc:
        raise UsageError(f"cannot write records to {path}: {exc.strerror or exc}") from exc
    return path
