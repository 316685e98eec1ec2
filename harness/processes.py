"""Node processes as the harness sees them: started, awaited until ready, watched, sampled, and stopped.

Each node's stderr (and, for the test node, stdout) goes to a per-run log file, so a failure can show the
tail of the log. The cloud and edge print ``READY host:port`` on stdout when they accept connections; a
reader thread watches for that line and keeps draining stdout so the pipe never fills. While the test
node runs, ``wait_for_test`` watches every process of the run and, when one dies, blames the one that
died first (``ExitWatcher``), not the first one it happened to look at.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

import psutil

from netem._proc import LOG_TAIL_LINES, log_tail
from netem.errors import HelperExited

from .errors import ComponentFailure, NodeFailure, PortInUseError

logger = logging.getLogger(__name__)

READY_RE = re.compile(r"^READY\s+(\S+):(\d+)\s*$")
#: Lines kept from a log for error messages (the testbed's helpers show as many).
TAIL_LINES = LOG_TAIL_LINES
#: Polling period while waiting on processes; short, so a dead node is noticed at once.
POLL_S = 0.05
#: How long a node gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
_PORT_IN_USE = re.compile(r"address already in use|errno 98|eaddrinuse", re.IGNORECASE)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    return log_tail(path, lines)


class NodeProcess:
    """One running node: its ``Popen``, its log file, and its READY line once seen."""

    def __init__(self, name: str, popen: subprocess.Popen[Any], log_path: Path, log_file: IO[bytes]) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path
        self._log_file = log_file
        self._ready = threading.Event()
        self._address: tuple[str, int] | None = None
        self._stdout_lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self._reader: threading.Thread | None = None
        if popen.stdout is not None:
            self._reader = threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True)
            self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read_stdout(self) -> None:
        assert self.popen.stdout is not None  # only started when stdout is a pipe
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._stdout_lines.append(line)
            match = READY_RE.match(line.strip())
            if match and not self._ready.is_set():
                self._address = (match.group(1), int(match.group(2)))
                self._ready.set()

    def log_tail(self) -> str:
        text = tail(self.log_path)
        if self._stdout_lines:
            text += "".join(f"[stdout] {line}\n" for line in self._stdout_lines)
        return text

    def failure(self, message: str, *, then: str = "") -> NodeFailure | PortInUseError:
        """A ``NodeFailure`` (or ``PortInUseError`` when the log says so) with this node's log tail;
        ``then``: what the run's other processes did after this one failed."""
        text = self.log_tail()
        if _PORT_IN_USE.search(text):
            return PortInUseError(
                f"the {self.name} node could not listen: its port is already in use by another program. "
                "Stop that program, pass other ports with --ports CLOUD,EDGE, or leave --ports out so the "
                f"harness picks free ones. Log: {self.log_path}"
            )
        return NodeFailure(self.name, f"{message} (full log: {self.log_path})", text, then=then)

    def wait_ready(self, timeout_s: float) -> tuple[str, int]:
        """Block until the READY line; raise ``NodeFailure`` if the node exits first or times out."""
        deadline = time.monotonic() + timeout_s
        while not self._ready.wait(POLL_S):
            code = self.popen.poll()
            if code is not None:
                if self._reader is not None:
                    self._reader.join(timeout=1.0)  # the READY line may still be in the pipe
                if self._ready.is_set():
                    break
                raise self.failure(f"exited with code {code} before it was ready")
            if time.monotonic() > deadline:
                raise self.failure(f"did not print READY within {timeout_s:g} s")
        assert self._address is not None  # set together with the event
        logger.info("%s node ready at %s:%d (pid %d)", self.name, *self._address, self.pid)
        return self._address

    def stop(self) -> int | None:
        """Terminate (then kill) the node if it still runs; close its files. Returns its exit code."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                logger.warning("%s node (pid %d) ignored SIGTERM; killing it", self.name, self.pid)
                self.popen.kill()
                self.popen.wait(timeout=STOP_GRACE_S)
        if self._reader is not None:
            self._reader.join(timeout=1.0)
        if self.popen.stdout is not None:
            self.popen.stdout.close()
        self._log_file.close()
        return self.popen.returncode


def describe_exit(code: int | None) -> str:
    """How a process ended, from its ``subprocess`` return code: ``-9`` → killed by signal 9 (SIGKILL)."""
    if code is None:
        return "ended (its exit status was collected elsewhere)"
    if code < 0:
        try:
            return f"was killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


@dataclass(frozen=True)
class Ended:
    """A watched process seen to have ended: its key, its return code (as ``subprocess`` gives it:
    negative for a signal; None when another waiter collected it first) and when it was noticed
    (``time.monotonic_ns``)."""

    key: str
    code: int | None
    seen_ns: int


def _exit_code(pid: int) -> tuple[bool, int | None]:
    """(ended, return code) of our child ``pid``, without reaping it (``WNOWAIT``): its owner -- the
    ``Popen`` that started it, the testbed for a delay line -- still collects it as usual."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # collected already (or not ours): it has ended, its code is elsewhere
        return True, None
    if info is None:
        return False, None
    return True, info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def _gravity(code: int | None) -> int:
    """Of ends seen at the same moment, the likelier cause first: a signal, an error, a clean exit."""
    if code is None:
        return 1
    return 0 if code < 0 else 1 if code > 0 else 2


