"""Small process helpers shared by the testbed's own child processes (delay lines, relays)."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import select
import signal
import subprocess
import time

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


def wait_ready(proc: subprocess.Popen[str], what: str, timeout_s: float) -> str:
    """Read the child's first stdout line, which must start with ``READY``; return the rest of it."""
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
        raise NetemError(f"{what} failed to start (exit status {proc.returncode}); see its stderr above")
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
