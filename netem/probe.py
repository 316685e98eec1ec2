"""What this machine can do: root, namespaces, which qdiscs the kernel has, TUN, cgroup version."""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from netem.errors import CommandError
from netem.executor import Executor

logger = logging.getLogger(__name__)

PROBED_QDISCS: dict[str, list[str]] = {
    "tbf": ["tbf", "rate", "1mbit", "burst", "10kb", "limit", "20kb"],
    "htb": ["htb", "default", "1"],
    "netem": ["netem", "delay", "1ms"],
}
"""The qdiscs the testbed can use, each with the smallest arguments that make ``tc`` load it."""


@dataclass(frozen=True)
class Capabilities:
    root: bool
    iproute2: bool
    netns: bool
    qdiscs: frozenset[str]
    tun: bool
    cgroup: str | None  # "v1", "v2" or None
    notes: tuple[str, ...] = ()

    def describe(self) -> dict[str, object]:
        return {
            "root": self.root,
            "iproute2": self.iproute2,
            "netns": self.netns,
            "qdiscs": sorted(self.qdiscs),
            "tun": self.tun,
            "cgroup": self.cgroup,
            "notes": list(self.notes),
        }


def cgroup_version(root: Path = Path("/sys/fs/cgroup")) -> str | None:
    """``v2`` for a unified hierarchy with cpu, cpuset and memory; ``v1`` for those three v1 controllers."""
    controllers = root / "cgroup.controllers"
    if controllers.exists():
        have = set(controllers.read_text().split())
        return "v2" if {"cpu", "cpuset", "memory"} <= have else None
    v1 = (
        root / "cpu" / "cpu.cfs_quota_us",
        root / "cpuset" / "cpuset.cpus",
        root / "memory" / "memory.limit_in_bytes",
    )
    return "v1" if all(p.exists() for p in v1) else None


def _tun_available() -> bool:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def _probe_qdiscs(executor: Executor, notes: list[str]) -> frozenset[str]:
    """Try each qdisc on the loopback of a scratch namespace (``lx<pid>-probe``), then remove it."""
    ns = f"lx{os.getpid():x}-probe"
    found: set[str] = set()
    try:
        executor.run(["ip", "netns", "add", ns])
    except CommandError as exc:
        notes.append(f"cannot create a network namespace: {exc.stderr.strip() or exc}")
        executor.run(["ip", "netns", "del", ns], check=False)  # (`ip` killed part-way may have made it)
        return frozenset()
    try:
        for kind, args in PROBED_QDISCS.items():
            r = executor.run(["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", *args], check=False)
            if r.returncode == 0:
                found.add(kind)
                executor.run(["tc", "-n", ns, "qdisc", "del", "dev", "lo", "root"], check=False)
            else:
                notes.append(f"qdisc {kind} unavailable: {r.stderr.strip()}")
    finally:
        executor.run(["ip", "netns", "del", ns], check=False)
    return frozenset(found)


@functools.lru_cache(maxsize=1)
def probe_capabilities() -> Capabilities:
    """Probe once per process (the answer does not change while we run)."""
    notes: list[str] = []
    root = os.geteuid() == 0
    iproute2 = shutil.which("ip") is not None and shutil.which("tc") is not None
    qdiscs: frozenset[str] = frozenset()
    netns = False
    if not root:
        notes.append("not root: no namespaces, tc or cgroups")
    elif not iproute2:
        notes.append("iproute2 (ip, tc) not installed")
    else:
        qdiscs = _probe_qdiscs(Executor(), notes)
        netns = not any(n.startswith("cannot create a network namespace") for n in notes)
    caps = Capabilities(
        root=root,
        iproute2=iproute2,
        netns=netns,
        qdiscs=qdiscs,
        tun=root and _tun_available(),
        cgroup=cgroup_version() if root else None,
        notes=tuple(notes),
    )
    logger.info("capabilities: %s", caps.describe())
    return caps


TCP_CC_PROC = "/proc/sys/net/ipv4/tcp_congestion_control"
_TCP_CC_AVAILABLE = "/proc/sys/net/ipv4/tcp_available_congestion_control"
_TCP_CC_ALLOWED = "/proc/sys/net/ipv4/tcp_allowed_congestion_control"


def congestion_control() -> str | None:
    """The TCP congestion control new connections get in this process's network namespace (Linux), or
    None where there is no such setting."""
    try:
        with open(TCP_CC_PROC) as f:
            return f.read().strip() or None
    except OSError:
        return None


def allowed_congestion_controls() -> list[str]:
    """The congestion controls a network namespace other than the machine's may choose
    (``tcp_allowed_congestion_control``; the kernel refuses the others there); [] where unknown."""
    try:
        with open(_TCP_CC_ALLOWED) as f:
            return f.read().split()
    except OSError:
        return []


def available_congestion_controls() -> list[str]:
    """The congestion controls this kernel has (``tcp_available_congestion_control``); [] where unknown."""
    try:
        with open(_TCP_CC_AVAILABLE) as f:
            return f.read().split()
    except OSError:
        return []
