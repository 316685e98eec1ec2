"""A run's link and CPU schedule (``--link-schedule``, ``--cpu-schedule``): checked before anything
starts, applied by ``netem.LinkScheduler`` while the test node runs, and recorded with the run.

Time 0 of the schedule is the test node's start; the run entry records it on ``CLOCK_MONOTONIC`` and
where the measured phase began on the schedule's time, so each change can be placed among the batches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping
from typing import Any

import netem
from contract.errors import LocalExitError
from contract.results import ScheduleRecord
from netem.schedule import from_text, parse_cpu_inline
from netem.scheduler import LinkScheduler, ScheduleFailed, ScheduleTarget

from .config import RunConfig
from .errors import ComponentFailure, ConfigError

#: What a failed change is called in the error that fails the run.
COMPONENT = "the link schedule"


def parse_schedule(cfg: RunConfig, usable_cpus: int | None = None) -> netem.LinkSchedule | None:
    """The schedule ``--link-schedule`` and ``--cpu-schedule`` give (None without either), or
    ``ConfigError`` naming the option that is wrong. ``usable_cpus``: the CPUs a quota may take at most
    (default: this process's affinity), as ``--edge-cpus`` is refused above them."""
    if cfg.link_schedule is None and cfg.cpu_schedule is None:
        return None
    link: netem.LinkSchedule | None = None
    if cfg.link_schedule is not None:
        try:
            link = from_text(cfg.link_schedule)
        except (ValueError, LocalExitError) as exc:
            raise ConfigError(f"bad --link-schedule: {exc}") from exc
    cpu_steps: tuple[netem.CpuStep, ...] = link.cpu_steps if link is not None else ()
    if cfg.cpu_schedule is not None:
        if cpu_steps:
            raise ConfigError(
                f"--link-schedule {cfg.link_schedule} has [[cpu]] steps of its own: leave out --cpu-schedule"
            )
        try:
            cpu_steps = parse_cpu_inline(cfg.cpu_schedule)
        except (ValueError, LocalExitError) as exc:
            raise ConfigError(f"bad --cpu-schedule: {exc}") from exc
    have = len(os.sched_getaffinity(0)) if usable_cpus is None else usable_cpus
    if cfg.edge_cpuset is not None:  # (a quota above the edge's CPU set is as much as none)
        with contextlib.suppress(ValueError):  # (a bad set is --edge-cpuset's error, said elsewhere)
            have = min(have, len(netem.parse_cpuset(cfg.edge_cpuset)))
    for i, step in enumerate(cpu_steps, start=1):
        if step.cpus > have:
            raise ConfigError(
                f"CPU step {i} (at {step.at_s:g}s) asks for {step.cpus:g} cores, more than the edge can "
                f"use here ({have} CPUs)"
            )
    try:
        return netem.LinkSchedule(link.steps if link is not None else (), cpu_steps)
    except (ValueError, LocalExitError) as exc:
        raise ConfigError(f"bad schedule: {exc}") from exc


def starting_point(
    schedule: netem.LinkSchedule | None, edge_cloud: netem.LinkSpec, limits: netem.EdgeLimits | None
) -> tuple[netem.LinkSpec, netem.EdgeLimits | None]:
    """The edge–cloud link and edge limits the testbed comes up with: the schedule's first steps, where
    it has them (``RunConfig`` refuses ``--bw``… or ``--edge-cpus`` beside them)."""
    if schedule is None:
        return edge_cloud, limits
    if schedule.initial is not None:
        edge_cloud = schedule.initial
    if schedule.cpu_steps:
        limits = dataclasses.replace(limits or netem.EdgeLimits(), cpus=schedule.cpu_steps[0].cpus)
    return edge_cloud, limits


class ScheduledRun:
    """One run's schedule while it is applied: ``check`` fails the run at once when a change failed,
    ``record`` gives the run entry's fields. Without a schedule both do nothing."""

    def __init__(self, scheduler: LinkScheduler | None) -> None:
        self.scheduler = scheduler

    def check(self) -> None:
        """Raise ``ComponentFailure`` (exit code 1, a runtime failure) if a change could not be applied."""
        if self.scheduler is None:
            return
        try:
            self.scheduler.check()
        except ScheduleFailed as exc:
            raise ComponentFailure("link-schedule", COMPONENT, str(exc)) from exc

    def record(self, overall: Mapping[str, Any]) -> ScheduleRecord | None:
        """What the schedule did during the run (None: no schedule); ``overall``: the test node's
        records' ``overall``, whose ``first_send_ns`` (``CLOCK_MONOTONIC``) places the measured phase on
        the schedule. Each change is ``netem.AppliedChange.to_json()``."""
        if self.scheduler is None:
            return None
        self.check()  # (a change that failed after the test node's last look)
        t0 = self.scheduler.t0_ns
        first = overall.get("first_send_ns")
        measured_from = None
        if t0 is not None and isinstance(first, int) and first > 0:  # (0: the test node did not say)
            measured_from = (first - t0) / 1e9
        return ScheduleRecord(
            changes=tuple(change.to_json() for change in self.scheduler.changes),
            not_reached=self.scheduler.not_reached,
            t0_ns=t0,
            measured_from_s=measured_from,
        )


@contextlib.contextmanager
def scheduled(tb: object, schedule: netem.LinkSchedule | None) -> Iterator[ScheduledRun]:
    """Apply ``schedule`` to the testbed ``tb`` from now (time 0) until the block ends."""
    if schedule is None:
        yield ScheduledRun(None)
        return
    if not isinstance(tb, ScheduleTarget):
        raise ConfigError(f"this testbed ({type(tb).__name__}) cannot change its link during a run")
    with LinkScheduler(tb, schedule) as scheduler:
        yield ScheduledRun(scheduler)
