"""Link specs, edge limits and testbed configs: plain frozen data, parsed from tc-style strings.

Units follow tc(8): ``10mbit`` is 10·10⁶ bit/s, ``kbit`` is 10³; ``kibit``/``mibit`` are binary. tc reads
``mbps`` as *megabytes* per second, which people usually mean as megabits, so the ``bps`` family is
rejected with a message that says which spelling to use; it is never silently converted. Times need a
unit (tc reads a bare ``20`` as 20 µs); loss needs a ``%`` sign.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from netem.errors import SpecError

if TYPE_CHECKING:  # (netem.schedule builds on this module)
    from netem.schedule import LinkSchedule

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

_RATE_UNITS: dict[str, int] = {
    "bit": 1,
    "kbit": 10**3,
    "mbit": 10**6,
    "gbit": 10**9,
    "tbit": 10**12,
    "kibit": 2**10,
    "mibit": 2**20,
    "gibit": 2**30,
    "tibit": 2**40,
}
_BYTE_RATE_UNITS = ("bps", "kbps", "mbps", "gbps", "tbps", "kibps", "mibps", "gibps", "tibps")

_TIME_UNITS: dict[str, float] = {
    "s": 1.0,
    "sec": 1.0,
    "secs": 1.0,
    "ms": 1e-3,
    "msec": 1e-3,
    "msecs": 1e-3,
    "us": 1e-6,
    "usec": 1e-6,
    "usecs": 1e-6,
}

# tc sizes: a bare number or "b" is bytes, "k"/"kb" is KiB (tc uses 1024 for sizes), "kbit" is bits.
_SIZE_UNITS: dict[str, float] = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kbit": 1024 / 8,
    "mbit": 1024**2 / 8,
    "gbit": 1024**3 / 8,
}

MAX_RATE_BPS = 100 * 10**9
"""Faster than any link this testbed can emulate; larger values are typos."""
MAX_DELAY_S = 10.0
"""A one-way delay above 10 s would stall TCP's handshake timers; larger values are typos."""
PREFIX_RE = re.compile(r"^lx[0-9a-z]{1,8}$")
#: What the kernel names a congestion control (``tcp_available_congestion_control``): cubic, bbr, dctcp, ...
CONGESTION_CONTROL_RE = re.compile(r"[a-z][a-z0-9_]{0,15}")
"""Per-run prefix: ``lx`` plus 1..8 of [0-9a-z]; short enough that ``<prefix>-ec-c`` fits IFNAMSIZ (15)."""


def _split(text: str, what: str) -> tuple[float, str]:
    m = re.fullmatch(_NUMBER + r"\s*(?P<unit>[a-zA-Z%]*)", text.strip())
    if m is None:
        raise SpecError(f"{what} {text!r} is not a number with a unit")
    return float(m.group("num")), m.group("unit").lower()


def parse_rate(text: str) -> int:
    """Parse a tc rate (``10mbit``, ``500kbit``) into bits per second."""
    num, unit = _split(text, "rate")
    if unit in _BYTE_RATE_UNITS:
        raise SpecError(
            f"rate {text!r}: in tc '{unit}' means bytes per second, which is rarely what is meant; "
            f"write '{_fmt_num(num)}{unit[:-3]}bit' for bits per second "
            f"(or '{_fmt_num(num * 8)}{unit[:-3]}bit' for {_fmt_num(num)} {unit[:-3].upper()}B/s)"
        )
    if unit == "":
        raise SpecError(f"rate {text!r} has no unit; write e.g. '10mbit' or '500kbit'")
    if unit not in _RATE_UNITS:
        raise SpecError(f"rate {text!r}: unknown unit {unit!r}; use one of {', '.join(_RATE_UNITS)}")
    bps = round(num * _RATE_UNITS[unit])
    if bps <= 0:
        raise SpecError(f"rate {text!r} must be above 0 (leave the rate out for an unlimited link)")
    return bps


def parse_time(text: str, what: str = "time") -> float:
    """Parse a tc time (``20ms``, ``500us``, ``1s``) into seconds; a bare number is refused."""
    num, unit = _split(text, what)
    if unit == "":
        raise SpecError(f"{what} {text!r} has no unit (tc would read it as microseconds); write e.g. '20ms'")
    if unit not in _TIME_UNITS:
        raise SpecError(f"{what} {text!r}: unknown unit {unit!r}; use s, ms or us")
    return num * _TIME_UNITS[unit]


def parse_percent(text: str, what: str = "loss") -> float:
    """Parse ``0.5%`` into the fraction 0.005; a number without ``%`` is refused as ambiguous."""
    num, unit = _split(text, what)
    if unit != "%":
        raise SpecError(f"{what} {text!r} needs a percent sign, e.g. '0.5%'")
    return num / 100.0


def parse_size(text: str, what: str = "size") -> int:
    """Parse a tc size (``64kb``, ``1500``, ``1mb``) into bytes; tc's ``k`` here is 1024."""
    num, unit = _split(text, what)
    if unit not in _SIZE_UNITS:
        raise SpecError(f"{what} {text!r}: unknown unit {unit!r}; use b, kb, mb or gb")
    return round(num * _SIZE_UNITS[unit])


