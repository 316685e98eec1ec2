"""Runs measured while other programs used the CPU: judged, re-run a bounded number of times, and marked.

Each run records the mean CPU that programs outside the harness's process tree used while it measured
(``host_other_cpu_percent``, 100 = one core; ``harness.processes.ResourceSampler``). Above a limit the
run may have measured the other programs rather than the nodes, so it is run again, up to a number of
retries; every attempt is kept -- the discarded ones apart from the runs the figures come from, each
saying why -- and a run still over the limit after the last retry is kept and marked ``busy``, never
silently mixed in with quiet ones.

The decision (:func:`judge`) is pure, :func:`repeat_while_busy` is the loop around any function
that measures one attempt, and :func:`rerun_while_busy` that loop telling the user: ``run`` and a
study (``harness.study``) re-run their runs through it, so a study's runs are judged as ``run``'s are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from contract.results import Run

logger = logging.getLogger(__name__)

#: Mean CPU of other programs (100 = one core) above which a run counts as measured on a busy host:
#: half a core. That is well above the background of an otherwise idle host and well below one program
#: that keeps a core busy (a build, a test suite), and it is the level above which ``check`` calls a
#: comparison inconclusive, so a quiet run kept here is one the check accepts.
DEFAULT_MAX_OTHER_CPU = 50.0
#: Runs again after the first attempt: a short burst of other work passes, a lasting one is marked.
DEFAULT_BUSY_RETRIES = 2


@dataclass(frozen=True)
class Verdict:
    """What to do with one attempt: ``busy`` (over the limit), ``retry`` (run it again) and why."""

    load: float | None
    limit: float
    busy: bool
    retry: bool
    reason: str


def other_load(run: Run) -> float | None:
    """The mean CPU % other programs used during ``run`` (None when it was not sampled)."""
    return None if run.host_other_cpu_percent is None else run.host_other_cpu_percent.mean


def judge(load: float | None, limit: float, attempt: int, retries: int) -> Verdict:
    """The verdict on attempt ``attempt`` (0 = the first) of a run whose other programs used ``load``
    % CPU, with at most ``retries`` re-runs. A run that was not sampled is not judged busy."""
    if limit < 0 or retries < 0 or attempt < 0:
        raise ValueError("limit, retries and attempt must be ≥ 0")
    busy = load is not None and load > limit
    reason = f"busy host: other programs used {load:.0f} % CPU > limit {limit:g} %" if busy else ""
    return Verdict(load, limit, busy, busy and attempt < retries, reason)


def repeat_while_busy(
    measure: Callable[[int], Run],
    *,
    limit: float = DEFAULT_MAX_OTHER_CPU,
    retries: int = DEFAULT_BUSY_RETRIES,
    on_discard: Callable[[Run, Verdict], None] | None = None,
) -> tuple[Run, list[Run]]:
    """Measure ``measure(attempt)`` until an attempt is quiet or the retries are spent.

    Returns ``(kept, discarded)``. Every attempt gets its ``attempt`` and ``busy``; a discarded one also
    ``discarded`` (the reason), and the kept one is the last attempt -- ``busy`` true when even it was
    over the limit. ``on_discard`` is told of each discarded attempt (e.g. to tell the user).
    """
    discarded: list[Run] = []
    attempt = 0
    while True:
        run = measure(attempt)
        verdict = judge(other_load(run), limit, attempt, retries)
        run = replace(run, attempt=attempt, busy=verdict.busy)
        if not verdict.retry:
            return run, discarded
        run = replace(run, discarded=verdict.reason)
        discarded.append(run)
        if on_discard is not None:
            on_discard(run, verdict)
        attempt += 1


def rerun_while_busy(
    measure: Callable[[int], Run],
    *,
    limit: float,
    retries: int,
    where: str,
    notify: Callable[[str], None] | None = None,
) -> tuple[Run, list[Run]]:
    """:func:`repeat_while_busy`, logging each discarded attempt and telling ``notify`` of it and of a
    run kept busy; ``where`` names the run in those lines (``run 2/5``, ``block 1: mem-2-…``)."""

    def discard(run: Run, verdict: Verdict) -> None:
        # (at INFO when the caller tells the user itself, so the line is not printed twice)
        (logger.info if notify else logger.warning)("%s: %s; running it again", where, verdict.reason)
        if notify:
            notify(f"{where}: {verdict.reason}: running it again ({run.attempt + 1}/{retries})")

    kept, thrown = repeat_while_busy(measure, limit=limit, retries=retries, on_discard=discard)
    if kept.busy:
        reason = judge(other_load(kept), limit, 0, 0).reason
        (logger.info if notify else logger.warning)(
            "%s: %s after %d re-run(s); kept, marked busy", where, reason, len(thrown)
        )
        if notify:
            notify(f"{where}: {reason} after {len(thrown)} re-run(s); kept, marked busy")
    return kept, thrown
