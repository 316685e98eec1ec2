"""Names of everything a testbed creates, and removal of what killed runs left behind.

Every object is named ``<prefix>-<suffix>`` with a suffix from a fixed list, so cleaning matches our
own naming scheme exactly (``lx3f9a1c-edge``), never a broad pattern that could hit other software
(an LXC bridge called ``lxcbr0`` does not match).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from netem import _proc
from netem.errors import CommandError, NetemError
from netem.executor import Executor

logger = logging.getLogger(__name__)

ROLES = ("test", "edge", "cloud")
DEV_SUFFIXES = ("te-t", "te-e", "ec-e", "ec-c")
"""Link ends: test–edge on the test side / edge side, edge–cloud on the edge side / cloud side."""
OWNED_SUFFIXES = (*ROLES, "probe", *DEV_SUFFIXES)
CHILD_SUFFIXES = ("te", "ec", "rl")
"""Labels of our own child processes: delay lines of each link, relays."""
CHILD_MODULES = ("netem.run_delayline", "netem.run_relay")
CGROUP_ROOT = Path("/sys/fs/cgroup")
FAMILY = "lx"
CONTAINER_LABEL = "org.localexit.prefix"
"""Label of every container and network of the Docker testbed (``netem.docker``): its run's prefix."""
NETWORK_SUFFIXES = ("te", "ec")
"""The Docker testbed's networks, one per link: test–edge, edge–cloud."""
OWNER_DIR = Path("/run/localexit")
"""One file per live testbed, ``<prefix>.owner``, holding the PID of the process that owns it, so that
``clean`` can tell a killed run's leftovers from a run still in progress."""


def register_owner(prefix: str, owner_dir: Path = OWNER_DIR) -> Path:
    """Record that this process owns the testbed ``prefix`` (call before creating anything)."""
    owner_dir.mkdir(parents=True, exist_ok=True)
    path = owner_dir / f"{prefix}.owner"
    path.write_text(f"{os.getpid()}\n")
    return path


def unregister_owner(prefix: str, owner_dir: Path = OWNER_DIR) -> None:
    (owner_dir / f"{prefix}.owner").unlink(missing_ok=True)


