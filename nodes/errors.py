"""The errors of ``nodes/``.

Like h11, protocol errors say *who* broke the protocol: :class:`RemoteProtocolError` when the peer sent
something we cannot accept (garbage, an oversized frame, an unknown message), :class:`LocalProtocolError`
when we were asked to send something the protocol cannot carry. Every class carries the process exit
code an entry point should use when the error ends the program: 2 for bad usage or input the user can
fix, 1 for a failure at run time (a peer died, a timeout).
"""

from __future__ import annotations

from contract.errors import LocalExitError


class NodeError(LocalExitError):
    """Base class of every error raised by ``nodes/``."""

    exit_code: int = 1


class UsageError(NodeError):
    """Bad command-line arguments or input files; the message says what to change."""

    exit_code = 2


class ProtocolError(NodeError):
    """The frame codec or message layer cannot go on with this connection."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol cannot carry (our bug or our caller's)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message we cannot accept; only that connection is closed."""


class HandshakeError(NodeError):
    """The peer refused us (or we refused it): protocol version, model/exit/threshold or token mismatch."""

    exit_code = 2


class ConfigureError(NodeError):
    """A node refused a :class:`~nodes.messages.Configure`: a checkpoint it cannot load, a model or
    digest other than expected, a missing threshold, or another test node still connected. The node
    keeps the configuration it had; ``node`` names it."""

    exit_code = 2

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class PeerError(NodeError):
    """A peer node closed the connection, reported an error or could not be reached.

    ``node`` names the peer ("edge", "cloud", "test") so that a failed run says which node failed.
    """

    def __init__(self, node: str, message: str) -> None:
        super().__init__(message)
        self.node = node


class NodeTimeout(PeerError):
    """A network operation did not complete within its timeout."""
