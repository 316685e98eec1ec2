"""Where each procedure of the paper's Fig. 4 starts and ends, and how the test node computes them.

All stamps are ``time.monotonic_ns()``. On one host every process and network namespace reads the same
``CLOCK_MONOTONIC``, so differences between stamps of different nodes are exact -- unless a node runs in
a time namespace of its own, whose ``CLOCK_MONOTONIC`` may be shifted by any amount. Each node names its
clock in ready (:func:`clock_domain`: the boot id and the time namespace). A node whose clock is the
test node's is used as it is ("shared-clock"); for any other the test node estimates the offset with
NTP-style probes before and after the run (:func:`clock_offset`, :class:`NodeClock`) and brings that
node's stamps onto its own clock before any procedure is computed ("offset-corrected",
:func:`correct_stamps`). :func:`check_clocks` then says whether the offsets' uncertainty or drift is
too large for the procedures they correct.

Stamps (the node that takes it, and when)::

    t_send        test   just before the batch message is serialised
    t_edge_recv   edge   just after the batch message is received and deserialised
    t_edge_done   edge   after normalisation, blocks 1..k, exit head k, entropy and the ε < T split,
                         before anything is serialised
    t_edge_reply  test   just after the edge's predictions are received and deserialised
    t_cloud_recv  cloud  just after the features are received and deserialised
    t_cloud_done  cloud  after blocks k+1..9 and the cloud head, before serialising the predictions
    t_cloud_reply test   just after the cloud's predictions are received and deserialised

Procedures (per batch), so that serialisation counts in the transfer it belongs to::

    1    t_edge_recv  - t_send        serialise, send, receive, deserialise the images (test → edge);
                                      with several batches in flight it includes waiting in the edge's
                                      socket buffer while the edge computes an earlier batch
    2    t_edge_done  - t_edge_recv   edge compute incl. exit head and entropy
    3-1  t_edge_reply - t_edge_done   confident predictions edge → test (serialise ... deserialise)
    3-2  t_cloud_recv - t_edge_done   features edge → cloud; the edge answers the test node first, so
                                      this includes writing that (small) reply to the kernel
    4    t_cloud_done - t_cloud_recv  cloud compute
    5    t_cloud_reply - t_cloud_done predictions cloud → test

Per-sample latency: edge exits ``t_edge_reply - t_send`` (= 1 + 2 + 3-1), cloud exits
``t_cloud_reply - t_send`` (= 1 + 2 + 3-2 + 4 + 5); batch latency is the later of the two minus
``t_send``. "3-1" is reported only when some sample exited at the edge, "3-2"/"4"/"5" only when some
went to the cloud.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from nodes.errors import NodeError

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000
SHARED_CLOCK = "shared-clock"
OFFSET_CORRECTED = "offset-corrected"
CLOCK_METHODS = (SHARED_CLOCK, OFFSET_CORRECTED)
#: The nodes other than the test node whose stamps each procedure subtracts (procedures 2 and 4 are
#: differences of one node's own stamps and need no correction).
CROSSING: Mapping[str, tuple[str, ...]] = {
    "1": ("edge",),
    "3-1": ("edge",),
    "3-2": ("edge", "cloud"),
    "5": ("cloud",),
}
#: The clocks are trusted when, for every procedure that crosses nodes, both the offsets' uncertainty
#: and how far they drifted during the run stay within this fraction of the procedure's mean. 10 % is
#: the regression check's default tolerance (``harness check --tolerance``): a clock error above it
#: could by itself fake or hide the smallest slow-down that check reports, while an error below it
#: keeps every corrected mean within the precision the project claims for its comparisons.
CLOCK_BOUND_FRACTION = 0.10


@dataclass(frozen=True)
class BatchStamps:
    """The stamps of one batch (``None`` for the cloud path when no sample went there)."""

    t_send: int
    t_edge_recv: int
    t_edge_done: int
    t_edge_reply: int
    local: int
    cloud: int
    t_cloud_recv: int | None = None
    t_cloud_done: int | None = None
    t_cloud_reply: int | None = None

    def __post_init__(self) -> None:
        cloud_stamps = (self.t_cloud_recv, self.t_cloud_done, self.t_cloud_reply)
        if self.cloud > 0 and any(t is None for t in cloud_stamps):
            raise ValueError("a batch with cloud exits needs all three cloud stamps")
        if self.local < 0 or self.cloud < 0:
            raise ValueError("local and cloud counts must be >= 0")

    @property
    def t_done(self) -> int:
        """When the last prediction of the batch arrived."""
        ends = [self.t_edge_reply]
        if self.cloud and self.t_cloud_reply is not None:
            ends.append(self.t_cloud_reply)
        return max(ends)


def procedures_ms(s: BatchStamps) -> dict[str, float]:
    """The procedures of Fig. 4 for one batch, in milliseconds (see the module docstring)."""
    out = {
        "1": (s.t_edge_recv - s.t_send) / NS_PER_MS,
        "2": (s.t_edge_done - s.t_edge_recv) / NS_PER_MS,
    }
    if s.local:
        out["3-1"] = (s.t_edge_reply - s.t_edge_done) / NS_PER_MS
    if s.cloud:
        assert s.t_cloud_recv is not None and s.t_cloud_done is not None and s.t_cloud_reply is not None
        out["3-2"] = (s.t_cloud_recv - s.t_edge_done) / NS_PER_MS
        out["4"] = (s.t_cloud_done - s.t_cloud_recv) / NS_PER_MS
        out["5"] = (s.t_cloud_reply - s.t_cloud_done) / NS_PER_MS
    return out


@dataclass(frozen=True)
class ClockEstimate:
    """Offset of a peer's clock relative to ours (peer − local), from the probe with the smallest RTT;
    the true offset lies within ± ``uncertainty_ns`` (half that RTT minus the peer's turnaround).
    ``at_ns`` is when, on our clock, that probe was half-way (the instant the offset belongs to)."""

    offset_ns: int
    rtt_ns: int
    uncertainty_ns: int
    probes: int
    at_ns: int = 0

    def __post_init__(self) -> None:
        if self.rtt_ns < 0 or self.uncertainty_ns < 0 or self.probes < 1:
            raise ValueError("rtt and uncertainty must be >= 0 and probes >= 1")

    def to_json(self) -> dict[str, int]:
        return dataclasses.asdict(self)


def clock_offset(samples: Sequence[tuple[int, int, int, int]]) -> ClockEstimate:
    """NTP offset estimate from (t0 local send, t1 peer recv, t2 peer reply, t3 local recv) tuples,
    keeping the probe with the minimum round-trip time (the least queuing, hence the tightest bound)."""
    if not samples:
        raise ValueError("need at least one clock probe")

    def rtt(p: tuple[int, int, int, int]) -> int:
        t0, t1, t2, t3 = p
        return (t3 - t0) - (t2 - t1)

    best = min(samples, key=rtt)
    t0, t1, t2, t3 = best
    offset = ((t1 - t0) + (t2 - t3)) // 2
    r = max(rtt(best), 0)
    return ClockEstimate(
        offset_ns=offset, rtt_ns=r, uncertainty_ns=r // 2, probes=len(samples), at_ns=(t0 + t3) // 2
    )


class ClockError(NodeError):
    """The clock offsets are not known well enough for the procedures they correct, and the run was
    asked to fail for that (``--strict-clocks``): a failed measurement, exit code 1."""


def clock_domain() -> str | None:
    """What identifies this process's ``CLOCK_MONOTONIC``: the boot id and the time namespace.

    Two processes with the same domain read the same clock. The boot id alone is not enough (a time
    namespace may shift the clock by any amount), nor the namespace alone (the initial time namespace
    has the same inode number on every machine). A kernel without time namespaces has one clock per
    boot. ``None`` where the kernel says neither (not Linux): such a node's clock is always corrected.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot_id = f.read().strip()
    except OSError:
        return None
    try:
        namespace = os.readlink("/proc/self/ns/time")
    except FileNotFoundError:
        namespace = "no-time-namespaces"
    except OSError:
        return None
    return f"{boot_id} {namespace}"


@dataclass(frozen=True)
class NodeClock:
    """How one node's stamps are brought onto the test node's clock, from probes before and after the
    run. ``shared-clock``: the node reads the test node's clock, its stamps are used as they are (the
    probes are kept as a check). ``offset-corrected``: the offset is interpolated linearly between the
    two probes at the instant of each batch, so a steady drift of the two clocks is corrected too."""

    method: str
    before: ClockEstimate
    after: ClockEstimate
    domain: str | None = None

    def __post_init__(self) -> None:
        if self.method not in CLOCK_METHODS:
            raise ValueError(f"method must be one of {CLOCK_METHODS}, got {self.method!r}")
        if self.after.at_ns < self.before.at_ns:
            raise ValueError("the clock probe after the run is earlier than the one before it")

    @property
    def corrected(self) -> bool:
        return self.method == OFFSET_CORRECTED

    def offset_at(self, t_ns: int) -> int:
        """The node's offset (node − test) at ``t_ns`` on the test node's clock; 0 for a shared clock."""
        if not self.corrected:
            return 0
        b, a = self.before, self.after
        span = a.at_ns - b.at_ns
        if span == 0:
            return (b.offset_ns + a.offset_ns) // 2
        return b.offset_ns + (a.offset_ns - b.offset_ns) * (t_ns - b.at_ns) // span

    @property
    def offset_ns(self) -> int:
        """The offset applied half-way between the probes (0 for a shared clock)."""
        return self.offset_at((self.before.at_ns + self.after.at_ns) // 2)

    @property
    def uncertainty_ns(self) -> int:
        """Bound on the error of an applied offset: the larger of the two probes' (0 for a shared
        clock, which is exact). A value interpolated between two offsets each within ± u is within ± u."""
        return max(self.before.uncertainty_ns, self.after.uncertainty_ns) if self.corrected else 0

    @property
    def drift_ns(self) -> int:
        """How far the offset moved between the probes (what a non-linear wander could be wrong by)."""
        return self.after.offset_ns - self.before.offset_ns

    @property
    def drift_ns_per_s(self) -> float | None:
        span = self.after.at_ns - self.before.at_ns
        return self.drift_ns * NS_PER_S / span if span > 0 else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "offset_ns": self.offset_ns,
            "uncertainty_ns": self.uncertainty_ns,
            "rtt_ns": min(self.before.rtt_ns, self.after.rtt_ns),
            "probes": self.before.probes + self.after.probes,
            "before": self.before.to_json(),
            "after": self.after.to_json(),
            "drift_ns_per_s": self.drift_ns_per_s,
            "domain": self.domain,
        }


def node_clock(
    before: ClockEstimate, after: ClockEstimate, *, peer_domain: str | None, local_domain: str | None
) -> NodeClock:
    """The :class:`NodeClock` of a peer: shared when it named the same clock domain as ours."""
    shared = peer_domain is not None and peer_domain == local_domain
    return NodeClock(SHARED_CLOCK if shared else OFFSET_CORRECTED, before, after, peer_domain)


def correct_stamps(s: BatchStamps, edge: NodeClock, cloud: NodeClock) -> BatchStamps:
    """``s`` with the edge's and the cloud's stamps moved onto the test node's clock (each node's offset
    taken at the batch's ``t_send``: a batch lasts far too little for the drift to matter within it)."""
    e, c = edge.offset_at(s.t_send), cloud.offset_at(s.t_send)
    return dataclasses.replace(
        s,
        t_edge_recv=s.t_edge_recv - e,
        t_edge_done=s.t_edge_done - e,
        t_cloud_recv=None if s.t_cloud_recv is None else s.t_cloud_recv - c,
        t_cloud_done=None if s.t_cloud_done is None else s.t_cloud_done - c,
    )


@dataclass(frozen=True)
class ClockCheck:
    """Whether the clock corrections are good enough for the procedures they enter: per procedure that
    crosses nodes, its mean, the offsets' uncertainty and drift in it, the bound, and a warning for
    each that exceeds the bound (none: the clocks are trusted)."""

    bound_fraction: float
    procedures: Mapping[str, Mapping[str, float]]
    warnings: tuple[str, ...] = ()

    @property
    def trusted(self) -> bool:
        return not self.warnings

    def to_json(self) -> dict[str, Any]:
        return {
            "bound_fraction": self.bound_fraction,
            "procedures": {p: dict(v) for p, v in self.procedures.items()},
            "warnings": list(self.warnings),
            "trusted": self.trusted,
        }


def check_clocks(
    batches: Sequence[BatchStamps],
    clocks: Mapping[str, NodeClock],
    fraction: float = CLOCK_BOUND_FRACTION,
) -> ClockCheck:
    """Compare, for each procedure that crosses nodes, the clock error it may carry with ``fraction`` of
    its mean over ``batches`` (stamps already corrected). The error is the sum over the nodes involved
    of the offset's uncertainty, and separately of its drift during the run; nodes on the shared clock
    add nothing. A mean that came out negative always fails: no procedure takes negative time.

    Why the drift counts although it is interpolated: two probes cannot tell a steady drift from a step
    (an NTP correction) somewhere between them, and after a step the interpolated offset can be wrong by
    up to the whole change; the change is what the correction can guarantee."""
    sums: dict[str, list[float]] = {}
    for s in batches:
        for p, v in procedures_ms(s).items():
            if p in CROSSING:
                sums.setdefault(p, []).append(v)
    procedures: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    for p, values in sums.items():
        mean = sum(values) / len(values)
        involved = {n: clocks[n] for n in CROSSING[p]}
        uncertainty = sum(c.uncertainty_ns for c in involved.values()) / NS_PER_MS
        drift = sum(abs(c.drift_ns) for c in involved.values() if c.corrected) / NS_PER_MS
        bound = fraction * mean
        procedures[p] = {"mean_ms": mean, "uncertainty_ms": uncertainty, "drift_ms": drift, "bound_ms": bound}
        how = ", ".join(
            f"{n} {c.method}" + (f" ± {c.uncertainty_ns / NS_PER_MS:.3f} ms" if c.corrected else "")
            for n, c in involved.items()
        )
        if uncertainty > bound:
            warnings.append(
                f"procedure {p} (mean {mean:.3f} ms) is uncertain by ± {uncertainty:.3f} ms from the clock "
                f"offsets ({how}), more than {fraction:.0%} of its mean"
            )
        if drift > bound:
            warnings.append(
                f"procedure {p} (mean {mean:.3f} ms): the clock offsets ({how}) moved by {drift:.3f} ms "
                f"during the run, more than {fraction:.0%} of its mean"
            )
    return ClockCheck(fraction, procedures, tuple(warnings))