def live_prefixes(owner_dir: Path = OWNER_DIR) -> set[str]:
    """Prefixes of testbeds whose owning process is still alive (stale owner files are removed)."""
    live: set[str] = set()
    if not owner_dir.is_dir():
        return live
    for path in owner_dir.glob("lx*.owner"):
        try:
            pid = int(path.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            path.unlink(missing_ok=True)
            continue
        live.add(path.name.removesuffix(".owner"))
    return live


LOG_DIR_PREFIX = "localexit-"
LOG_OWNER_FILE = ".owner"
"""Each run's folder of node logs is ``<tmp>/localexit-XXXXXXXX`` holding ``.owner``: the PID of the
process that runs it, as in the owner files above, so that ``clean`` removes the folders of killed runs
and leaves those of runs in progress."""


def make_log_dir(parent: Path | None = None) -> Path:
    """A new folder for one invocation's node logs, marked with this process as its owner."""
    path = Path(tempfile.mkdtemp(prefix=LOG_DIR_PREFIX, dir=parent))
    (path / LOG_OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (someone else's process: alive all the same)
        return True
    return True


@dataclass(frozen=True)
class LogDirCleanup:
    """What :func:`clean_log_dirs` did: folders removed, kept (nothing says whose), and not removable."""

    removed: tuple[Path, ...] = ()
    unowned: tuple[Path, ...] = ()
    failed: tuple[str, ...] = ()


def clean_log_dirs(parent: Path | None = None, *, force: bool = False) -> LogDirCleanup:
    """Remove the node-log folders of runs whose owning process is gone (``force``: of every run).

    ``parent`` is where they are (default: the temporary directory). A folder without ``.owner`` (made
    by an older version, or not ours) is kept and reported, for the caller to name to the user. Without
    root, other users' folders are left alone: a shared temporary directory would refuse anyway.
    """
    folder = Path(tempfile.gettempdir()) if parent is None else parent
    uid = os.geteuid()
    removed: list[Path] = []
    unowned: list[Path] = []
    failed: list[str] = []
    for path in sorted(folder.glob(f"{LOG_DIR_PREFIX}*")):
        if not path.is_dir() or path.is_symlink() or (uid != 0 and path.stat().st_uid != uid):
            continue
        try:
            pid = int((path / LOG_OWNER_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            unowned.append(path)
            continue
        if not force and _pid_alive(pid):
            logger.info("leaving %s alone: the run that owns it (pid %d) is still in progress", path, pid)
            continue
        try:
            shutil.rmtree(path)
        except OSError as exc:
            failed.append(f"log folder {path}: {exc.strerror or exc}")
            continue
        removed.append(path)
    return LogDirCleanup(tuple(removed), tuple(unowned), tuple(failed))


def _run_prefix(name: str) -> str:
    """``lx3f9a1c`` of ``lx3f9a1c-te-t`` (every name is ``<run prefix>-<suffix>``)."""
    return name.split("-", 1)[0]


def ns_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def dev_name(prefix: str, link: str, end: str) -> str:
    """``link`` is ``te`` or ``ec``; ``end`` is the first letter of the node that holds the device."""
    return f"{prefix}-{link}-{end}"


def cgroup_name(prefix: str) -> str:
    return f"{prefix}-edge"


def container_name(prefix: str, role: str, seq: int | None = None) -> str:
    """``<prefix>-edge``: the container that holds the edge's network namespace; ``<prefix>-edge-3``:
    the third node process started in it, in a container of its own."""
    return f"{prefix}-{role}" if seq is None else f"{prefix}-{role}-{seq}"


def docker_network_name(prefix: str, link: str) -> str:
    """``link`` is ``te`` or ``ec``."""
    return f"{prefix}-{link}"


def _check_prefix(prefix: str) -> None:
    if not re.fullmatch(r"lx[0-9a-z]{0,8}", prefix):
        raise NetemError(
            f"clean prefix {prefix!r} must be 'lx' or a run prefix such as 'lx3f9a1c'; "
            "other names are not this project's"
        )


def owned_pattern(prefix: str, suffixes: tuple[str, ...] = OWNED_SUFFIXES) -> re.Pattern[str]:
    alts = "|".join(re.escape(s) for s in suffixes)
    return re.compile(rf"^{re.escape(prefix)}[0-9a-z]*-(?:{alts})$")


def _netns_list(ex: Executor) -> list[str]:
    r = ex.run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _root_links(ex: Executor) -> list[str]:
    r = ex.run(["ip", "-o", "link", "show"], check=False)
    names = []
    for line in r.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@")[0])
    return names


def _docker_objects(ex: Executor, prefix: str) -> tuple[list[str], list[str]]:
    """The Docker testbed's containers and networks under ``prefix``: named by our scheme and labelled
    with the prefix of the run in their name. Nothing when there is no Docker to ask (not installed,
    or its daemon is not running: then it runs no container either)."""
    if shutil.which("docker") is None:
        return [], []
    roles = "|".join(ROLES)
    containers = re.compile(rf"^{re.escape(prefix)}[0-9a-z]*-(?:{roles})(?:-[0-9]+)?$")
    networks = owned_pattern(prefix, NETWORK_SUFFIXES)
    label = f'{{{{.Label "{CONTAINER_LABEL}"}}}}'
    found: list[list[str]] = []
    for argv, pattern in (
        (["docker", "ps", "--all", "--format", f"{{{{.Names}}}}\t{label}"], containers),
        (["docker", "network", "ls", "--format", f"{{{{.Name}}}}\t{label}"], networks),
    ):
        try:
            r = ex.run([*argv, "--filter", f"label={CONTAINER_LABEL}"], check=False)
        except CommandError as exc:  # (a daemon that does not answer in time)
            logger.info("docker did not answer: %s", exc)
            return [], []
        if r.returncode != 0:
            logger.info("docker is not reachable (%s): no containers to clean", r.stderr.strip())
            return [], []
        names = []
        for line in r.stdout.splitlines():
            name, _, owner = line.partition("\t")
            if pattern.match(name) and owner == _run_prefix(name):
                names.append(name)
        found.append(names)
    return found[0], found[1]


def _cgroup_dirs(prefix: str, root: Path) -> list[Path]:
    pat = owned_pattern(prefix, ("edge",))
    found = []
    for parent in (root, root / "cpu", root / "cpuset", root / "memory", root / "cpu,cpuacct"):
        if parent.is_dir() and not parent.is_symlink():
            found += [d for d in parent.iterdir() if d.is_dir() and pat.match(d.name)]
    return sorted(set(found))


def _child_pids(prefix: str, skip: set[str] | frozenset[str] = frozenset()) -> list[int]:
    """Our delay lines and relays: argv ``python -m netem.run_delayline --label <prefix>-ec ...``."""
    pat = owned_pattern(prefix, CHILD_SUFFIXES)
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        args = [a.decode(errors="replace") for a in argv]
        if "-m" not in args or "--label" not in args:
            continue
        module = args[args.index("-m") + 1] if args.index("-m") + 1 < len(args) else ""
        label = args[args.index("--label") + 1] if args.index("--label") + 1 < len(args) else ""
        if (
            module in CHILD_MODULES
            and pat.match(label)
            and _run_prefix(label) not in skip
            and int(entry.name) != os.getpid()
        ):
            pids.append(int(entry.name))
    return pids


def find_leftovers(prefix: str = FAMILY, *, cgroup_root: Path = CGROUP_ROOT) -> list[str]:
    """What a run with this prefix (or the whole ``lx`` family) left: ``"netns lx1a2b3c-edge"``, ..."""
    _check_prefix(prefix)
    ex = Executor()
    pat = owned_pattern(prefix)
    out = [f"netns {n}" for n in _netns_list(ex) if pat.match(n)]
    out += [f"link {n}" for n in _root_links(ex) if pat.match(n)]
    out += [f"cgroup {d}" for d in _cgroup_dirs(prefix, cgroup_root)]
    out += [f"process {p}" for p in _child_pids(prefix)]
    containers, networks = _docker_objects(ex, prefix)
    out += [f"container {c}" for c in containers] + [f"network {n}" for n in networks]
    return out


def clean(
    prefix_glob: str = FAMILY,
    *,
    cgroup_root: Path = CGROUP_ROOT,
    force: bool = False,
    owner_dir: Path = OWNER_DIR,
) -> list[str]:
    """Remove leftovers of killed runs whose names follow our scheme under ``prefix_glob``.

    ``prefix_glob`` is a name prefix, not a shell glob: ``"lx"`` cleans every run of this project,
    ``"lx3f9a1c"`` only that run. Runs whose owning process is still alive are left alone unless
    ``force`` is set. Processes still inside our namespaces or cgroups were started by the dead run and
    are killed by PID. Returns what was removed; raises ``NetemError`` listing what could not be.
    """
    prefix = prefix_glob.rstrip("*")
    _check_prefix(prefix)
    if os.geteuid() != 0:
        raise NetemError("clean needs root (namespaces and cgroups belong to root); run it with sudo")
    ex = Executor()
    removed: list[str] = []
    failed: list[str] = []
    live = set() if force else live_prefixes(owner_dir)
    for run in sorted(live):
        if run.startswith(prefix):
            logger.info("leaving %s alone: the run that owns it is still in progress", run)
    for pid in _child_pids(prefix, skip=live):
        if _proc.kill_pid(pid):
            removed.append(f"process {pid}")
    # containers before the networks they are on, and before the namespaces: a container's processes
    # are its own to stop
    containers, networks = _docker_objects(ex, prefix)
    for what, names, argv in (
        ("container", containers, ["docker", "rm", "--force", "--volumes"]),
        ("network", networks, ["docker", "network", "rm"]),
    ):
        for name in names:
            if _run_prefix(name) in live:
                continue
            try:
                ex.run([*argv, name])
                removed.append(f"{what} {name}")
            except CommandError as exc:
                failed.append(str(exc))
    pat = owned_pattern(prefix)
    for ns in _netns_list(ex):
        if not pat.match(ns) or _run_prefix(ns) in live:
            continue
        pids = ex.run(["ip", "netns", "pids", ns], check=False).stdout.split()
        for p in pids:
            if _proc.kill_pid(int(p)):
                removed.append(f"process {p} (in {ns})")
        try:
            ex.run(["ip", "netns", "del", ns])
            removed.append(f"netns {ns}")
        except CommandError as exc:
            failed.append(str(exc))
    for link in _root_links(ex):
        if pat.match(link) and _run_prefix(link) not in live:
            try:
                ex.run(["ip", "link", "del", link])
                removed.append(f"link {link}")
            except CommandError as exc:
                failed.append(str(exc))
    dirs = [d for d in _cgroup_dirs(prefix, cgroup_root) if _run_prefix(d.name) not in live]
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        for _ in range(100):
            pids = (d / "cgroup.procs").read_text().split() if (d / "cgroup.procs").exists() else []
            if not pids:
                break
            for p in pids:
                _proc.kill_pid(int(p))
            time.sleep(0.02)
        try:
            d.rmdir()
            removed.append(f"cgroup {d}")
        except OSError as exc:
            failed.append(f"cgroup {d}: {exc.strerror}")
    for item in removed:
        logger.info("removed %s", item)
    if failed:
        raise NetemError("clean could not remove: " + "; ".join(failed))
    return removed
