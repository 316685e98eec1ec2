"""``python -m netem.show_schedule``: print a link schedule or a Mahimahi trace as the steps it applies.

A program of its own rather than ``python -m netem.schedule``: the package imports ``netem.schedule``,
and running an already imported module as ``__main__`` executes it twice (Python warns about it).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from contract.cli import Parser
from netem.errors import SpecError
from netem.mahimahi import read_mahimahi
from netem.schedule import DEFAULT_TRACE_WINDOW_MS, LinkSchedule, fmt_at, from_text, mahimahi_to_rate_steps


def build_parser() -> Parser:
    ap = Parser(prog="python -m netem.show_schedule", description="Print a link schedule as its steps.")
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--show", metavar="SCHEDULE", help="a schedule: the inline form or a TOML file")
    group.add_argument("--show-trace", type=Path, metavar="FILE", help="a Mahimahi trace, as rate steps")
    ap.add_argument(
        "--window-ms",
        type=int,
        default=DEFAULT_TRACE_WINDOW_MS,
        help=f"with --show-trace: the window a trace's rate is averaged over (default {DEFAULT_TRACE_WINDOW_MS})",
    )
    return ap


def describe(sched: LinkSchedule) -> list[str]:
    """One line per step: its time and the link's (or the edge's CPU limit's) values from then on."""
    lines = []
    for s in sched.steps:
        d = s.spec.describe()
        lines.append(
            f"{fmt_at(s.at_s):>8}  rate {d['rate'] or 'unlimited'}  delay {d['delay']}  "
            f"jitter {d['jitter']}  loss {d['loss']}"
        )
    lines += [f"{fmt_at(c.at_s):>8}  cpus {c.cpus:g}" for c in sched.cpu_steps]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.window_ms < 1:
            raise SpecError(f"--window-ms must be at least 1, got {args.window_ms}")
        if args.show_trace is not None:
            opp = read_mahimahi(args.show_trace)
            sched = mahimahi_to_rate_steps(opp, args.window_ms, opp[-1] / 1000)
        else:
            sched = from_text(args.show)
    except SpecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(describe(sched)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
