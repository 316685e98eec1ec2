"""Run external commands (``ip``, ``tc``): log each one, never through a shell, fail with its stderr."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from netem.errors import CommandError

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 15.0
"""``ip``/``tc`` finish in milliseconds; 15 s means the kernel or a lock is stuck."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class Executor:
    """Runs argv lists and raises ``CommandError`` (with stderr) on a non-zero exit.

    ``history`` keeps every argv run through this executor, so a testbed can show what it did.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self.history: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        args = tuple(argv)
        if not args:
            raise ValueError("empty command")
        logger.info("run: %s", shlex.join(args))
        self.history.append(args)
        try:
            # In a session of its own, a command is out of reach of the terminal's Ctrl-C, which would
            # kill it part-way (a namespace made but not recorded, or not removed); the caller gets the
            # signal and tears down in order.
            proc = subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=self.timeout_s,
                check=False,
                start_new_session=True,
            )
        except FileNotFoundError as exc:
            raise CommandError(args, None, "", f"{args[0]} not found (install iproute2?)") from exc
        except subprocess.TimeoutExpired as exc:
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise CommandError(args, None, err, f"timed out after {self.timeout_s:g} s") from exc
        result = CommandResult(args, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise CommandError(args, proc.returncode, proc.stderr)
        if proc.returncode != 0:
            logger.debug(
                "ignored failure (%d) of %s: %s", proc.returncode, shlex.join(args), proc.stderr.strip()
            )
        return result
