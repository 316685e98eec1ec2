"""Node processes as the harness sees them: started, awaited until ready, sampled, and stopped.

Each node's stderr (and, for the test node, stdout) goes to a per-run log file, so a failure can show the
tail of the log. The cloud and edge print ``READY host:port`` on stdout when they accept connections; a
reader thread watches for that line and keeps draining stdout so the pipe never fills.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, Any

import psutil

from .errors import NodeFailure, PortInUseError

logger = logging.getLogger(__name__)

READY_RE = re.compile(r"^READY\s+(\S+):(\d+)\s*$")
#: Lines kept from a log for error messages: enough to show a Python traceback's end.
TAIL_LINES = 25
#: Polling period while waiting on processes; short, so a dead node is noticed at once.
POLL_S = 0.05
#: How long a node gets to exit after SIGTERM before SIGKILL.
STOP_GRACE_S = 5.0
_PORT_IN_USE = re.compile(r"address already in use|errno 98|eaddrinuse", re.IGNORECASE)


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines))
    except OSError:
        return ""


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

    def failure(self, message: str) -> NodeFailure | PortInUseError:
        """A ``NodeFailure`` (or ``PortInUseError`` when the log says so) with this node's log tail."""
        text = self.log_tail()
        if _PORT_IN_USE.search(text):
            return PortInUseError(
                f"the {self.name} node could not listen: its port is already in use by another program. "
                "Stop that program, pass other ports with --ports CLOUD,EDGE, or leave --ports out so the "
                f"harness picks free ones. Log: {self.log_path}"
            )
        return NodeFailure(self.name, f"{message} (full log: {self.log_path})", text)

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


class ResourceSampler:
    """Samples, every ``interval_s`` in a thread: the edge's CPU % (100 = one core) and RSS (MiB), and the
    CPU that *other* programs on the host use (all CPUs' busy time minus this harness's process tree,
    which holds the nodes, relays and delay lines), so a check can tell a busy machine from slow code.

    Start it once the run's processes are up: the process trees are looked up again only every
    ``tree_refresh_s``. Looking them up reads every process's ``/proc`` entry (psutil finds children by
    their parent), about 1 ms per tree on a quiet VM (2 ms per sample with both), and the sampler's
    thread shares the CPUs with the nodes it measures: at every sample it held up the computing node's
    OpenMP worker for milliseconds (``perf sched``: 1.7-2.4 ms runs of the sampler's thread on that CPU,
    2026-11-27). Reading the known processes' counters costs a tenth of that.
    """

    def __init__(self, pid: int, interval_s: float = 0.1, tree_refresh_s: float = 1.0) -> None:
        self.pid = pid
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

    def _run(self) -> None:
        try:
            edge = self._tree(self.pid)
            own = self._tree(os.getpid())
            psutil.cpu_percent(None)
        except psutil.Error:
            return
        refreshed = time.monotonic()
        while not self._stop.wait(self.interval_s):
            if time.monotonic() - refreshed >= self.tree_refresh_s:
                try:
                    edge = self._tree(self.pid)
                    own = self._tree(os.getpid())
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
