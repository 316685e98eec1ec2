"""Exit policies of a multi-exit edge: which local exit each batch is cut at (torch-free).

A policy decides from a :class:`Profile` -- per exit, what a batch costs on the edge, how many bytes a
sample's features take, how many samples exit locally at the threshold, what the cloud's part costs --
and from the link: the expected per-sample latency of a batch of ``n`` samples cut at exit k is

    edge(k) + u·(u·n·bytes(k)·8 / rate + rtt + cloud(k)),        u = 1 − local_rate(k)

(the local samples wait for the edge only; the fraction u waits for the features of all unsure samples
to cross the link, a round trip, and the cloud's part).

* ``fixed``: today's behaviour, one exit for every batch.
* ``adaptive``: estimates the link from the edge's own traffic (:class:`LinkEstimator`, an EWMA of the
  round trip of a small probe and of the time per byte of each batch's features) and picks the exit
  of least expected latency -- or, with a latency objective (SLO), the most accurate exit expected to
  meet it -- and changes exit only after the same better exit won ``patience`` batches in a row by more
  than ``margin``, so one odd batch does not make it flap.
* ``oracle``: knows the link as scheduled (:class:`LinkTruth`) and picks the best exit for the link at
  that moment, with no hysteresis: the bound the adaptive policy is measured against.
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

from contract import _fields as f
from contract.atomic import write_json_atomic
from contract.errors import SchemaError
from contract.jsonfile import read_document
from contract.names import PROFILE_SCHEMA
from contract.rules import check_batch_size, check_threshold

PolicyName = Literal["fixed", "adaptive", "oracle"]
POLICIES: tuple[str, ...] = get_args(PolicyName)

#: The adaptive policy switches when the better exit is expected to be this much faster (a fraction of
#: the current exit's expected latency): below it, the profile's own noise would make it flap.
DEFAULT_MARGIN = 0.10
#: ... for this many batches in a row, so that a single slow or fast batch never moves it.
DEFAULT_PATIENCE = 3
#: Weight of the newest observation in the link estimates: about the last five batches count.
DEFAULT_ALPHA = 0.3
# A transfer shorter than this is below what the clocks and the event loop resolve: the rate it implies
# would be noise, so it counts as this long.
_MIN_TRANSFER_MS = 0.05


def _finite(name: str, value: float, lo: float = 0.0) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= lo):
        raise ValueError(f"{name} must be a finite number ≥ {lo:g}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExitProfile:
    """What exit ``exit`` costs: edge compute per batch (ms), feature bytes per sample, the fraction of
    samples that exit locally at the profile's threshold, cloud compute per batch (ms), and optionally
    the overall accuracy of a run at this exit (for the SLO variant). ``threshold``/``temperature``: this
    exit's own, where a calibration file gave each exit its own (None/1: the profile's threshold)."""

    exit: int
    edge_ms: float
    feature_bytes: float
    local_rate: float
    cloud_ms: float
    accuracy: float | None = None
    threshold: float | None = None
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.threshold is not None:
            check_threshold(self.threshold)
        if not _finite("temperature", self.temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if isinstance(self.exit, bool) or not isinstance(self.exit, int) or self.exit < 0:
            raise ValueError(f"exit must be an integer ≥ 0, got {self.exit!r}")
        for name in ("edge_ms", "feature_bytes", "cloud_ms"):
            object.__setattr__(self, name, _finite(name, getattr(self, name)))
        if not 0.0 <= _finite("local_rate", self.local_rate) <= 1.0:
            raise ValueError(f"local_rate must be in [0, 1], got {self.local_rate}")
        if self.accuracy is not None and not 0.0 <= _finite("accuracy", self.accuracy) <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got {self.accuracy}")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "exit": self.exit,
            "edge_ms": self.edge_ms,
            "feature_bytes": self.feature_bytes,
            "local_rate": self.local_rate,
            "cloud_ms": self.cloud_ms,
        }
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.temperature != 1.0:
            out["temperature"] = self.temperature
        return out

    @classmethod
    def from_json(cls, data: object, where: str) -> ExitProfile:
        d = f.obj(where, data)
        keys = ("exit", "edge_ms", "feature_bytes", "local_rate", "cloud_ms")
        return f.build(
            where,
            cls,
            **{k: f.need(where, d, k) for k in keys},
            accuracy=d.get("accuracy"),
            threshold=d.get("threshold"),
            temperature=d.get("temperature", 1.0),
        )


@dataclass(frozen=True)
class LinkEstimate:
    """The edge–cloud link as a policy sees it: rate (bit/s) and round trip (ms)."""

    rate_bps: float
    rtt_ms: float

    def __post_init__(self) -> None:
        if not _finite("rate_bps", self.rate_bps) > 0:
            raise ValueError(f"rate_bps must be > 0, got {self.rate_bps}")
        _finite("rtt_ms", self.rtt_ms)

    def to_json(self) -> dict[str, float]:
        return {"rate_bps": self.rate_bps, "rtt_ms": self.rtt_ms}


@dataclass(frozen=True)
class Profile:
    """Per-exit costs for one checkpoint, batch size and threshold (``localexit-profile/1``), and the
    link they were measured over (the adaptive policy's estimate before its first observation)."""

    batch_size: int
    threshold: float
    exits: tuple[ExitProfile, ...]
    link: LinkEstimate
    model: str | None = None
    sha256: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "exits", tuple(sorted(self.exits, key=lambda e: e.exit)))
        if not self.exits:
            raise ValueError("a profile needs at least one exit")
        if len({e.exit for e in self.exits}) != len(self.exits):
            raise ValueError("a profile has one entry per exit")
        check_batch_size(self.batch_size)
        check_threshold(self.threshold)

    @property
    def exit_numbers(self) -> tuple[int, ...]:
        return tuple(e.exit for e in self.exits)

    def at(self, exit: int) -> ExitProfile:
        for e in self.exits:
            if e.exit == exit:
                return e
        raise KeyError(exit)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": PROFILE_SCHEMA,
            "model": self.model,
            "sha256": self.sha256,
            "batch_size": self.batch_size,
            "threshold": self.threshold,
            "link": self.link.to_json(),
            "exits": [e.to_json() for e in self.exits],
            **self.extra,
        }

    @classmethod
    def from_json(cls, data: object) -> Profile:
        d = f.obj("", data)
        schema = f.need("", d, "schema")
        if schema != PROFILE_SCHEMA:
            raise SchemaError(f"schema {schema!r} is not supported; this version reads {PROFILE_SCHEMA!r}")
        exits = f.need("", d, "exits")
        if not isinstance(exits, list):
            raise SchemaError("exits must be a list")
        link = f.obj("link", f.need("", d, "link"))
        return f.build(
            "",
            cls,
            batch_size=f.need("", d, "batch_size"),
            threshold=f.need("", d, "threshold"),
            exits=tuple(ExitProfile.from_json(e, f"exits[{i}]") for i, e in enumerate(exits)),
            link=f.build(
                "link",
                LinkEstimate,
                rate_bps=f.need("link", link, "rate_bps"),
                rtt_ms=f.need("link", link, "rtt_ms"),
            ),
            model=d.get("model"),
            sha256=d.get("sha256"),
            extra=f.rest(d, ("schema", "model", "sha256", "batch_size", "threshold", "link", "exits")),
        )


