"""The edge device's CPU quota, CPU set and memory limit, as a cgroup (v1 controllers or v2 unified).

The plan (which directories, which files get which values) is pure data built by ``plan_cgroup``; the
``EdgeCgroup`` object applies it, puts processes in it before they exec (``preexec_fn``), and removes it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from netem._proc import kill_and_reap
from netem.errors import CapabilityError, NetemError
from netem.spec import EdgeLimits, cpuset_cpus

logger = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
"""The kernel's default CFS period (100 ms); the quota is ``cpus`` times it."""


@dataclass(frozen=True)
class CgroupPlan:
    version: str
    dirs: tuple[Path, ...]  # created in this order, removed in reverse
    writes: tuple[tuple[Path, str], ...]  # (file, value), in order
    enable: tuple[tuple[Path, str], ...] = ()  # v2: subtree_control writes in the parent

    @property
    def procs_files(self) -> tuple[Path, ...]:
        return tuple(d / "cgroup.procs" for d in self.dirs)


def plan_cgroup(name: str, limits: EdgeLimits, version: str, root: Path = CGROUP_ROOT) -> CgroupPlan:
    """Directories and file writes that give the cgroup ``name`` these limits (pure: touches nothing)."""
    writes: list[tuple[Path, str]] = []
    if version == "v1":
        dirs: list[Path] = []
        if limits.cpus is not None:
            d = root / "cpu" / name
            dirs.append(d)
            writes += [
                (d / "cpu.cfs_period_us", str(CFS_PERIOD_US)),
                (d / "cpu.cfs_quota_us", str(round(limits.cpus * CFS_PERIOD_US))),
            ]
        if limits.cpuset is not None:
            d = root / "cpuset" / name
            dirs.append(d)
            # a v1 cpuset takes no task until both cpus and mems are set; mems are copied from the parent
            mems = _read(root / "cpuset" / "cpuset.mems") or "0"
            writes += [(d / "cpuset.cpus", limits.cpuset), (d / "cpuset.mems", mems)]
        if limits.memory_bytes is not None:
            d = root / "memory" / name
            dirs.append(d)
            writes.append((d / "memory.limit_in_bytes", str(limits.memory_bytes)))
        return CgroupPlan("v1", tuple(dirs), tuple(writes))
    if version == "v2":
        d = root / name
        need = [
            c
            for c, on in (
                ("cpu", limits.cpus is not None),
                ("cpuset", limits.cpuset is not None),
                ("memory", limits.memory_bytes is not None),
            )
            if on
        ]
        enable = ((root / "cgroup.subtree_control", " ".join(f"+{c}" for c in need)),) if need else ()
        if limits.cpus is not None:
            writes.append((d / "cpu.max", f"{round(limits.cpus * CFS_PERIOD_US)} {CFS_PERIOD_US}"))
        if limits.cpuset is not None:
            writes.append((d / "cpuset.cpus", limits.cpuset))
        if limits.memory_bytes is not None:
            writes.append((d / "memory.max", str(limits.memory_bytes)))
        return CgroupPlan("v2", (d,), tuple(writes), enable)
    raise ValueError(f"unknown cgroup version {version!r}")


QUOTA_FILES = ("cpu.cfs_quota_us", "cpu.max")
"""The file that holds a cgroup's CPU quota: v1's ``cpu`` controller, v2's unified hierarchy."""


def plan_cpu_quota(plan: CgroupPlan, cpus: float) -> tuple[tuple[Path, str], ...]:
    """The write that changes a planned cgroup's CPU quota to ``cpus`` cores (pure: touches nothing).

    It is :func:`plan_cgroup`'s own quota write for the same directory, so a quota set at bring-up and
    one set by a schedule are written alike. Raises :class:`NetemError` for a cgroup planned without a
    quota: its ``cpu`` controller may not even be enabled, so a quota cannot be set on it later.
    """
    quota = [path for path, _ in plan.writes if path.name in QUOTA_FILES]
    if not quota:
        raise NetemError(
            "the edge's cgroup was made without a CPU quota, so its quota cannot be changed; "
            "give it one at the start (the first CPU step)"
        )
    d = quota[0].parent
    root = d.parent.parent if plan.version == "v1" else d.parent  # (v1: <root>/cpu/<name>)
    fresh = plan_cgroup(d.name, EdgeLimits(cpus=cpus), plan.version, root)
    return tuple((path, value) for path, value in fresh.writes if path.name in QUOTA_FILES)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def available_cpus(version: str, root: Path = CGROUP_ROOT) -> list[int] | None:
    f = root / "cpuset" / "cpuset.cpus" if version == "v1" else root / "cpuset.cpus.effective"
    text = _read(f)
    return cpuset_cpus(text) if text else None