class ExitWatcher:
    """Notices the ends of several child processes in the order they happen.

    Each process gets a pidfd, which turns readable the moment the process exits, and ``wait`` sleeps in
    one ``poll`` over all of them: it wakes at the first exit, so an end is timed within the harness's
    wake-up latency rather than a polling period, and in one pass every process is looked at (no node is
    looked at first). A node that reacts to a dead peer -- notices the closed connection, reports it,
    shuts its interpreter down -- takes tens of milliseconds, and is seen after the peer. Ends seen at
    the same wake-up (a harness that was not scheduled for a while) are ordered by ``_gravity`` and then
    by ``rank`` (lower: what the others depend on). Without pidfds (Linux < 5.3), each process is looked
    at every ``POLL_S``, with the same ordering within a look.
    """

    def __init__(self) -> None:
        self._watched: dict[str, tuple[int, int, int | None]] = {}  # key -> pid, rank, pidfd
        self._poll = select.poll()

    def __enter__(self) -> ExitWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, key: str, pid: int, rank: int = 0) -> None:
        """Watch ``pid``, a child of this process, under ``key``."""
        fd: int | None
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):  # no pidfds here (or it is gone already): looked at every POLL_S
            fd = None
        else:
            self._poll.register(fd, select.POLLIN)
        self._watched[key] = (pid, rank, fd)

    def _forget(self, key: str) -> None:
        _pid, _rank, fd = self._watched.pop(key)
        if fd is not None:
            self._poll.unregister(fd)
            os.close(fd)

    def close(self) -> None:
        for key in list(self._watched):
            self._forget(key)

    def wait(self, timeout_s: float) -> list[Ended]:
        """Wait up to ``timeout_s`` for a watched process to end; return those that have, each once."""
        if not self._watched:
            time.sleep(timeout_s)
            return []
        blind = [key for key, (_pid, _rank, fd) in self._watched.items() if fd is None]
        timeout_ms = 1000 * (min(timeout_s, POLL_S) if blind else timeout_s)
        ready = {fd for fd, _events in self._poll.poll(timeout_ms)}
        seen_ns = time.monotonic_ns()
        ended: list[tuple[int, int, Ended]] = []
        for key, (pid, rank, fd) in self._watched.items():
            if fd in ready or fd is None:
                done, code = _exit_code(pid)
                if done:
                    ended.append((_gravity(code), rank, Ended(key, code, seen_ns)))
        ended.sort(key=lambda item: item[:2])
        for *_order, end in ended:
            self._forget(end.key)
        return [end for *_order, end in ended]


#: How long a failing run waits, once the first of its processes has ended, for the others' reactions,
#: so that the error can say what they did: the test node, which uses every other process, exits within
#: tens of milliseconds of losing one (the wait ends then); a link that went down may leave it waiting
#: on TCP retransmissions for much longer, and the error then says it was still running.
REACTION_S = 0.5
#: ``ExitWatcher`` ranks: what the others depend on first (the test node uses both others, the edge
#: the cloud; the testbed's delay lines and relays carry every link).
HELPER_RANK = 0
NODE_RANKS = {"cloud": 1, "edge": 2, "test": 3}


