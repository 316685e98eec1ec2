"""Where the three nodes run: a CPU set and an OpenMP/MKL thread count per node (the placement policy).

On one machine the test, edge and cloud nodes share the CPUs, and with ``OMP_PROC_BIND`` each node binds
its thread i to the i-th CPU it may use: left alone, the edge's and the cloud's threads land on the same
CPUs and wait for each other, which separate machines never do. So by default (``--placement auto``)
the harness gives each node CPUs of its own when there are enough:

- **disjoint** (three or more usable CPUs): the test node gets one CPU -- the lowest, as it computes
  nothing and CPU 0 is where much of the kernel's own work lands --, and the others are split between the
  edge and the cloud, the edge taking the lower half (rounded down) and the cloud the rest, the larger
  share when the count is odd (the cloud stands for the bigger machine). An ``--edge-cpus`` quota above
  half widens the edge's share to fit it. Each node gets as many threads as its set has CPUs.
- **shared** (fewer than three usable CPUs, or ``--placement shared``): every node may run on every CPU,
  as before this policy existed. With two CPUs there is no set to give the test node, and an edge and a
  cloud on one CPU each measured slower than sharing both (docs/design-notes.md).

What the user sets wins: an ``--edge-cpuset`` (the edge's cgroup) or ``--cloud-cpuset`` is used as given
and the policy places only the other nodes, on the CPUs left; ``OMP_NUM_THREADS`` in the environment
sets every placed node's thread count; pinning variables that name CPUs themselves (``OMP_PLACES``,
``GOMP_CPU_AFFINITY``, ``KMP_AFFINITY``) make ``auto`` keep the CPUs shared. Sets the harness applies go
through the affinity of the process before it starts (``sched_setaffinity``, inside the edge's cgroup for
the edge) and are read back from the kernel once it runs.

:func:`place` is pure: it gets the usable CPUs and the user's settings as arguments.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from netem.spec import format_cpuset

from ._pins import CPU_NAMING_VARIABLES

PLACEMENTS = ("auto", "shared", "disjoint")
#: One CPU per node.
MIN_DISJOINT_CPUS = 3
ROLES = ("test", "edge", "cloud")
THREADS_VARIABLE = "OMP_NUM_THREADS"
#: How each node's CPU set is applied.
AFFINITY = "sched_setaffinity"
CGROUP = "cgroup"
#: Who chose a node's CPUs or threads.
BY_POLICY = "policy"
BY_DEFAULT = "default"


@dataclass(frozen=True)
class NodePlacement:
    """One node's CPUs and threads, and who chose each.

    ``cpus`` None: any CPU the harness may use. ``mechanism``: ``sched_setaffinity`` (the harness sets
    it before the node starts and reads it back), ``cgroup`` (the edge's ``--edge-cpuset``, applied by
    the testbed) or None. ``threads`` None: torch's default (a thread per CPU it may use); otherwise the
    node's ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``. ``cpus_by``/``threads_by``: ``policy``, ``default``,
    or the user's option or variable that set it.
    """

    cpus: frozenset[int] | None = None
    mechanism: str | None = None
    cpus_by: str = BY_DEFAULT
    threads: int | None = None
    threads_by: str = BY_DEFAULT

    def __post_init__(self) -> None:
        if (self.cpus is None) != (self.mechanism is None):
            raise ValueError("a node's CPU set and its mechanism go together")
        if self.cpus is not None and not self.cpus:
            raise ValueError("a node's CPU set must not be empty")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")

    @property
    def affinity(self) -> frozenset[int] | None:
        """The CPUs the harness itself must give the process (None when the testbed or nobody does)."""
        return self.cpus if self.mechanism == AFFINITY else None

    @property
    def user_threads(self) -> bool:
        """The thread count comes from the user's environment, which the node inherits unchanged."""
        return self.threads_by == THREADS_VARIABLE

    def describe(self) -> dict[str, Any]:
        return {
            "cpuset": None if self.cpus is None else format_cpuset(self.cpus),
            "mechanism": self.mechanism,
            "cpus_by": self.cpus_by,
            "threads": self.threads,
            "threads_by": self.threads_by,
        }


