"""The errors of ``netem/``, rooted in the project's ``LocalExitError``."""

from __future__ import annotations

from collections.abc import Sequence

from contract.errors import LocalExitError


class NetemError(LocalExitError):
    """A testbed problem: shaping, namespaces, cgroups or cleanup."""


class SpecError(NetemError, ValueError):
    """A link spec or edge limit was written wrongly (``10mbps``, ``20`` without a unit, ...).

    It is also a ``ValueError`` so that dataclass validation follows the house style.
    """


class CapabilityError(NetemError):
    """The machine cannot apply what was asked (no root, no qdisc, no TUN): refuse rather than run unshaped."""


class CommandError(NetemError):
    """An external command (``ip``, ``tc``, ...) failed; carries its argv, exit status and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, reason: str = "") -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        shown = " ".join(self.argv)
        what = reason or f"exited with status {returncode}"
        detail = stderr.strip() or "(no stderr)"
        super().__init__(f"command failed: {shown}: {what}: {detail}")


class HelperExited(NetemError):
    """One of the testbed's own processes (a delay line or a relay) has exited, so the link it carries is
    down: a failure of the run, not of its setup. ``returncode`` reads as in ``subprocess`` (negative: the
    signal that killed it); ``log_tail`` holds the last lines of its stderr and ``log_path`` the file, when
    the testbed has a log directory."""

    def __init__(
        self, label: str, what: str, returncode: int, log_tail: str = "", log_path: str | None = None
    ) -> None:
        self.label = label
        self.what = what
        self.returncode = returncode
        self.log_tail = log_tail
        self.log_path = log_path
        where = f" (log: {log_path})" if log_path else ""
        super().__init__(f"{what} exited with status {returncode}; the link is down{where}")