def _last_line(text: str, limit: int = 160) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def watch_run(watcher: ExitWatcher, nodes: Iterable[NodeProcess], helper_pids: Mapping[str, int]) -> None:
    """Have ``watcher`` watch a run's processes: the testbed's helpers (delay lines, relays: by label)
    and the nodes, each with the rank that decides which of two ends at once is the culprit."""
    for label, pid in helper_pids.items():
        watcher.add(label, pid, HELPER_RANK)
    for node in nodes:
        watcher.add(node.name, node.pid, NODE_RANKS.get(node.name, len(NODE_RANKS) + 1))


def collect_ends(
    watcher: ExitWatcher,
    nodes: Mapping[str, NodeProcess],
    timeout_s: float,
    link_check: Callable[[], None] | None,
    links: dict[str, HelperExited],
    ended: list[Ended],
) -> None:
    """Add to ``ended`` what ended within ``timeout_s``: the processes ``watcher`` saw end and a helper
    ``link_check`` finds dead (``links`` keeps its error by label)."""
    for end in watcher.wait(timeout_s):
        owner = nodes.get(end.key)
        # (a node collected elsewhere has its code in its Popen)
        ended.append(replace(end, code=owner.popen.poll()) if owner and end.code is None else end)
    if link_check is not None:
        try:
            link_check()
        except HelperExited as exc:
            links.setdefault(exc.label, exc)
            if all(end.key != exc.label for end in ended):  # (one the watcher was not given)
                ended.append(Ended(exc.label, exc.returncode, time.monotonic_ns()))


def wait_for_test(
    test: NodeProcess,
    others: list[NodeProcess],
    timeout_s: float,
    *,
    helper_pids: Mapping[str, int] | None = None,
    link_check: Callable[[], None] | None = None,
) -> None:
    """Return once the test node has exited 0; raise for the process of the run that ended first.

    ``helper_pids``: the testbed's own processes (delay lines, relays) by label; ``link_check`` raises
    ``netem.HelperExited`` when one of them has died. The culprit -- the first process to end, whether
    node or helper -- is raised as a ``NodeFailure`` (a ``ComponentFailure`` for a helper) with how it
    ended, its log tail, and what the others did after it: until the test node has ended too, for at
    most ``REACTION_S``.
    """
    deadline = time.monotonic() + timeout_s
    nodes = {node.name: node for node in (test, *others)}
    ended: list[Ended] = []
    links: dict[str, HelperExited] = {}
    with ExitWatcher() as watcher:
        watch_run(watcher, nodes.values(), helper_pids or {})
        while True:
            collect_ends(watcher, nodes, POLL_S, link_check, links, ended)
            if ended:
                first = ended[0]
                if first.key == test.name and first.code == 0:
                    return
                test_reacted = any(end.key == test.name for end in ended[1:])
                if test_reacted or time.monotonic_ns() - first.seen_ns >= REACTION_S * 1e9:
                    raise culprit(ended, nodes, links)
            elif time.monotonic() > deadline:
                raise test.failure(f"did not finish within {timeout_s:g} s (--run-timeout)")


def culprit(
    ended: list[Ended], nodes: Mapping[str, NodeProcess], links: Mapping[str, HelperExited]
) -> NodeFailure | PortInUseError:
    """The error for ``ended[0]``, the first process of the run to end, with the others' reactions."""
    first = ended[0]

    def who(key: str) -> tuple[str, str]:
        """What the process is, in words, and the end of its log."""
        if key in nodes:
            return f"the {key} node", tail(nodes[key].log_path, 5)
        if key in links:
            return links[key].what, links[key].log_tail
        return key, ""

    reactions = []
    for end in ended[1:]:
        name, log = who(end.key)
        after_ms = (end.seen_ns - first.seen_ns) / 1e6
        text = f"{name} {describe_exit(end.code)} {after_ms:.0f} ms later"
        if line := _last_line(log):
            text += f" ({line})"
        reactions.append(text)
    gone = {end.key for end in ended}
    reactions += [f"the {name} node was still running" for name in nodes if name not in gone]
    then = "; ".join(reactions)
    if first.key in nodes:
        return nodes[first.key].failure(f"{describe_exit(first.code)} during the run", then=then)
    exc = links.get(first.key)
    if exc is None:  # (a testbed that gave its helpers' PIDs but cannot say more)
        return ComponentFailure(
            first.key,
            f"the testbed's process {first.key}",
            f"{describe_exit(first.code)} during the run; the link it carries is down",
            then=then,
        )
    where = f" (full log: {exc.log_path})" if exc.log_path else ""
    return ComponentFailure(
        exc.label,
        exc.what,
        f"{describe_exit(exc.returncode)} during the run; the link it carries is down{where}",
        exc.log_tail,
        then=then,
    )


