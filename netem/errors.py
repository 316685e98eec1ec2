"""The errors of ``netem/``, rooted in the project's ``LocalExitError``."""

from __future__ import annotations

from collections.abc import Sequence

from models.errors import LocalExitError


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