def read_profile(path: str | Path) -> Profile:
    """Read and check a profile file; :class:`SchemaError` names the file and the field."""
    return read_document(path, Profile.from_json)


def write_profile(profile: Profile, path: str | Path) -> Path:
    """Write ``profile`` atomically (temporary file + rename)."""
    write_json_atomic(Path(path), profile.to_json())
    return Path(path)


def expected_latency_ms(p: ExitProfile, n: int, link: LinkEstimate) -> float:
    """Expected per-sample latency (ms) of a batch of ``n`` cut at ``p.exit`` over ``link`` (module doc)."""
    u = 1.0 - p.local_rate
    transfer_ms = u * n * p.feature_bytes * 8.0 / link.rate_bps * 1000.0
    return p.edge_ms + u * (transfer_ms + link.rtt_ms + p.cloud_ms)


def best_exit(profile: Profile, n: int, link: LinkEstimate, slo_ms: float | None = None) -> tuple[int, str]:
    """The exit to use for ``link`` and why: least expected latency, or with ``slo_ms`` the most accurate
    exit expected to meet it (ties: the faster), and the fastest when none is expected to."""
    expected = {e.exit: expected_latency_ms(e, n, link) for e in profile.exits}
    fastest = min(expected, key=lambda k: (expected[k], k))
    if slo_ms is None:
        return fastest, "fastest"
    fits = [e for e in profile.exits if expected[e.exit] <= slo_ms]
    if not fits:
        return fastest, "none meets the slo"
    if any(e.accuracy is None for e in fits):
        raise ValueError("a latency objective needs the accuracy of every exit in the profile")
    best = max(fits, key=lambda e: (e.accuracy, -expected[e.exit], -e.exit))
    return best.exit, "most accurate within the slo"