def _fmt_num(x: float) -> str:
    return f"{x:.6g}"


def format_rate(bps: int) -> str:
    """``10000000`` → ``10mbit`` (the shortest exact tc spelling)."""
    for unit, mult in (("gbit", 10**9), ("mbit", 10**6), ("kbit", 10**3)):
        if bps % mult == 0:
            return f"{bps // mult}{unit}"
    return f"{bps}bit"


def format_time(seconds: float) -> str:
    """``0.02`` → ``20ms``; sub-millisecond values in ``us``."""
    us = round(seconds * 1e6)
    if us % 1000 == 0:
        return f"{us // 1000}ms"
    if us >= 1000:
        return f"{us / 1000:.3f}".rstrip("0").rstrip(".") + "ms"
    return f"{us}us"


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:.6g}%"


@dataclass(frozen=True)
class LinkSpec:
    """One direction-symmetric link: both directions get the same rate, delay, jitter and loss.

    ``delay_s`` is one-way (the round trip gains twice it). ``jitter_s`` is the half-width of a uniform
    spread around the delay (tc netem's default distribution). ``loss`` is a fraction in [0, 1), applied
    independently per packet in each direction. ``limit_bytes`` is the rate limiter's queue size.
    """

    rate_bps: int | None = None
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    limit_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.rate_bps is not None and not 0 < self.rate_bps <= MAX_RATE_BPS:
            raise SpecError(f"rate must be in (0, 100gbit], got {self.rate_bps} bit/s")
        for name in ("delay_s", "jitter_s"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0 <= v <= MAX_DELAY_S):
                raise SpecError(f"{name.removesuffix('_s')} must be within [0, 10s], got {v!r} s")
        if not (math.isfinite(self.loss) and 0 <= self.loss < 1):
            raise SpecError(f"loss must be within [0%, 100%), got {self.loss!r}")
        if self.limit_bytes is not None and self.limit_bytes < 1600:
            raise SpecError(f"limit must hold at least one full packet (1600 bytes), got {self.limit_bytes}")
        if self.limit_bytes is not None and self.rate_bps is None:
            raise SpecError("limit is the rate limiter's queue size: give a rate as well")

    @classmethod
    def parse(
        cls,
        rate: str | None = None,
        delay: str | None = None,
        jitter: str | None = None,
        loss: str | None = None,
        limit: str | None = None,
    ) -> LinkSpec:
        """Build a spec from tc-style strings; ``None`` or ``""`` leaves a parameter unshaped."""
        unlimited = (None, "", "none", "unlimited")
        return cls(
            rate_bps=None if rate in unlimited or rate is None else parse_rate(rate),
            delay_s=parse_time(delay, "delay") if delay else 0.0,
            jitter_s=parse_time(jitter, "jitter") if jitter else 0.0,
            loss=parse_percent(loss, "loss") if loss else 0.0,
            limit_bytes=parse_size(limit, "limit") if limit else None,
        )

    @property
    def shaped(self) -> bool:
        return self.rate_bps is not None or self.needs_delay_line

    @property
    def needs_delay_line(self) -> bool:
        """True when delay, jitter or loss is set (netem's job, or the user-space delay line's)."""
        return self.delay_s > 0 or self.jitter_s > 0 or self.loss > 0

    def describe(self) -> dict[str, str | None]:
        """tc-style strings for the results file."""
        return {
            "rate": None if self.rate_bps is None else format_rate(self.rate_bps),
            "delay": format_time(self.delay_s),
            "jitter": format_time(self.jitter_s),
            "loss": format_percent(self.loss),
            "limit": None if self.limit_bytes is None else f"{self.limit_bytes}b",
        }

    def then(self, other: LinkSpec) -> LinkSpec:
        """The path through this link and then ``other``: slowest rate, delays and losses add up."""
        rates = [r for r in (self.rate_bps, other.rate_bps) if r is not None]
        limits = [x for x in (self.limit_bytes, other.limit_bytes) if x is not None]
        return LinkSpec(
            rate_bps=min(rates) if rates else None,
            delay_s=min(self.delay_s + other.delay_s, MAX_DELAY_S),
            jitter_s=min(self.jitter_s + other.jitter_s, MAX_DELAY_S),
            loss=1 - (1 - self.loss) * (1 - other.loss),
            limit_bytes=min(limits) if limits and rates else None,
        )


_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
MIN_MEMORY_BYTES = 16 * 2**20
"""Below 16 MiB not even the Python interpreter starts; smaller limits are typos."""


def parse_cpuset(cpuset: str) -> list[int]:
    """``"0,2-3"`` → ``[0, 2, 3]``, or :class:`SpecError` for text that is not a CPU list."""
    if not _CPUSET_RE.fullmatch(cpuset):
        raise SpecError(f"cpuset {cpuset!r} must look like '0', '0-1' or '0,2-3'")
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        if hi and int(hi) < int(lo):
            raise SpecError(f"cpuset {cpuset!r}: range {part!r} runs backwards")
    return cpuset_cpus(cpuset)