class ResourceSampler:
    """Samples, every ``interval_s`` in a thread: the edge's CPU % (100 = one core) and RSS (MiB), and the
    CPU that *other* programs on the host use (all CPUs' busy time minus this harness's process tree,
    which holds the nodes, relays and delay lines), so a check can tell a busy machine from slow code.

    Start it once the run's processes are up: the process trees are looked up again only every
    ``tree_refresh_s``. Looking them up reads every process's ``/proc`` entry (psutil finds children by
    their parent), and the sampler's thread shares the CPUs with the nodes it measures, so a lookup at
    every sample would hold up the computing node's OpenMP workers for milliseconds; reading the known
    processes' counters costs a tenth of that (docs/design-notes.md).

    ``others``: PIDs of the run's processes outside this process's tree (nodes in containers, children
    of the container runtime), counted with it, not as other programs.
    """

    def __init__(
        self, pid: int, interval_s: float = 0.1, tree_refresh_s: float = 1.0, others: Sequence[int] = ()
    ) -> None:
        self.pid = pid
        self.others = tuple(others)
        self.interval_s = interval_s
        self.tree_refresh_s = tree_refresh_s
        self.times_ns: list[int] = []  # CLOCK_MONOTONIC, shared with the nodes on this host
        self.cpu_percent: list[float] = []
        self.rss_mib: list[float] = []
        self.host_other_percent: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"sampler-{pid}", daemon=True)
        self._procs: dict[int, psutil.Process] = {}
        self._ncpu = psutil.cpu_count() or 1

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def _tree(self, pid: int) -> list[psutil.Process]:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
        out = []
        for proc in procs:
            known = self._procs.get(proc.pid)
            if known is None or known.create_time() != proc.create_time():
                self._procs[proc.pid] = known = proc
                proc.cpu_percent(None)  # the first call only primes the counter
            out.append(known)
        return out

    @staticmethod
    def _read(procs: list[psutil.Process]) -> dict[int, tuple[float, int]]:
        """CPU % since the last call and RSS of each process, reading each counter exactly once.

        ``cpu_percent(None)`` measures since its previous call on the same object, so a process in two
        trees (the edge is also in the harness's own tree) must be read once and summed twice.
        """
        out: dict[int, tuple[float, int]] = {}
        for proc in procs:
            if proc.pid in out:
                continue
            try:
                out[proc.pid] = (proc.cpu_percent(None), proc.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
        return out

    def _own(self) -> list[psutil.Process]:
        """This process's tree and those of ``others`` that still run."""
        procs = self._tree(os.getpid())
        for pid in self.others:
            with contextlib.suppress(psutil.Error):
                procs += self._tree(pid)
        return procs

    def _run(self) -> None:
        try:
            edge = self._tree(self.pid)
            own = self._own()
            psutil.cpu_percent(None)
        except psutil.Error:
            return
        refreshed = time.monotonic()
        while not self._stop.wait(self.interval_s):
            if time.monotonic() - refreshed >= self.tree_refresh_s:
                try:
                    edge = self._tree(self.pid)
                    own = self._own()
                except psutil.Error:
                    return  # the edge is gone; the runner reports that
                refreshed = time.monotonic()
            readings = self._read([*edge, *own])
            if self.pid not in readings:
                return
            edge_cpu = sum(readings[p.pid][0] for p in edge if p.pid in readings)
            edge_rss = sum(readings[p.pid][1] for p in edge if p.pid in readings)
            own_cpu = sum(readings[p.pid][0] for p in {q.pid: q for q in own}.values() if p.pid in readings)
            host_busy = psutil.cpu_percent(None) * self._ncpu
            self.times_ns.append(time.monotonic_ns())
            self.cpu_percent.append(edge_cpu)
            self.rss_mib.append(edge_rss / 2**20)
            self.host_other_percent.append(max(0.0, host_busy - own_cpu))

    def window(self, start_ns: int, end_ns: int) -> tuple[list[int], bool]:
        """Indices of the samples taken within [start_ns, end_ns] (the measured phase, warm-up excluded).

        Falls back to every sample (second value False) when the phase was too short to hold one.
        """
        idx = [i for i, t in enumerate(self.times_ns) if start_ns <= t <= end_ns]
        if not idx:
            return list(range(len(self.times_ns))), False
        return idx, True
