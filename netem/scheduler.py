"""Applying a :class:`~netem.schedule.LinkSchedule` to a live testbed during a run, each step on time.

A :class:`LinkScheduler` owns one thread. Time 0 is the moment :meth:`LinkScheduler.start` is called
(the harness starts it with the test node); every step, link and CPU, the first included, is applied
at its time through the testbed (``change_link``: ``tc … change`` and the delay line's control channel;
``change_edge_cpus``: the cgroup's quota), so every repeat of a run starts from the first step whatever
the one before left. Each change is recorded as an :class:`~netem.schedule.AppliedChange` whose
lateness -- applied minus scheduled, both on ``CLOCK_MONOTONIC`` -- includes the wake-up and every
command the change took. A change that fails stops the schedule; :meth:`LinkScheduler.check` raises it
(:class:`ScheduleFailed`) for the owner, whose run then no longer has the conditions it would record.
Steps whose time comes after :meth:`LinkScheduler.stop` are not applied, and counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, runtime_checkable

from netem.errors import NetemError
from netem.executor import DEFAULT_TIMEOUT_S
from netem.schedule import AppliedChange, LinkSchedule
from netem.spec import LinkSpec

logger = logging.getLogger(__name__)

LATE_TARGET_S = 0.050
"""A change is to be in force within 50 ms of its time; results are compared against this."""
STOP_TIMEOUT_S = 2 * DEFAULT_TIMEOUT_S
"""How long :meth:`LinkScheduler.stop` waits for a change in flight: a change is a few commands, each
of which the executor gives up on after its own timeout."""


@runtime_checkable
class ScheduleTarget(Protocol):
    """What a scheduler needs of a testbed (``netem.Testbed``; tests pass fakes)."""

    def change_link(self, spec: LinkSpec) -> Mapping[str, str]: ...
    def change_edge_cpus(self, cpus: float) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class Change:
    """One step to apply: at ``at_s`` from time 0, the link becomes ``spec`` or the quota ``cpus``."""

    at_s: float
    kind: str  # "link" | "cpu", as in AppliedChange
    spec: LinkSpec | None = None
    cpus: float | None = None

    def __post_init__(self) -> None:
        if (self.kind, self.spec is None, self.cpus is None) not in (
            ("link", False, True),
            ("cpu", True, False),
        ):
            raise ValueError(f"a link step has a spec and a CPU step a quota, not {self}")

    @property
    def values(self) -> dict[str, str | None]:
        """tc-style strings, as the results file records them."""
        if self.spec is not None:
            return self.spec.describe()
        return {"cpus": f"{self.cpus:g}"}

    def describe(self) -> str:
        shown = ", ".join(f"{k} {v}" for k, v in self.values.items() if v is not None)
        return f"{self.kind} step at {self.at_s:g}s ({shown})"


def changes_of(schedule: LinkSchedule) -> tuple[Change, ...]:
    """Every step of ``schedule`` in time order; at equal times the CPU quota's first: one file write,
    it delays the link's change by a fraction of a millisecond, where the link's commands would delay
    it by milliseconds."""
    link = [Change(s.at_s, "link", spec=s.spec) for s in schedule.steps]
    cpu = [Change(s.at_s, "cpu", cpus=s.cpus) for s in schedule.cpu_steps]
    return tuple(sorted(link + cpu, key=lambda c: (c.at_s, c.kind != "cpu")))


class ScheduleFailed(NetemError):
    """A step of the schedule could not be applied; ``change`` is the step, ``__cause__`` why."""

    def __init__(self, change: Change, cause: BaseException) -> None:
        self.change = change
        super().__init__(f"the {change.describe()} failed: {cause}")


TARGETS = {"link": "edge_cloud", "cpu": "edge"}
"""What each kind of step changes, as :class:`AppliedChange` names it."""


class LinkScheduler:
    """Applies a schedule's steps to ``target`` at their times, from :meth:`start` to :meth:`stop`.

    Use as a context manager (``with LinkScheduler(tb, schedule) as s:``), or call :meth:`start` and
    :meth:`stop` (in a ``finally``). ``clock_ns`` is ``CLOCK_MONOTONIC``, which every process on the
    host shares, so :attr:`t0_ns` places the schedule on the nodes' own timestamps.
    """

    def __init__(
        self,
        target: ScheduleTarget,
        schedule: LinkSchedule,
        *,
        clock_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self._target = target
        self._plan = changes_of(schedule)
        self._clock = clock_ns
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changes: list[AppliedChange] = []
        self._error: ScheduleFailed | None = None
        self._thread: threading.Thread | None = None
        self._t0_ns: int | None = None

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> int:
        """Start the schedule now (time 0) and return time 0 in ``clock_ns``'s nanoseconds."""
        if self._thread is not None:
            raise NetemError("the link scheduler was started already")
        self._t0_ns = t0 = self._clock()
        self._thread = threading.Thread(target=self._run, args=(t0,), name="link-scheduler", daemon=True)
        self._thread.start()
        return self._t0_ns

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Apply no further step; wait for a change in flight to finish (and be recorded)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("the link scheduler's change in flight did not end within %g s", timeout_s)

    def __enter__(self) -> LinkScheduler:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------------------------- results
    def check(self) -> None:
        """Raise :class:`ScheduleFailed` if a step could not be applied (cheap: call it while waiting)."""
        with self._lock:
            error = self._error
        if error is not None:
            raise error

    @property
    def t0_ns(self) -> int | None:
        """Time 0 of the schedule on ``clock_ns`` (None before :meth:`start`)."""
        return self._t0_ns

    @property
    def changes(self) -> tuple[AppliedChange, ...]:
        """The changes applied so far, in order."""
        with self._lock:
            return tuple(self._changes)

    @property
    def not_reached(self) -> int:
        """Steps neither applied nor failed: their time had not come when the scheduler stopped."""
        with self._lock:
            return len(self._plan) - len(self._changes) - (self._error is not None)

    # ------------------------------------------------------------------------------------- the thread
    def _run(self, t0: int) -> None:
        for change in self._plan:
            due_ns = t0 + round(change.at_s * 1e9)
            while (left_ns := due_ns - self._clock()) > 0:
                if self._stop.wait(left_ns / 1e9):
                    return
            if self._stop.is_set():
                return
            try:
                mechanism = self._apply(change)
            except Exception as exc:
                failed = ScheduleFailed(change, exc)
                failed.__cause__ = exc
                logger.error("%s", failed)
                with self._lock:
                    self._error = failed
                return
            applied = AppliedChange(
                kind=change.kind,
                at_s=change.at_s,
                applied_s=(self._clock() - t0) / 1e9,
                values=change.values,
                mechanism=dict(mechanism),
                target=TARGETS[change.kind],
            )
            logger.info(
                "%s applied %.1f ms after its time by %s",
                change.describe(),
                (applied.applied_s - applied.at_s) * 1e3,
                applied.mechanism,
            )
            with self._lock:
                self._changes.append(applied)

    def _apply(self, change: Change) -> Mapping[str, str]:
        if change.spec is not None:
            return self._target.change_link(change.spec)
        if change.cpus is not None:
            return self._target.change_edge_cpus(change.cpus)
        raise ValueError(f"a step changes the link or the CPU quota, this one neither: {change}")
