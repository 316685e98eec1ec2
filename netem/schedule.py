"""Links and edge limits that change during a run: schedules of rate, delay, jitter, loss and CPU quota.

A :class:`LinkSchedule` is plain data — the link spec in force from each step's time on, and optionally
the edge's CPU quota likewise — built from one of three sources:

* the inline form, ``0s:10mbit/5ms,20s:1mbit/40ms~5ms/1%,40s:10mbit/5ms``: steps separated by commas,
  each ``TIME:RATE[/DELAY[/LOSS]]``. Jitter is written after the delay with a tilde, ``40ms~5ms``
  (40 ms ± 5 ms, tc netem's uniform spread); ``none`` as the rate leaves the link unlimited, an empty
  delay field means no delay (``0s:10mbit//1%``). The CPU quota has its own inline form,
  ``0s:2,30s:0.5`` (cores), see :func:`parse_cpu_inline`;
* a TOML file (:func:`load`), for queue limits, comments and Mahimahi traces with a fixed delay;
* a bandwidth trace in Mahimahi's format (:func:`read_mahimahi`, see :mod:`netem.mahimahi`) replayed
  as rate steps by :func:`mahimahi_to_rate_steps`.

Units are tc's, as in :mod:`netem.spec`. Applying a schedule is the testbed's job (``tc … change`` from
:func:`netem.tc.plan_link_change`, the delay line's parameters, the cgroup's CPU quota); each change it
makes is recorded as an :class:`AppliedChange`. ``python -m netem.show_schedule --show SCHEDULE`` prints
what a schedule means, step by step.
"""

from __future__ import annotations

import bisect
import importlib
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.names import LINK_SCHEDULE_SCHEMA
from netem.errors import SpecError
from netem.mahimahi import MAHIMAHI_PACKET_BITS, read_mahimahi, window_counts
from netem.spec import EdgeLimits, LinkSpec, parse_size, parse_time

RATE_QUANTUM_BPS = 1000
"""Trace rates are rounded to whole kbit/s, short in tc's spelling; a window's packet count is coarser
anyway (one 1500-byte packet in 100 ms is 120 kbit/s)."""
MIN_TRACE_RATE_BPS = MAHIMAHI_PACKET_BITS
"""tc has no rate 0: a window without a delivery opportunity (an outage) becomes one packet per second."""
MIN_WINDOW_MS = 10
"""Each change forks ``tc`` (a few ms); windows shorter than 10 ms could not be applied on time."""
MAX_STEPS = 100_000
"""A schedule longer than this is a typo (a 1 ms window over a day), not an experiment."""


def fmt_at(at_s: float) -> str:
    """A step's time as schedules write it: ``20s``, ``0.5s``."""
    return f"{at_s:g}s"


@dataclass(frozen=True)
class LinkStep:
    """From ``at_s`` seconds after the start of the run on, the link is ``spec``."""

    at_s: float
    spec: LinkSpec

    def __post_init__(self) -> None:
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise SpecError(f"a step's time must be a finite number of seconds ≥ 0, got {self.at_s!r}")


@dataclass(frozen=True)
class CpuStep:
    """From ``at_s`` seconds on, the edge's CPU quota is ``cpus`` cores (its cgroup's CFS quota)."""

    at_s: float
    cpus: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.at_s) and self.at_s >= 0):
            raise SpecError(f"a step's time must be a finite number of seconds ≥ 0, got {self.at_s!r}")
        EdgeLimits(cpus=self.cpus)  # the quota's own bounds, one definition


def _check_times(times: Sequence[float], what: str) -> None:
    if times and times[0] != 0:
        raise SpecError(
            f"the first {what} step is at {fmt_at(times[0])}: it must be at 0s, so the run starts "
            "with a known value"
        )
    for i in range(1, len(times)):
        if times[i] <= times[i - 1]:
            raise SpecError(
                f"{what} steps out of order: step {i + 1} at {fmt_at(times[i])} does not come after "
                f"step {i} at {fmt_at(times[i - 1])}"
            )