@dataclass(frozen=True)
class Placement:
    """The policy in force (``shared`` or ``disjoint``), why, and each node's :class:`NodePlacement`."""

    policy: str
    requested: str
    reason: str
    usable: frozenset[int]
    test: NodePlacement
    edge: NodePlacement
    cloud: NodePlacement

    def __post_init__(self) -> None:
        if self.policy not in ("shared", "disjoint"):
            raise ValueError(f"policy must be shared or disjoint, not {self.policy!r}")
        if self.requested not in PLACEMENTS:
            raise ValueError(f"requested placement must be one of {PLACEMENTS}, not {self.requested!r}")

    def node(self, role: str) -> NodePlacement:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        placed: NodePlacement = getattr(self, role)
        return placed

    @property
    def overrides(self) -> tuple[str, ...]:
        """The user's options and variables that decided some node's CPUs or threads."""
        found = {
            by
            for role in ROLES
            for by in (self.node(role).cpus_by, self.node(role).threads_by)
            if by not in (BY_POLICY, BY_DEFAULT)
        }
        return tuple(sorted(found))

    def describe(self) -> dict[str, Any]:
        """The ``placement`` block of the results file's ``config``."""
        return {
            "policy": self.policy,
            "requested": self.requested,
            "reason": self.reason,
            "usable_cpus": format_cpuset(self.usable),
            "nodes": {role: self.node(role).describe() for role in ROLES},
            "user_overrides": list(self.overrides),
        }


def _env_threads(environ: Mapping[str, str]) -> int | None:
    """The user's ``OMP_NUM_THREADS`` (its first level when nested, ``4,2``); None when unset or unusable."""
    text = environ.get(THREADS_VARIABLE, "").split(",")[0].strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _edge_share(remaining: int, quota: float | None) -> int:
    """CPUs of the edge out of ``remaining`` that it splits with the cloud: half (rounded down), or
    enough for its quota; at least one each."""
    share = remaining // 2
    if quota is not None:
        share = max(share, math.ceil(quota))
    return min(max(share, 1), remaining - 1)