@dataclass(frozen=True)
class Decision:
    """The exit chosen for one batch and why: the policy, its reason, the link it assumed and the
    latency it expected (None for a fixed exit). Travels to the test node in ``Predictions.decision``."""

    exit: int
    policy: str
    reason: str
    rate_bps: float | None = None
    rtt_ms: float | None = None
    expected_ms: float | None = None

    def to_json(self) -> dict[str, float | str | None]:
        return {
            "policy": self.policy,
            "reason": self.reason,
            "rate_bps": self.rate_bps,
            "rtt_ms": self.rtt_ms,
            "expected_ms": self.expected_ms,
        }


class ExitPolicy(Protocol):
    """Chooses the exit of each batch; told what the edge saw of the link after each (only a policy
    that ``observes_link``: the edge probes the link for it and no other)."""

    @property
    def name(self) -> str: ...

    @property
    def observes_link(self) -> bool: ...

    def choose(self, n: int, now_ns: int) -> Decision: ...

    def observe_rtt(self, rtt_ms: float) -> None: ...

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None: ...


@dataclass
class FixedPolicy:
    """One exit for every batch (today's behaviour)."""

    exit: int
    name: str = "fixed"
    observes_link: bool = False

    def choose(self, n: int, now_ns: int) -> Decision:
        return Decision(self.exit, self.name, "fixed")

    def observe_rtt(self, rtt_ms: float) -> None:
        pass

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None:
        pass


class LinkEstimator:
    """EWMA estimates of the link from the edge's own traffic, starting from ``prior``.

    Round trip: a small probe sent just before each batch's features, less the time the cloud held it.
    The first observation of each replaces the prior whole (the prior is a guess, not a measurement).
    Rate: the features' round trip (sent → the cloud's :class:`~nodes.messages.Received`, less its
    compute) minus the estimated round trip is the time their bytes took to cross; the EWMA is of the
    time per byte, so that one batch of few bytes does not swing the rate more than one of many.
    """

    def __init__(self, prior: LinkEstimate, alpha: float = DEFAULT_ALPHA) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self._alpha = alpha
        self._rtt_ms = prior.rtt_ms
        self._ms_per_byte = 8000.0 / prior.rate_bps
        self._rtt_seen = False
        self.observations = 0

    @property
    def estimate(self) -> LinkEstimate:
        return LinkEstimate(rate_bps=8000.0 / self._ms_per_byte, rtt_ms=self._rtt_ms)

    def observe_rtt(self, rtt_ms: float) -> None:
        # The first observation replaces the prior whole: the prior is a guess, not a measurement.
        weight = self._alpha if self._rtt_seen else 1.0
        self._rtt_ms += weight * (max(rtt_ms, 0.0) - self._rtt_ms)
        self._rtt_seen = True

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None:
        if sent_bytes <= 0:
            return
        crossing_ms = max(round_trip_ms - self._rtt_ms, _MIN_TRANSFER_MS)
        weight = self._alpha if self.observations else 1.0
        self._ms_per_byte += weight * (crossing_ms / sent_bytes - self._ms_per_byte)
        self.observations += 1