def format_cpuset(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5}`` → ``"0-2,5"`` (the inverse of :func:`cpuset_cpus`)."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in runs)


def cpuset_cpus(cpuset: str) -> list[int]:
    """``"0,2-3"`` → ``[0, 2, 3]`` (for text already checked, see :func:`parse_cpuset`)."""
    cpus: list[int] = []
    for part in cpuset.split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return sorted(set(cpus))


@dataclass(frozen=True)
class EdgeLimits:
    """The edge device's resources: a CPU quota in cores, a CPU set and a memory limit."""

    cpus: float | None = None
    cpuset: str | None = None
    memory_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.cpus is not None and not (math.isfinite(self.cpus) and 0.01 <= self.cpus <= 1024):
            raise SpecError(f"cpus must be a number of cores in [0.01, 1024], got {self.cpus!r}")
        if self.cpuset is not None:
            parse_cpuset(self.cpuset)
        if self.memory_bytes is not None and self.memory_bytes < MIN_MEMORY_BYTES:
            raise SpecError(f"memory limit must be at least 16m, got {self.memory_bytes} bytes")

    @classmethod
    def parse(
        cls, cpus: str | None = None, cpuset: str | None = None, memory: str | None = None
    ) -> EdgeLimits:
        """``EdgeLimits.parse(cpus="0.5", cpuset="0", memory="256m")``; memory units are binary (m = MiB)."""
        cpu_value: float | None = None
        if cpus:
            try:
                cpu_value = float(cpus)
            except ValueError as exc:
                raise SpecError(f"cpus {cpus!r} must be a number of cores, e.g. '0.5'") from exc
        return cls(
            cpus=cpu_value,
            cpuset=cpuset or None,
            memory_bytes=parse_size(memory, "memory") if memory else None,
        )

    @property
    def any(self) -> bool:
        return self.cpus is not None or self.cpuset is not None or self.memory_bytes is not None

    def threads(self) -> int | None:
        """Compute threads that fit the limits: the quota rounded down (at least 1), capped by the CPU set."""
        counts: list[int] = []
        if self.cpus is not None:
            counts.append(max(1, math.floor(self.cpus)))
        if self.cpuset is not None:
            counts.append(len(cpuset_cpus(self.cpuset)))
        return min(counts) if counts else None

    def describe(self) -> dict[str, str | None]:
        return {
            "cpus": None if self.cpus is None else f"{self.cpus:g}",
            "cpuset": self.cpuset,
            "memory": None if self.memory_bytes is None else f"{self.memory_bytes // 2**20}m",
        }


@dataclass(frozen=True)
class TestbedConfig:
    """What to build: the per-run prefix, the two links and the edge's limits."""

    __test__ = False  # not a pytest test class despite the name

    prefix: str
    edge_cloud: LinkSpec
    test_edge: LinkSpec | None = None
    edge_limits: EdgeLimits | None = None
    #: TCP congestion control for every node's connections (e.g. ``cubic``, ``bbr``); None: the kernel's
    tcp_congestion_control: str | None = None
    #: Where the testbed's own processes (delay lines, relays) append their stderr, a file each, kept for
    #: the user and shown (the tail) when one dies; None: they write to the stderr of the testbed's owner
    log_dir: Path | None = None
    #: Changes of the edge–cloud link and of the edge's CPU quota during each run (applied by
    #: ``netem.scheduler.LinkScheduler``). The testbed comes up as its first steps say (``edge_cloud``
    #: and ``edge_limits.cpus`` must be those) in a layout that can take every later step.
    schedule: LinkSchedule | None = None

    def __post_init__(self) -> None:
        if not PREFIX_RE.fullmatch(self.prefix):
            raise SpecError(
                f"prefix {self.prefix!r} must be 'lx' followed by 1 to 8 of [0-9a-z] (e.g. 'lx3f9a1c'), "
                "so every object it names is recognisably this project's and fits an interface name"
            )
        cc = self.tcp_congestion_control
        if cc is not None and not CONGESTION_CONTROL_RE.fullmatch(cc):
            raise SpecError(
                f"TCP congestion control {cc!r} is not a name like the kernel's (cubic, bbr, reno, ...)"
            )
        self._check_schedule()

    def _check_schedule(self) -> None:
        sched = self.schedule
        if sched is None:
            return
        if sched.steps and sched.steps[0].spec != self.edge_cloud:
            first, asked = (
                " ".join(f"{k} {v}" for k, v in spec.describe().items() if v is not None)
                for spec in (sched.steps[0].spec, self.edge_cloud)
            )
            raise SpecError(
                f"the edge–cloud link comes up as the schedule's first step ({first}), not as {asked}"
            )
        cpus = self.edge_limits.cpus if self.edge_limits is not None else None
        if sched.cpu_steps and sched.cpu_steps[0].cpus != cpus:
            raise SpecError(
                f"the edge's CPU quota starts at the schedule's first CPU step ({sched.cpu_steps[0].cpus:g} "
                f"cores), not at {'no quota' if cpus is None else f'{cpus:g} cores'}"
            )