def place(
    usable: Collection[int],
    *,
    requested: str = "auto",
    edge_cpuset: Collection[int] | None = None,
    edge_quota: float | None = None,
    edge_limit_threads: int | None = None,
    cloud_cpuset: Collection[int] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Placement:
    """The placement of the three nodes (see the module's docstring for the policy).

    ``usable``: the CPUs the harness may use (its affinity). ``edge_cpuset``/``edge_quota``: the user's
    ``--edge-cpuset``/``--edge-cpus``; ``edge_limit_threads``: the threads those limits give the edge
    (``netem.EdgeLimits.threads``). ``cloud_cpuset``: ``--cloud-cpuset``. ``environ``: the user's
    environment (``OMP_NUM_THREADS`` and the pinning variables). Raises ``ValueError`` for an unknown
    ``requested`` policy, or ``disjoint`` on fewer than three CPUs.
    """
    env = environ or {}
    cpus = frozenset(usable)
    if requested not in PLACEMENTS:
        raise ValueError(f"--placement must be one of {', '.join(PLACEMENTS)}, not {requested!r}")
    user_edge = frozenset(edge_cpuset) if edge_cpuset is not None else None
    user_cloud = frozenset(cloud_cpuset) if cloud_cpuset is not None else None
    naming = [key for key in CPU_NAMING_VARIABLES if key in env]
    if requested == "disjoint" and len(cpus) < MIN_DISJOINT_CPUS:
        raise ValueError(
            f"--placement disjoint needs at least {MIN_DISJOINT_CPUS} usable CPUs (one per node); this "
            f"process may use {len(cpus)} ({format_cpuset(cpus)}): use --placement shared or auto"
        )
    if requested == "shared":
        policy, reason = "shared", "--placement shared: every node may use every CPU"
    elif requested == "disjoint":
        policy, reason = "disjoint", "--placement disjoint"
    elif len(cpus) < MIN_DISJOINT_CPUS:
        policy = "shared"
        reason = f"{len(cpus)} usable CPU(s): too few for one per node"
    elif naming:
        policy = "shared"
        reason = f"the environment places OpenMP threads itself ({', '.join(naming)})"
    else:
        policy = "disjoint"
        reason = f"{len(cpus)} usable CPUs: each node gets CPUs of its own, as on separate machines"

    sets: dict[str, frozenset[int] | None] = {"test": None, "edge": user_edge, "cloud": user_cloud}
    if policy == "disjoint":
        free = sorted(cpus - (user_edge or frozenset()) - (user_cloud or frozenset()))
        need = [role for role in ("edge", "cloud") if sets[role] is None]
        if len(free) > len(need):  # (a CPU for the test node, and at least one for each other)
            sets["test"], free = frozenset(free[:1]), free[1:]
        if need == ["edge", "cloud"] and len(free) >= 2:
            split = _edge_share(len(free), edge_quota)
            sets["edge"], sets["cloud"] = frozenset(free[:split]), frozenset(free[split:])
        elif len(need) == 1 and free:
            sets[need[0]] = frozenset(free)
        unplaced = [role for role in ROLES if sets[role] is None]
        if unplaced:
            reason += f"; no CPU left for the {' and '.join(unplaced)} node(s), which may use any"

    user_threads = _env_threads(env)

    def threads_of(role: str, placed: frozenset[int] | None, by_policy: bool) -> tuple[int | None, str]:
        # (the user's per-node option first, then their environment, then the set's size)
        if role == "edge" and edge_limit_threads is not None:
            limit = edge_limit_threads if placed is None else min(edge_limit_threads, len(placed))
            options = [o for o, on in (("--edge-cpus", edge_quota), ("--edge-cpuset", user_edge)) if on]
            return limit, "/".join(options) or "--edge-cpus"
        if role == "cloud" and user_cloud is not None:
            return len(user_cloud), "--cloud-cpuset"
        if user_threads is not None:
            return user_threads, THREADS_VARIABLE
        if by_policy and placed is not None:
            return len(placed), BY_POLICY
        return None, BY_DEFAULT

    nodes: dict[str, NodePlacement] = {}
    for role in ROLES:
        placed = sets[role]
        user_set = (role == "edge" and user_edge is not None) or (role == "cloud" and user_cloud is not None)
        threads, threads_by = threads_of(role, placed, by_policy=placed is not None and not user_set)
        if placed is None:
            mechanism, cpus_by = None, BY_DEFAULT
        elif role == "edge" and user_set:
            mechanism, cpus_by = CGROUP, "--edge-cpuset"
        else:
            mechanism, cpus_by = AFFINITY, "--cloud-cpuset" if user_set else BY_POLICY
        nodes[role] = NodePlacement(placed, mechanism, cpus_by, threads, threads_by)
    return Placement(policy, requested, reason, cpus, nodes["test"], nodes["edge"], nodes["cloud"])


def format_placement(described: Mapping[str, Any]) -> str:
    """One line for the summary from a results file's ``config.placement``, e.g. ``disjoint: test 0 (1
    thread), edge 1-7 (7 threads), cloud 8-15 (8 threads)`` or ``shared: every node on any of CPUs 0-1
    (2 usable CPU(s): too few for one per node)``."""
    nodes = described.get("nodes") or {}
    parts = []
    for role in ROLES:
        node = nodes.get(role) or {}
        threads = node.get("threads")
        count = f" ({threads} thread{'s' if threads != 1 else ''})" if threads else ""
        if node.get("cpuset") or count:
            parts.append(f"{role} {node.get('cpuset') or 'any CPU'}{count}")
    where = ", ".join(parts) if parts else f"every node on any of CPUs {described.get('usable_cpus')}"
    line = f"{described.get('policy')}: {where} ({described.get('reason')})"
    overrides = described.get("user_overrides") or []
    if overrides:
        line += f"; yours: {', '.join(overrides)}"
    return line