class AdaptivePolicy:
    """Least expected latency (or most accuracy within ``slo_ms``) for the estimated link, with
    hysteresis: it moves from the exit in force only after the same other exit has been the choice
    ``patience`` batches in a row, each time expected to be faster by more than ``margin`` (a fraction)
    -- or, with an SLO, more accurate, or meeting the SLO where the exit in force does not."""

    name = "adaptive"
    observes_link = True

    def __init__(
        self,
        profile: Profile,
        *,
        initial: int | None = None,
        slo_ms: float | None = None,
        margin: float = DEFAULT_MARGIN,
        patience: int = DEFAULT_PATIENCE,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        if margin < 0 or patience < 1:
            raise ValueError(f"margin must be ≥ 0 and patience ≥ 1, got {margin} and {patience}")
        if slo_ms is not None and not slo_ms > 0:
            raise ValueError(f"the latency objective must be > 0 ms, got {slo_ms}")
        if slo_ms is not None and any(e.accuracy is None for e in profile.exits):
            raise ValueError("a latency objective needs the accuracy of every exit in the profile")
        self.profile = profile
        self.slo_ms = slo_ms
        self.margin = margin
        self.patience = patience
        self.link = LinkEstimator(profile.link, alpha)
        n = profile.batch_size
        self.current = initial if initial is not None else best_exit(profile, n, profile.link, slo_ms)[0]
        profile.at(self.current)  # (KeyError for an exit the profile lacks)
        self._candidate: int | None = None
        self._streak = 0

    def _better(self, k: int, n: int, link: LinkEstimate) -> bool:
        cur, new = self.profile.at(self.current), self.profile.at(k)
        t_cur, t_new = expected_latency_ms(cur, n, link), expected_latency_ms(new, n, link)
        if self.slo_ms is None:
            return t_new < (1.0 - self.margin) * t_cur
        if t_cur > self.slo_ms:  # the exit in force misses the objective: any exit expected to meet it
            return t_new <= self.slo_ms or t_new < (1.0 - self.margin) * t_cur
        assert new.accuracy is not None and cur.accuracy is not None
        return new.accuracy > cur.accuracy and t_new <= self.slo_ms

    def choose(self, n: int, now_ns: int) -> Decision:
        link = self.link.estimate
        best, why = best_exit(self.profile, n, link, self.slo_ms)
        if best != self.current and self._better(best, n, link):
            self._streak = self._streak + 1 if best == self._candidate else 1
            self._candidate = best
            if self._streak >= self.patience:
                self.current, self._candidate, self._streak = best, None, 0
                reason = f"switch: {why}"
            else:
                reason = f"hold: exit {best} better for {self._streak} of {self.patience} batches"
        else:
            self._candidate, self._streak = None, 0
            reason = why if best == self.current else f"hold: exit {best} not better by the margin"
        expected = expected_latency_ms(self.profile.at(self.current), n, link)
        return Decision(self.current, self.name, reason, link.rate_bps, link.rtt_ms, expected)

    def observe_rtt(self, rtt_ms: float) -> None:
        self.link.observe_rtt(rtt_ms)

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None:
        self.link.observe_transfer(sent_bytes, round_trip_ms)


@dataclass(frozen=True)
class LinkTruth:
    """The link as scheduled, torch- and netem-free: from ``at_s[i]`` seconds after the schedule's time
    0 on, rate ``rate_bps[i]`` (None: unlimited) and one-way delay ``delay_ms[i]``."""

    at_s: tuple[float, ...]
    rate_bps: tuple[float | None, ...]
    delay_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.at_s)
        if not n or len(self.rate_bps) != n or len(self.delay_ms) != n:
            raise ValueError("a link truth needs one rate and one delay per step, and at least one step")
        if list(self.at_s) != sorted(self.at_s):
            raise ValueError("steps must be in time order")

    def at(self, t_s: float, *, base_rtt_ms: float, unlimited_bps: float) -> LinkEstimate:
        """The link ``t_s`` seconds in: the scheduled rate (``unlimited_bps`` where none) and twice the
        scheduled delay on top of ``base_rtt_ms`` (the round trip of the unshaped path)."""
        i = max(bisect.bisect_right(self.at_s, t_s) - 1, 0)
        rate = self.rate_bps[i]
        return LinkEstimate(rate if rate is not None else unlimited_bps, base_rtt_ms + 2.0 * self.delay_ms[i])