@dataclass(frozen=True)
class LinkSchedule:
    """Link steps (each spec holds until the next step) and optional CPU-quota steps for the edge.

    Either list may be empty but not both; a non-empty list starts at 0 s and its times increase
    strictly. Every link step sets a rate or none does: a rate limiter cannot be added or removed on a
    live link, only changed.
    """

    steps: tuple[LinkStep, ...]
    cpu_steps: tuple[CpuStep, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "cpu_steps", tuple(self.cpu_steps))
        if not self.steps and not self.cpu_steps:
            raise SpecError("a schedule needs at least one link or CPU step")
        if len(self.steps) + len(self.cpu_steps) > MAX_STEPS:
            raise SpecError(
                f"a schedule of more than {MAX_STEPS} steps is not an experiment; use a longer window"
            )
        _check_times([s.at_s for s in self.steps], "link")
        _check_times([s.at_s for s in self.cpu_steps], "CPU")
        rated = {s.spec.rate_bps is not None for s in self.steps}
        if len(rated) > 1:
            raise SpecError(
                "some link steps set a rate and others leave it unlimited: a live link's rate limiter can "
                "be changed but not added or removed, so give every step a rate (or none)"
            )

    def spec_at(self, t_s: float) -> LinkSpec | None:
        """The link spec in force ``t_s`` seconds into the run (the last step's after it); None: no steps."""
        if not self.steps:
            return None
        i = bisect.bisect_right([s.at_s for s in self.steps], t_s) - 1
        return self.steps[max(i, 0)].spec

    def cpus_at(self, t_s: float) -> float | None:
        """The CPU quota in force ``t_s`` seconds into the run; None when the schedule has no CPU steps."""
        if not self.cpu_steps:
            return None
        i = bisect.bisect_right([s.at_s for s in self.cpu_steps], t_s) - 1
        return self.cpu_steps[max(i, 0)].cpus

    @property
    def initial(self) -> LinkSpec | None:
        """The spec the link is brought up with (the first step's)."""
        return self.steps[0].spec if self.steps else None

    def describe(self) -> dict[str, list[dict[str, str | None]]]:
        """tc-style strings for the results file and logs."""
        return {
            "link": [{"at": fmt_at(s.at_s), **s.spec.describe()} for s in self.steps],
            "cpu": [{"at": fmt_at(s.at_s), "cpus": f"{s.cpus:g}"} for s in self.cpu_steps],
        }

    def to_json(self) -> dict[str, Any]:
        """Exact numbers (bit/s, seconds, fractions, bytes) under a versioned schema."""
        return {
            "schema": LINK_SCHEDULE_SCHEMA,
            "link": [
                {
                    "at_s": s.at_s,
                    "rate_bps": s.spec.rate_bps,
                    "delay_s": s.spec.delay_s,
                    "jitter_s": s.spec.jitter_s,
                    "loss": s.spec.loss,
                    "limit_bytes": s.spec.limit_bytes,
                }
                for s in self.steps
            ],
            "cpu": [{"at_s": s.at_s, "cpus": s.cpus} for s in self.cpu_steps],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkSchedule:
        if data.get("schema") != LINK_SCHEDULE_SCHEMA:
            raise SpecError(
                f"not a link schedule: schema {data.get('schema')!r}, expected {LINK_SCHEDULE_SCHEMA!r}"
            )
        try:
            steps = [
                LinkStep(
                    float(s["at_s"]),
                    LinkSpec(
                        rate_bps=None if s["rate_bps"] is None else int(s["rate_bps"]),
                        delay_s=float(s["delay_s"]),
                        jitter_s=float(s["jitter_s"]),
                        loss=float(s["loss"]),
                        limit_bytes=None if s["limit_bytes"] is None else int(s["limit_bytes"]),
                    ),
                )
                for s in data["link"]
            ]
            cpu = [CpuStep(float(s["at_s"]), float(s["cpus"])) for s in data["cpu"]]
        except SpecError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise SpecError(f"malformed link schedule: missing or mistyped {exc}") from exc
        return cls(tuple(steps), tuple(cpu))


@dataclass(frozen=True)
class AppliedChange:
    """One change as the testbed applied it, for the results file.

    ``at_s`` is when the schedule asked for it and ``applied_s`` when the last command that made it
    returned, both from the start of the run; ``values`` are tc-style strings and ``mechanism`` says what
    applied each parameter (``tbf``, ``htb``, ``netem``, ``tun-delay-line``, ``cgroup-v2``, ...).
    """

    kind: str  # "link" or "cpu"
    at_s: float
    applied_s: float
    values: Mapping[str, str | None]
    mechanism: Mapping[str, str]
    target: str = ""  # which link ("edge_cloud") or "edge" for the CPU quota

    def __post_init__(self) -> None:
        if self.kind not in ("link", "cpu"):
            raise ValueError(f"kind must be 'link' or 'cpu', got {self.kind!r}")
        if not (math.isfinite(self.at_s) and math.isfinite(self.applied_s)):
            raise ValueError("change times must be finite")

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "target": self.target,
            "at_s": self.at_s,
            "applied_s": self.applied_s,
            "late_s": self.applied_s - self.at_s,
            "values": dict(self.values),
            "mechanism": dict(self.mechanism),
        }


