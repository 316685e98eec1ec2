"""Small process helpers shared by the testbed's own child processes (delay lines, relays), and the
testbed's handling of processes around a signal: Ctrl-C held while a child is started and registered
(``signals_deferred``), what a cut-short start left killed by PID (``kill_and_reap``)."""

from __future__ import annotations

import collections
import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path
    from types import FrameType

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_TIMERSLACK = 29


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(option, value, 0, 0, 0)


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM when the process that started it dies (even by SIGKILL).

    Linux sends it when the *thread* that forked exits, so start owned children from a long-lived thread.
    """
    _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fine_timer_slack() -> None:
    """Ask for 1 ns timer slack (default 50 µs) so that timed wake-ups of the delay line are precise."""
    _prctl(_PR_SET_TIMERSLACK, 1)


#: Lines of a helper's log that an error shows: enough for the end of a Python traceback.
LOG_TAIL_LINES = 25


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' if it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return "".join(collections.deque(fh, maxlen=lines))
    except OSError:
        return ""


def wait_ready(proc: subprocess.Popen[str], what: str, timeout_s: float, log: Path | None = None) -> str:
    """Read the child's first stdout line, which must start with ``READY``; return the rest of it.

    ``log``: the file the child's stderr goes to, whose tail a failure then shows (without it, the
    child's stderr is the caller's)."""
    from netem.errors import NetemError  # here, not at the top: child programs import this module

    if proc.stdout is None:
        raise ValueError("start the child with stdout=PIPE")
    deadline = time.monotonic() + timeout_s
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            stop_process(proc)
            raise NetemError(f"{what} did not start within {timeout_s:g} s")
        r, _, _ = select.select([fd], [], [], left)
        if r:
            break
    line = proc.stdout.readline()
    if not line.startswith("READY"):
        stop_process(proc)
        if log is None:
            raise NetemError(f"{what} failed to start (exit status {proc.returncode}); see its stderr above")
        text = log_tail(log).rstrip() or "(empty)"
        raise NetemError(f"{what} failed to start (exit status {proc.returncode}); its log {log}:\n{text}")
    return line[len("READY") :].strip()


def stop_process(proc: subprocess.Popen[str] | subprocess.Popen[bytes], grace_s: float = 2.0) -> None:
    """SIGTERM by PID, then SIGKILL after ``grace_s``; reaps the child."""
    if proc.poll() is not None:
        return
    logger.debug("stopping pid %d", proc.pid)
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace_s)


def kill_pid(pid: int) -> bool:
    """SIGKILL one PID we own (found by our prefix); False if it was already gone."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True


def kill_and_reap(pids: Collection[int], timeout_s: float) -> list[int]:
    """SIGKILL ``pids`` (ours, found by the run's namespace or cgroup) and wait until they are gone,
    reaping those that are our children; returns the ones still there after ``timeout_s``.

    A child killed but not reaped stays a zombie, and a zombie still counts in its cgroup on recent
    kernels (``rmdir`` fails with EBUSY), so our own are collected here: a child whose start was cut
    short has no ``Popen`` that would ever wait for it.
    """
    left = set(pids)
    for pid in left:
        kill_pid(pid)
    deadline = time.monotonic() + timeout_s
    while True:
        for pid in list(left):
            if _gone(pid):
                left.discard(pid)
        if not left or time.monotonic() > deadline:
            return sorted(left)
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (reaped here if it is our child; a zombie of another parent counts)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child: look at its state
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                return fh.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except (OSError, IndexError):
            return True
    return done == pid


#: The signals that stop a run: Ctrl-C, and ``kill`` or a CI job's timeout.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Deferral:
    """The handler ``signals_deferred`` installs: notes a signal while holding, then passes it on."""

    def __init__(self) -> None:
        self.previous: dict[int, Callable[[int, FrameType | None], Any]] = {}
        self.caught: list[int] = []
        self.holding = True

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.holding:
            self.caught.append(signum)
        else:
            self.previous[signum](signum, frame)


@contextlib.contextmanager
def signals_deferred(signals: Collection[int] = INTERRUPT_SIGNALS) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while something is created and registered for teardown; then let them on.

    Python runs a signal's handler between two bytecodes of the main thread, wherever it is. A
    KeyboardInterrupt can so come out of ``subprocess.Popen`` after the fork (the child runs, and no
    ``Popen`` is returned that would stop it), out of an ``os.register_at_fork`` hook (logging's runs at
    every fork; Python prints "Exception ignored" and drops it, and the run goes on), or fall between
    creating a namespace and recording its removal. In this block the handlers only note a signal; the
    first one noted goes to its handler as the block ends -- once what the block created is registered,
    so the unwinding tears it down. Only handlers written in Python are held (a signal whose action is
    the default, or ignore, keeps it), and only in the main thread, the one Python runs handlers in.
    A held Ctrl-C waits for the block: keep it to a process start or a command.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    deferral = _Deferral()
    try:
        for sig in signals:
            handler = signal.getsignal(sig)
            if callable(handler):
                deferral.previous[sig] = handler
                signal.signal(sig, deferral)
        yield
    finally:
        # From here a signal goes straight on, even to a handler not yet put back below.
        deferral.holding = False
        try:
            for sig, handler in deferral.previous.items():
                signal.signal(sig, handler)
        finally:
            if deferral.caught:
                first = deferral.caught[0]
                deferral.previous[first](first, None)


#: Test hook: ``<point>:<SIGNAL>`` in the environment (``edge.preexec:SIGINT``) has the process that
#: reaches that point of a run's start-up send the signal to the harness, so that tests can interrupt
#: at moments no outside timing hits (tests/harness/test_signals.py). The points: ``netns`` and
#: ``cgroup`` (one created, its removal not yet recorded) and, per node, ``<node>.popen`` (before the
#: fork), ``<node>.fork`` (in the harness right after the fork, where the at-fork hooks run; only for a
#: node started with a ``preexec_fn``), ``<node>.preexec`` (in the child before it execs; the signal
#: goes to its parent) and ``<node>.spawned`` (the child runs, it is not registered yet).
SIGNAL_AT_ENV = "LOCALEXIT_SIGNAL_AT"


def _signal_at(point: str) -> signal.Signals | None:
    name, _, sig = os.environ.get(SIGNAL_AT_ENV, "").rpartition(":")
    return signal.Signals[sig] if name == point else None


def signal_point(point: str) -> None:
    """Test hook (``SIGNAL_AT_ENV``): send the named signal to this process at ``point``."""
    sig = _signal_at(point)
    if sig is not None:
        os.kill(os.getpid(), sig)


def child_signal_point(point: str) -> Callable[[], None] | None:
    """Test hook (``SIGNAL_AT_ENV``): a ``preexec_fn`` step that signals the parent at ``point``."""
    sig = _signal_at(point)
    return None if sig is None else functools.partial(_signal_parent, sig)


def _signal_parent(sig: signal.Signals) -> None:
    os.kill(os.getppid(), sig)


def arm_fork_signal(point: str) -> None:
    """Test hook (``SIGNAL_AT_ENV``): signal this process right after its next fork, in the parent."""
    sig = _signal_at(point)
    if sig is None:
        return
    armed = [sig]  # once: an at-fork hook cannot be removed

    def fire() -> None:
        if armed:
            os.kill(os.getpid(), armed.pop())

    os.register_at_fork(after_in_parent=fire)