class OraclePolicy:
    """Knows the link as scheduled and picks, for each batch, the best exit for the link at that moment
    (no estimation, no hysteresis). ``t0_ns``: the schedule's time 0 on this node's monotonic clock."""

    name = "oracle"
    observes_link = False

    def __init__(
        self,
        profile: Profile,
        truth: LinkTruth,
        t0_ns: int,
        *,
        slo_ms: float | None = None,
        base_rtt_ms: float = 0.0,
    ) -> None:
        self.profile = profile
        self.truth = truth
        self.t0_ns = t0_ns
        self.slo_ms = slo_ms
        self.base_rtt_ms = base_rtt_ms

    def choose(self, n: int, now_ns: int) -> Decision:
        link = self.truth.at(
            (now_ns - self.t0_ns) / 1e9,
            base_rtt_ms=self.base_rtt_ms,
            unlimited_bps=self.profile.link.rate_bps,
        )
        k, why = best_exit(self.profile, n, link, self.slo_ms)
        expected = expected_latency_ms(self.profile.at(k), n, link)
        return Decision(k, self.name, why, link.rate_bps, link.rtt_ms, expected)

    def observe_rtt(self, rtt_ms: float) -> None:
        pass

    def observe_transfer(self, sent_bytes: int, round_trip_ms: float) -> None:
        pass


def process_start_ns() -> int | None:
    """When this process started, on ``time.monotonic_ns()``'s clock (to the kernel's clock tick, 10 ms
    at most), or None where ``/proc`` does not say: the test node's start is time 0 of a run's link
    schedule, which the oracle policy needs to know."""
    try:
        stat = open("/proc/self/stat", encoding="ascii").read()  # noqa: SIM115 -- read at once
        ticks = int(stat.rsplit(")", 1)[1].split()[19])  # (field 22, starttime: ticks since boot)
        hz = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
    # starttime counts on the boot clock, which also runs while the machine is suspended.
    offset = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - time.monotonic_ns()
    return ticks * 10**9 // hz - offset


def check_policy(policy: str, model_kind: str, slo_ms: float | None = None) -> None:
    """Refuse, with one clear ``ValueError``, a policy that cannot apply: anything but ``fixed`` needs a
    multi-exit model (a SEM has one local exit to choose from)."""
    if policy not in POLICIES:
        raise ValueError(f"exit policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if policy != "fixed" and model_kind != "mem":
        raise ValueError(
            f"--exit-policy {policy} chooses among the exits of a multi-exit model (mem); the {model_kind} "
            "model has one local exit: use --exit-policy fixed"
        )
    if slo_ms is not None and policy == "fixed":
        raise ValueError("--latency-slo applies to the adaptive and oracle exit policies")


def usable_exits(available: Sequence[int], wanted: Sequence[int] | None) -> tuple[int, ...]:
    """The exits a policy may choose from: ``wanted`` (all local exits when None), each checked."""
    if wanted is None:
        return tuple(available)
    missing = [k for k in wanted if k not in available]
    if missing:
        raise ValueError(
            f"exit(s) {', '.join(map(str, missing))} are not local exits of this model "
            f"(it has {', '.join(map(str, available))})"
        )
    return tuple(sorted(set(wanted)))
