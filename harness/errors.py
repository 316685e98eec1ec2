"""Errors of ``harness/``.

``HarnessError`` and its subclasses are things the user can fix (exit code 2), except ``NodeFailure``:
a node that died during a run is a runtime failure (exit code 1) and carries the tail of its log.
"""

from __future__ import annotations

from models.errors import LocalExitError


class HarnessError(LocalExitError):
    """Root of the harness's own errors."""


class ConfigError(HarnessError):
    """An option or a combination of options is invalid (bad units, exit out of range, ...)."""


class UnshapedError(HarnessError):
    """A requested link or edge parameter cannot be applied on this machine (for example: not root)."""


class PortInUseError(HarnessError):
    """A port the run needs is already taken by another program."""


class ResultsError(HarnessError):
    """A results file (or baseline) is missing, unreadable, or does not follow the ``localexit/1`` schema."""


class NodeFailure(HarnessError):
    """A node process exited early, never became ready, or failed; ``log_tail`` holds its last log lines."""

    def __init__(self, node: str, message: str, log_tail: str = "") -> None:
        self.node = node
        self.log_tail = log_tail
        text = f"{node} node: {message}"
        if log_tail:
            text += f"\n--- last lines of the {node} node's log ---\n{log_tail.rstrip()}"
        super().__init__(text)
