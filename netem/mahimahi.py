"""Bandwidth traces in Mahimahi's format, the format of the public cellular traces.

A trace is one delivery opportunity per line: the millisecond at which one 1500-byte packet may leave.
Repeated times are several packets in the same millisecond; when the trace runs out it starts again,
shifted by its last line's time (its period), as Mahimahi's ``LinkQueue`` replays it.
:func:`netem.schedule.mahimahi_to_rate_steps` turns one into rate steps for tc.

``python -m netem.mahimahi --write-traces netem/traces`` regenerates the two traces shipped for tests
and examples: ``step.mahimahi`` (:func:`step_trace`) and ``fluctuating.mahimahi``
(:func:`fluctuating_trace`).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from netem.errors import SpecError

MAHIMAHI_PACKET_BYTES = 1500
"""Mahimahi's delivery opportunity is one MTU-sized packet (its ``PACKET_SIZE``)."""
MAHIMAHI_PACKET_BITS = MAHIMAHI_PACKET_BYTES * 8
TRACES_DIR = Path(__file__).resolve().parent / "traces"


def parse_mahimahi(lines: Iterable[str], source: str = "trace") -> list[int]:
    """Delivery opportunities (ms) from the lines of a Mahimahi trace; blank lines are skipped.

    Like Mahimahi, refuses decreasing times and a trace whose last time is 0 (it would repeat with
    period 0); repeated times are several packets in the same millisecond.
    """
    out: list[int] = []
    for lineno, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line:
            continue
        if not line.isdigit():
            raise SpecError(
                f"{source} line {lineno}: {line[:40]!r} is not a time in whole milliseconds ≥ 0 "
                "(a Mahimahi trace has one per line)"
            )
        t = int(line)
        if out and t < out[-1]:
            raise SpecError(f"{source} line {lineno}: {t} ms comes before the previous line's {out[-1]} ms")
        out.append(t)
    if not out:
        raise SpecError(f"{source} holds no delivery opportunities (an empty Mahimahi trace)")
    if out[-1] == 0:
        raise SpecError(f"{source} lasts 0 ms: its last time is its period, so it must be above 0")
    return out


def read_mahimahi(path: str | Path) -> list[int]:
    """Read a Mahimahi trace file: one delivery opportunity (ms) per line; see :func:`parse_mahimahi`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="ascii")
    except OSError as exc:
        raise SpecError(f"cannot read Mahimahi trace {path}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path} is not a Mahimahi trace (not plain text)") from exc
    return parse_mahimahi(text.splitlines(), str(path))


def window_counts(opportunities: Sequence[int], window_ms: int, duration_ms: int) -> list[int]:
    """Delivery opportunities in each window ``[k·w, (k+1)·w)`` of ``[0, duration)``, the trace repeating.

    Repetition follows Mahimahi: pass ``n`` of the trace is shifted by ``n`` times its last time.
    """
    period = opportunities[-1]
    windows = -(-duration_ms // window_ms)
    counts = [0] * windows
    for base in range(0, duration_ms, period):
        for t in opportunities:
            if base + t >= duration_ms:
                break
            counts[(base + t) // window_ms] += 1
    return counts


# --- the shipped traces --------------------------------------------------------------------------------


def rate_to_opportunities(rates_bps: Sequence[float]) -> list[int]:
    """Delivery opportunities for a rate per millisecond (``rates_bps[i]`` holds during ms ``i+1``).

    Credit accrues each millisecond and a packet leaves whenever a whole one is earned. A last opportunity at the final millisecond makes the trace's
    period exactly ``len(rates_bps)`` ms.
    """
    out: list[int] = []
    credit = 0.0
    for ms, rate in enumerate(rates_bps, start=1):
        credit += rate / 1000
        while credit >= MAHIMAHI_PACKET_BITS:
            out.append(ms)
            credit -= MAHIMAHI_PACKET_BITS
    if not out or out[-1] != len(rates_bps):
        out.append(len(rates_bps))
    return out


def step_trace(high_bps: int = 12_000_000, low_bps: int = 1_200_000, half_s: int = 5) -> list[int]:
    """``half_s`` seconds at ``high_bps``, then as long at ``low_bps``; repeating, the rate steps both ways."""
    return rate_to_opportunities([high_bps] * (half_s * 1000) + [low_bps] * (half_s * 1000))


def fluctuating_trace(
    seed: int = 22,
    seconds: int = 10,
    step_ms: int = 100,
    low_bps: float = 1e6,
    high_bps: float = 12e6,
) -> list[int]:
    """A seeded random walk of the rate in log space, a new value every ``step_ms``, kept in [low, high].

    Only ``random.Random.random`` is used: Python keeps its sequence for a seed across versions, so the
    shipped file can be regenerated exactly.
    """
    rng = random.Random(seed)
    lo, hi = math.log(low_bps), math.log(high_bps)
    x = (lo + hi) / 2
    rates: list[float] = []
    for _ in range(seconds * 1000 // step_ms):
        x += (rng.random() * 2 - 1) * 0.3
        x = lo + abs(x - lo) if x < lo else (hi - abs(x - hi) if x > hi else x)  # reflect at the bounds
        rates.extend([math.exp(x)] * step_ms)
    return rate_to_opportunities(rates)


SHIPPED_TRACES: dict[str, Callable[[], list[int]]] = {
    "step.mahimahi": step_trace,
    "fluctuating.mahimahi": fluctuating_trace,
}


def format_mahimahi(opportunities: Iterable[int]) -> str:
    return "".join(f"{t}\n" for t in opportunities)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m netem.mahimahi --write-traces DIR``: write the shipped traces into DIR."""
    ap = argparse.ArgumentParser(prog="python -m netem.mahimahi", description="Write the shipped traces.")
    ap.add_argument("--write-traces", type=Path, metavar="DIR", required=True, help="e.g. netem/traces")
    args = ap.parse_args(argv)
    try:
        args.write_traces.mkdir(parents=True, exist_ok=True)
        for name, make in SHIPPED_TRACES.items():
            (args.write_traces / name).write_text(format_mahimahi(make()), encoding="ascii")
            print(f"wrote {args.write_traces / name}")
    except OSError as exc:
        print(f"error: cannot write into {args.write_traces}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