class EdgeCgroup:
    """A created cgroup; ``enter`` (a ``preexec_fn``) moves the calling process into it."""

    def __init__(self, plan: CgroupPlan) -> None:
        self.plan = plan
        self._created: list[Path] = []

    @classmethod
    def create(
        cls, name: str, limits: EdgeLimits, version: str | None, root: Path = CGROUP_ROOT
    ) -> EdgeCgroup:
        if version is None:
            raise CapabilityError(
                "edge limits need cgroups with the cpu, cpuset and memory controllers (v1 or v2), "
                "and root; none were found"
            )
        if limits.cpuset is not None:
            have = available_cpus(version, root)
            want = cpuset_cpus(limits.cpuset)
            if have is not None and not set(want) <= set(have):
                raise CapabilityError(
                    f"cpuset {limits.cpuset!r} asks for CPUs this machine lacks (has {have})"
                )
        cg = cls(plan_cgroup(name, limits, version, root))
        try:
            cg._apply()
        except BaseException:
            cg.remove()
            raise
        return cg

    def _apply(self) -> None:
        for path, value in self.plan.enable:
            _write(path, value)
        for d in self.plan.dirs:
            logger.info("mkdir %s", d)
            try:
                d.mkdir()
            except OSError as exc:
                raise NetemError(f"cannot create cgroup {d}: {exc.strerror}") from exc
            self._created.append(d)
        for path, value in self.plan.writes:
            _write(path, value)

    def set_cpus(self, cpus: float) -> tuple[tuple[Path, str], ...]:
        """Change the CPU quota of the live cgroup to ``cpus`` cores; returns the writes made.

        The kernel takes a new quota at once: it refills the current period's runtime with it and lets
        throttled processes run again (``tg_set_cfs_bandwidth``), so nothing waits for the next period.
        """
        writes = plan_cpu_quota(self.plan, cpus)
        for path, value in writes:
            _write(path, value)
        return writes

    def enter(self) -> None:
        """Move this process into every controller's cgroup (runs in the child before exec)."""
        pid = str(os.getpid())
        for f in self.plan.procs_files:
            with open(f, "w") as fh:
                fh.write(pid)

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.plan.procs_files:
            out.update(int(x) for x in _read(f).split())
        return sorted(out)

    def remove(self, grace_s: float = 2.0) -> None:
        """Kill what is still inside and wait until it is gone, then remove the directories.

        All of it was started by this testbed. The nodes are stopped before this, so what is found here
        is a child whose start was cut short before it was registered anywhere: killed and reaped here,
        as a zombie still holds the cgroup.
        """
        deadline = time.monotonic() + grace_s
        pids = sorted({p for d in self._created for p in _pids_of(d)})
        if pids:
            logger.info("killing %s, still in the edge's cgroup", pids)
            kill_and_reap(pids, grace_s)
        errors = []
        for d in reversed(self._created):
            while True:
                try:
                    d.rmdir()
                    logger.info("rmdir %s", d)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    inside = _pids_of(d)
                    if exc.errno == errno.EBUSY and time.monotonic() < deadline:
                        # (a task still exiting, or one that entered after the look above)
                        kill_and_reap(inside, max(0.0, deadline - time.monotonic()))
                        time.sleep(0.01)
                        continue
                    errors.append(f"{d}: {exc.strerror}" + (f", processes {inside} inside" if inside else ""))
                break
        self._created.clear()
        if errors:
            raise NetemError("could not remove cgroup(s): " + "; ".join(errors))


def _pids_of(d: Path) -> list[int]:
    return [int(x) for x in _read(d / "cgroup.procs").split()]


def _write(path: Path, value: str) -> None:
    logger.info("write %s = %s", path, value)
    try:
        path.write_text(value)
    except OSError as exc:
        raise NetemError(f"cannot write {value!r} to {path}: {exc.strerror}") from exc
