"""Errors of ``harness/``.

``HarnessError`` and its subclasses are things the user can fix (exit code 2), except ``NodeFailure``
and its subclass ``ComponentFailure``: a node, or a process of the testbed such as a delay line, that
failed during a run is a runtime failure (exit code 1; a sweep records the point as failed and goes on)
and carries the tail of its log.
"""

from __future__ import annotations

from contract.errors import LocalExitError


class HarnessError(LocalExitError):
    """Root of the harness's own errors."""


class ConfigError(HarnessError):
    """An option or a combination of options is invalid (bad units, exit out of range, ...)."""


class UnshapedError(HarnessError):
    """A requested link or edge parameter cannot be applied on this machine (for example: not root)."""


class PortInUseError(HarnessError):
    """A port the run needs is already taken by another program."""


class ResultsError(HarnessError):
    """A results file (or baseline) is missing, unreadable, or does not follow the results schema (``contract.results``)."""


class NodeFailure(HarnessError):
    """A node process exited early, never became ready, or failed; ``log_tail`` holds its last log lines
    and ``then`` what the run's other processes did after it (empty when nothing is known)."""

    def __init__(self, node: str, message: str, log_tail: str = "", *, then: str = "") -> None:
        self.node = node
        self.log_tail = log_tail
        self.then = then
        super().__init__(_failure_text(self.subject, self.whose_log, message, log_tail, then))

    @property
    def subject(self) -> str:
        """What failed, as the message names it."""
        return f"{self.node} node"

    @property
    def whose_log(self) -> str:
        return f"the {self.node} node's"


class ComponentFailure(NodeFailure):
    """A process of the testbed that the run needs -- a delay line or relay carrying a link -- died during
    the run. A runtime failure like a dead node (the same exit code and handling), so it subclasses
    ``NodeFailure``; ``node`` holds the component's label, ``component`` what it is in words."""

    def __init__(
        self, label: str, component: str, message: str, log_tail: str = "", *, then: str = ""
    ) -> None:
        self.component = component
        super().__init__(label, message, log_tail, then=then)

    @property
    def subject(self) -> str:
        return self.component

    @property
    def whose_log(self) -> str:
        return "its"


def _failure_text(subject: str, whose: str, message: str, log_tail: str, then: str) -> str:
    """The culprit and what happened to it first, then the others' reactions, then its log's tail."""
    text = f"{subject}: {message}"
    if then:
        text += f"\nthen: {then}"
    if log_tail:
        text += f"\n--- last lines of {whose} log ---\n{log_tail.rstrip()}"
    return text
