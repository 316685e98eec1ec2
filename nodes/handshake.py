"""The hello/ready handshake: protocol version, shared token and the model/exit/threshold in force.

A client sends :class:`Hello` with the configuration it expects; the server answers :class:`Ready` with
the configuration it runs, or :class:`Error` and closes. Until then the connection accepts only small
frames (:data:`nodes.codec.HANDSHAKE_MAX_FRAME_SIZE`). Once connected, a test node may ask for another
configuration (:func:`configure`), which the server answers the same way, without closing on a refusal.

The token is compared in constant time. It travels in clear text: it keeps a stranger's connection out
of a run spread over real machines, it is not protection against someone who can read the traffic.
"""

from __future__ import annotations

import hmac
import math

from nodes.errors import ConfigureError, HandshakeError, PeerError, RemoteProtocolError
from nodes.messages import PROTOCOL_VERSION, Configure, Error, Hello, Ready
from nodes.transport import FramedStream


def describe(model: str | None, exit: int | None, threshold: float | None) -> str:
    parts = [model] if model else []
    if exit is not None:
        parts.append(f"exit {exit}")
    if threshold is not None:
        parts.append(f"T={threshold:g}")
    return " ".join(parts) or "any configuration"


def _same_threshold(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=0.0, abs_tol=1e-9)


def check_hello(
    hello: Hello,
    *,
    node: str,
    accept_roles: tuple[str, ...],
    model: str,
    exit: int,
    threshold: float | None,
    token: str | None,
) -> Error | None:
    """What the server ``node`` must refuse in ``hello``, as the :class:`Error` to send; ``None`` if
    the client may go on."""
    if hello.version != PROTOCOL_VERSION:
        return Error(
            "version",
            f"protocol version {hello.version} is not supported by the {node} node "
            f"(it speaks version {PROTOCOL_VERSION}); run matching localexit versions",
            node,
        )
    if token is not None and (
        hello.token is None or not hmac.compare_digest(hello.token.encode(), token.encode())
    ):
        return Error(
            "unauthorized",
            f"the {node} node requires a shared token and the one given is missing "
            "or wrong (pass the same --token to every node)",
            node,
        )
    if hello.role not in accept_roles:
        return Error(
            "role",
            f"the {node} node does not accept connections from {hello.role} nodes, "
            f"only from {' and '.join(accept_roles)} nodes",
            node,
        )
    mismatch = (
        (hello.model is not None and hello.model != model)
        or (hello.exit is not None and hello.exit != exit)
        or (
            hello.threshold is not None
            and threshold is not None
            and not _same_threshold(float(hello.threshold), threshold)
        )
    )
    if mismatch:
        return Error(
            "config-mismatch",
            f"the {node} node runs {describe(model, exit, threshold)}, but the "
            f"{hello.role} node expects {describe(hello.model, hello.exit, hello.threshold)}",
            node,
        )
    return None


async def accept_hello(
    stream: FramedStream,
    *,
    node: str,
    accept_roles: tuple[str, ...],
    model: str,
    exit: int,
    threshold: float | None,
    token: str | None,
) -> Hello | None:
    """Server side: read the hello and check it. On refusal, send the error and return ``None``."""
    msg = await stream.recv(what="for hello")
    if not isinstance(msg, Hello):
        raise RemoteProtocolError(f"expected hello as the first message, got {type(msg).__name__.lower()}")
    err = check_hello(
        msg, node=node, accept_roles=accept_roles, model=model, exit=exit, threshold=threshold, token=token
    )
    if err is not None:
        await stream.send_error(err)
        return None
    return msg


async def send_ready(stream: FramedStream, ready: Ready) -> None:
    """Server side: accept the client; from now on it may send full-size frames."""
    stream.conn.handshake_done()
    await stream.send(ready)


async def client_handshake(stream: FramedStream, hello: Hello) -> Ready:
    """Client side: send ``hello`` and return the server's :class:`Ready`; :class:`HandshakeError` when
    the server refuses us."""
    await stream.send(hello)
    try:
        msg = await stream.recv(what="for ready")
    except PeerError as exc:
        raise PeerError(
            stream.node,
            f"the {stream.node} node at {stream.peer} closed the connection during the handshake ({exc})",
        ) from exc
    if isinstance(msg, Error):
        raise HandshakeError(f"the {stream.node} node at {stream.peer} refused the connection: {msg.message}")
    if not isinstance(msg, Ready):
        raise RemoteProtocolError(f"the {stream.node} node answered hello with {type(msg).__name__.lower()}")
    if msg.version != PROTOCOL_VERSION:
        raise HandshakeError(
            f"the {stream.node} node speaks protocol version {msg.version}, we speak {PROTOCOL_VERSION}"
        )
    stream.conn.handshake_done()
    return msg


async def configure(stream: FramedStream, request: Configure) -> Ready:
    """Client side, after the handshake and with nothing in flight: ask the server for the
    configuration ``request`` and return its :class:`Ready` (the configuration now in force);
    :class:`ConfigureError` when it refuses (it keeps its configuration, and the connection stays
    usable)."""
    await stream.send(request)
    msg = await stream.recv(what="for its answer to configure")
    if isinstance(msg, Error):
        if msg.fatal:
            raise PeerError(stream.node, f"the {stream.node} node failed: {msg.message} [{msg.code}]")
        raise ConfigureError(stream.node, msg.message)
    if not isinstance(msg, Ready):
        raise RemoteProtocolError(
            f"the {stream.node} node answered configure with {type(msg).__name__.lower()}"
        )
    threshold = request.threshold if stream.node == "edge" else None
    if (
        msg.exit != request.exit
        or (request.model is not None and msg.model != request.model)
        or (request.sha256 is not None and msg.sha256 != request.sha256)
        or (
            threshold is not None and (msg.threshold is None or not _same_threshold(msg.threshold, threshold))
        )
    ):
        raise RemoteProtocolError(
            f"the {stream.node} node answered configure with {describe(msg.model, msg.exit, msg.threshold)}, "
            f"not the {describe(request.model, request.exit, threshold)} asked for"
        )
    return msg