# --- the inline form -----------------------------------------------------------------------------------

JITTER_SEP = "~"


def _split_step(item: str, index: int, what: str) -> tuple[float, str]:
    time_text, sep, rest = item.partition(":")
    if not sep or not rest.strip():
        raise SpecError(f"{what} step {index} {item!r} must look like TIME:VALUE, e.g. '20s:1mbit/40ms'")
    try:
        at_s = parse_time(time_text.strip(), "step time")
    except SpecError as exc:
        raise SpecError(f"{what} step {index} {item!r}: {exc}") from exc
    return at_s, rest.strip()


def _inline_items(text: str, what: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not text.strip():
        raise SpecError(f"empty {what} schedule; write e.g. '0s:10mbit/5ms,20s:1mbit/40ms'")
    for i, item in enumerate(items, start=1):
        if not item:
            raise SpecError(f"{what} schedule {text!r}: step {i} is empty (a stray comma?)")
    return items


def parse_link_value(text: str) -> LinkSpec:
    """``RATE[/DELAY[~JITTER][/LOSS]]`` → :class:`LinkSpec`; e.g. ``1mbit/40ms~5ms/1%``."""
    fields = [f.strip() for f in text.split("/")]
    if len(fields) > 3:
        raise SpecError(f"{text!r} has {len(fields)} fields: write RATE[/DELAY[~JITTER][/LOSS]]")
    rate, delay, loss = (*fields, "", "")[:3]
    if not rate:
        raise SpecError(f"{text!r} has no rate: write e.g. '10mbit', or 'none' for an unlimited link")
    if "±" in delay:
        raise SpecError(f"delay {delay!r}: write the jitter with a tilde, e.g. '40ms~5ms'")
    delay, _, jitter = delay.partition(JITTER_SEP)
    if jitter and not delay:
        raise SpecError(f"{text!r}: jitter needs a delay to spread around, e.g. '40ms~5ms'")
    return LinkSpec.parse(rate=rate, delay=delay or None, jitter=jitter or None, loss=loss or None)


def parse_inline(text: str) -> LinkSchedule:
    """Parse ``0s:10mbit/5ms,20s:1mbit/40ms~5ms/1%`` (see the module docstring) into a schedule."""
    steps: list[LinkStep] = []
    for i, item in enumerate(_inline_items(text, "link"), start=1):
        at_s, value = _split_step(item, i, "link")
        try:
            spec = parse_link_value(value)
        except SpecError as exc:
            raise SpecError(f"link step {i} {item!r}: {exc}") from exc
        steps.append(LinkStep(at_s, spec))
    return LinkSchedule(tuple(steps))


def parse_cpu_inline(text: str) -> tuple[CpuStep, ...]:
    """Parse the edge's CPU quota over time, ``0s:2,30s:0.5`` (cores), into steps."""
    steps: list[CpuStep] = []
    for i, item in enumerate(_inline_items(text, "CPU"), start=1):
        at_s, value = _split_step(item, i, "CPU")
        try:
            cpus = float(value)
        except ValueError as exc:
            raise SpecError(
                f"CPU step {i} {item!r}: the value must be a number of cores, e.g. '0.5'"
            ) from exc
        try:
            steps.append(CpuStep(at_s, cpus))
        except SpecError as exc:
            raise SpecError(f"CPU step {i} {item!r}: {exc}") from exc
    _check_times([s.at_s for s in steps], "CPU")
    return tuple(steps)


# --- Mahimahi traces -----------------------------------------------------------------------------------


def _quantize_rate(bps: float) -> int:
    return max(MIN_TRACE_RATE_BPS, round(bps / RATE_QUANTUM_BPS) * RATE_QUANTUM_BPS)


def mahimahi_to_rate_steps(
    opportunities: Sequence[int],
    window_ms: int,
    duration_s: float,
    *,
    base: LinkSpec | None = None,
    limit_bytes: int | None = None,
) -> LinkSchedule:
    """Replay a trace as rate steps: the bits it may deliver in each window, per second of the window.

    Rates are rounded to whole kbit/s (at least one packet per second, see :data:`MIN_TRACE_RATE_BPS`);
    consecutive windows with the same rate make one step. Every step keeps the delay, jitter and loss of
    ``base`` (its rate and limit are not used) and the rate limiter's queue ``limit_bytes``.
    """
    if not opportunities:
        raise SpecError("the trace holds no delivery opportunities")
    if any(b < a for a, b in itertools.pairwise(opportunities)) or opportunities[0] < 0:
        raise SpecError("a trace's delivery opportunities must be times ≥ 0 in non-decreasing order")
    if opportunities[-1] <= 0:
        raise SpecError("the trace lasts 0 ms: its last time is its period, so it must be above 0")
    if not (isinstance(window_ms, int) and window_ms >= MIN_WINDOW_MS):
        raise SpecError(f"the window must be a whole number of ms ≥ {MIN_WINDOW_MS}, got {window_ms!r}")
    if not (math.isfinite(duration_s) and duration_s > 0):
        raise SpecError(f"the duration must be above 0 s, got {duration_s!r}")
    duration_ms = math.ceil(round(duration_s * 1000, 6))  # 0.3 s is 300 ms, not 300.00000000000006
    if duration_ms // window_ms > MAX_STEPS:
        raise SpecError(
            f"{duration_s:g} s in {window_ms} ms windows is over {MAX_STEPS} steps; widen the window"
        )
    base = base or LinkSpec()
    steps: list[LinkStep] = []
    for k, n in enumerate(window_counts(opportunities, window_ms, duration_ms)):
        # the last window may be cut short by the duration: its rate is over the part that exists
        width_ms = min(window_ms, duration_ms - k * window_ms)
        rate = _quantize_rate(n * MAHIMAHI_PACKET_BITS * 1000 / width_ms)
        if steps and steps[-1].spec.rate_bps == rate:
            continue
        spec = LinkSpec(rate, base.delay_s, base.jitter_s, base.loss, limit_bytes)
        steps.append(LinkStep(k * window_ms / 1000, spec))
    return LinkSchedule(tuple(steps))


# --- schedule files ------------------------------------------------------------------------------------

_LINK_KEYS = frozenset({"at", "rate", "delay", "jitter", "loss", "limit"})
_TRACE_KEYS = frozenset({"file", "window", "duration", "delay", "jitter", "loss", "limit"})
DEFAULT_TRACE_WINDOW_MS = 100


def _toml_loads(text: str, source: str) -> dict[str, Any]:
    # tomllib is in the standard library from Python 3.11; on 3.10 the same parser is the tomli package
    try:
        toml: Any = importlib.import_module("tomllib")
    except ImportError:
        try:
            toml = importlib.import_module("tomli")
        except ImportError as exc:
            raise SpecError(
                f"reading {source} needs Python ≥ 3.11 or the tomli package (pip install tomli); "
                "or give the schedule inline"
            ) from exc
    try:
        data: dict[str, Any] = toml.loads(text)
    except toml.TOMLDecodeError as exc:
        raise SpecError(f"{source} is not valid TOML: {exc}") from exc
    return data


def _str_fields(table: object, allowed: frozenset[str], where: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise SpecError(f"{where}: expected a table of keys, got {table!r}")
    unknown = set(table) - allowed
    if unknown:
        raise SpecError(
            f"{where}: unknown keys {', '.join(sorted(unknown))} (known: {', '.join(sorted(allowed))})"
        )
    out: dict[str, str] = {}
    for key, value in table.items():
        if not isinstance(value, str):
            raise SpecError(f'{where}: {key} = {value!r} must be a string with a unit, e.g. {key} = "20ms"')
        out[key] = value
    return out


def schedule_from_toml(
    data: Mapping[str, Any], source: str = "schedule", base_dir: Path | None = None
) -> LinkSchedule:
    """Build a schedule from parsed TOML: ``[[link]]`` steps or one ``[trace]``, and ``[[cpu]]`` steps."""
    unknown = set(data) - {"link", "trace", "cpu"}
    if unknown:
        raise SpecError(
            f"{source}: unknown tables {', '.join(sorted(unknown))}; use [[link]], [trace] or [[cpu]]"
        )
    if "link" in data and "trace" in data:
        raise SpecError(f"{source}: give the link as [[link]] steps or as a [trace], not both")
    steps: tuple[LinkStep, ...] = ()
    if "link" in data:
        if not isinstance(data["link"], list):
            raise SpecError(f"{source}: write link steps as [[link]] tables")
        parsed: list[LinkStep] = []
        for i, table in enumerate(data["link"], start=1):
            where = f"{source} [[link]] {i}"
            f = _str_fields(table, _LINK_KEYS, where)
            if "at" not in f:
                raise SpecError(f'{where}: needs at = "TIME", e.g. at = "20s"')
            try:
                parsed.append(
                    LinkStep(
                        parse_time(f["at"], "step time"),
                        LinkSpec.parse(
                            f.get("rate"), f.get("delay"), f.get("jitter"), f.get("loss"), f.get("limit")
                        ),
                    )
                )
            except SpecError as exc:
                raise SpecError(f"{where}: {exc}") from exc
        steps = tuple(parsed)
    elif "trace" in data:
        where = f"{source} [trace]"
        f = _str_fields(data["trace"], _TRACE_KEYS, where)
        if "file" not in f:
            raise SpecError(f'{where}: needs file = "PATH" (a Mahimahi trace)')
        trace_path = Path(f["file"])
        if not trace_path.is_absolute() and base_dir is not None:
            trace_path = base_dir / trace_path
        opportunities = read_mahimahi(trace_path)
        try:
            window_s = parse_time(f["window"], "window") if "window" in f else DEFAULT_TRACE_WINDOW_MS / 1000
            duration_s = (
                parse_time(f["duration"], "duration") if "duration" in f else opportunities[-1] / 1000
            )
            base = LinkSpec.parse(None, f.get("delay"), f.get("jitter"), f.get("loss"))
            limit = parse_size(f["limit"], "limit") if "limit" in f else None
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from exc
        window_ms = round(window_s * 1000)
        if abs(window_ms - window_s * 1000) > 1e-9:
            raise SpecError(f"{where}: the window must be a whole number of ms, got {f['window']!r}")
        try:
            steps = mahimahi_to_rate_steps(
                opportunities, window_ms, duration_s, base=base, limit_bytes=limit
            ).steps
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from exc
    cpu: list[CpuStep] = []
    if not isinstance(data.get("cpu", []), list):
        raise SpecError(f"{source}: write CPU steps as [[cpu]] tables")
    for i, table in enumerate(data.get("cpu", []), start=1):
        where = f"{source} [[cpu]] {i}"
        if not isinstance(table, dict) or set(table) != {"at", "cpus"} or not isinstance(table["at"], str):
            raise SpecError(f'{where}: needs exactly at = "TIME" and cpus = CORES, e.g. cpus = 0.5')
        try:
            cpu.append(CpuStep(parse_time(table["at"], "step time"), float(table["cpus"])))
        except (SpecError, TypeError, ValueError) as exc:
            raise SpecError(f"{where}: {exc}") from exc
    return LinkSchedule(steps, tuple(cpu))


def load(path: str | Path) -> LinkSchedule:
    """Read a TOML schedule file; a ``[trace]`` file name is relative to the schedule file.

    ::

        [[link]]
        at = "0s"
        rate = "10mbit"
        delay = "5ms"
        [[link]]
        at = "20s"
        rate = "1mbit"
        delay = "40ms"
        jitter = "5ms"
        loss = "1%"

        # or, instead of [[link]] steps, the rates of a trace with a fixed delay:
        # [trace]
        # file = "step.mahimahi"
        # window = "100ms"      # default 100ms
        # duration = "60s"      # default: the trace once
        # delay = "5ms"

        [[cpu]]
        at = "0s"
        cpus = 2.0
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"cannot read link schedule {path}: {exc.strerror}") from exc
    return schedule_from_toml(_toml_loads(text, str(path)), str(path), path.parent)


def from_text(text: str) -> LinkSchedule:
    """A schedule as a command line gives it: the path of a TOML file (see :func:`load`), or the inline
    form. Text that names no file and has no ``TIME:`` in it is taken for a file's path, so that a typo
    in one is reported as a file that cannot be read, not as a malformed step."""
    path = Path(text)
    if path.is_file() or ":" not in text:
        return load(path)
    return parse_inline(text)
