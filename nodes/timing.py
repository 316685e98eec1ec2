"""Where each procedure of the paper's Fig. 4 starts and ends, and how the test node computes them.

All stamps are ``time.monotonic_ns()``. On one host every process and network namespace reads the same
``CLOCK_MONOTONIC``, so differences between stamps of different nodes are exact. Across hosts they
carry the clocks' offset; the test node records NTP-style probe estimates (:func:`clock_offset`) so
that the harness can report that uncertainty.

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

from collections.abc import Sequence
from dataclasses import dataclass

NS_PER_MS = 1_000_000


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
    the true offset lies within ± ``uncertainty_ns`` (half that RTT minus the peer's turnaround)."""

    offset_ns: int
    rtt_ns: int
    uncertainty_ns: int
    probes: int

    def __post_init__(self) -> None:
        if self.rtt_ns < 0 or self.uncertainty_ns < 0 or self.probes < 1:
            raise ValueError("rtt and uncertainty must be >= 0 and probes >= 1")


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
    return ClockEstimate(offset_ns=offset, rtt_ns=r, uncertainty_ns=r // 2, probes=len(samples))
