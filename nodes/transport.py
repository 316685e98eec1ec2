"""asyncio transport for :class:`nodes.protocol.Connection`: one buffered protocol, timeouts everywhere.

The socket writes straight into the decoder's buffer (``asyncio.BufferedProtocol``), so a large frame is
received with a single copy, as with ``socket.recv_into``; the reader task is woken once per complete
frame, not once per read. Sending writes a small frame as one ``bytes`` and a large one as the codec's
buffers (scatter/gather where the transport supports it, so tensor bytes are never copied), followed by
a drain with a timeout. Every await that waits on the network has a timeout -- for reads one re-armed
deadline timer per connection rather than a timer per receive -- and low-level failures are mapped to
:class:`~nodes.errors.PeerError` naming the peer node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter
from typing import TypeVar, cast

from nodes.codec import MAX_FRAME_SIZE
from nodes.errors import NodeTimeout, PeerError, ProtocolError, RemoteProtocolError, UsageError
from nodes.messages import Error, Message
from nodes.protocol import CLOSED, NEED_DATA, Connection

log = logging.getLogger(__name__)

T = TypeVar("T")

# Stop reading from the socket while this many decoded-but-unconsumed frames wait, so a fast sender
# cannot make us buffer without bound (TCP flow control then slows it down).
_MAX_QUEUED_FRAMES = 8

DEFAULT_TIMEOUT_S = 30.0

_WRITE_HIGH_WATER = 4 * 1024 * 1024

# Event loops round timers to their clock's resolution (uvloop: 1 ms) and may run one slightly early; a
# read deadline within this much of now counts as reached, so that the timer is not re-armed in a spin.
_TIMER_SLACK_S = 0.002

# Frames up to this size are joined into one bytes object and written with one call (one syscall, one
# TCP segment): copying a few KiB costs less than a write per buffer. Larger ones go out uncopied.
_JOIN_MAX = 64 * 1024

# Small frames sent back to back are corked: a frame written less than _CORK_WINDOW_S after the previous
# one on the same connection, with no frame received in between, is collected with the ones after it
# and they are written together at the end of the event loop's turn, before the connection's next
# receive, or as soon as _CORK_MAX bytes are collected. One write syscall per message would otherwise
# cap small-message throughput (pyzmq batches the same way in its I/O thread). A frame sent on its own
# -- a request, a reply, a batch's predictions after its compute -- goes out at once, so corking adds no
# latency to what the nodes time.
_CORK_WINDOW_S = 50e-6
_CORK_MAX = 64 * 1024

# A connection whose reader has waited this long with no byte arriving gives back the receive buffers
# kept for speed (the grown scratch buffer, recycled large bodies: up to 32 MiB on a node receiving
# features). Longer than the gaps between a run's batches, so a busy connection keeps them; a node idle
# between runs, or holding many quiet connections, does not. (Where batches are further apart -- a link
# shaped to seconds of delay -- re-growing costs a few ms of page faults per batch, next to seconds.)
# Checked by the read timer, which fires at most once a period per waiting connection.
IDLE_RELEASE_S = 5.0

# At most this many accepted connections may be waiting to complete the handshake at once; one more is
# closed as soon as it is accepted. A run has one edge and a few test nodes, each of which sends hello
# the moment it has connected, so even a harness starting many clients at once stays well below; what
# the cap bounds is what strangers (no token shown yet) can make a node hold: 64 x (a frame body and a
# receive buffer of at most HANDSHAKE_MAX_FRAME_SIZE = 64 KiB each, and about 12 KiB of objects) < 9 MiB.
MAX_PENDING_HANDSHAKES = 64


@dataclass(frozen=True)
class TlsFiles:
    """The PEM files of a node's TLS: its certificate chain and key, and the CA that signs its peers'.

    TLS between the nodes is mutual: a listening node (edge, cloud) requires a client certificate, and a
    connecting node (test, the edge to the cloud) checks the server's, both against ``ca`` -- the
    deployment's own CA, which signs the certificates of its nodes and nothing else. Host names are not
    checked: the nodes are addressed by whatever address each host has, and a certificate the private CA
    signed is what admits a peer. The token is still checked inside the TLS connection.
    """

    cert: Path
    key: Path
    ca: Path

    def __post_init__(self) -> None:
        for name in ("cert", "key", "ca"):
            if not Path(getattr(self, name)).is_file():
                raise UsageError(f"TLS {name} file {getattr(self, name)} does not exist")

    def _context(self, purpose: ssl.Purpose) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(purpose, cafile=str(self.ca))
            ctx.load_cert_chain(str(self.cert), str(self.key))
        except (ssl.SSLError, OSError) as exc:
            raise UsageError(f"cannot use the TLS files {self.cert}, {self.key}, {self.ca}: {exc}") from exc
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def server_context(self) -> ssl.SSLContext:
        """The context of a listening node: its certificate, and a client certificate required."""
        return self._context(ssl.Purpose.CLIENT_AUTH)

    def client_context(self) -> ssl.SSLContext:
        """The context of a connecting node: its certificate, and the server's checked against the CA."""
        ctx = self._context(ssl.Purpose.SERVER_AUTH)
        ctx.check_hostname = False  # (see the class: the private CA is the check)
        return ctx


async def with_timeout(aw: Awaitable[T], timeout: float, node: str, what: str) -> T:
    """Await ``aw`` for at most ``timeout`` seconds; :class:`NodeTimeout` naming ``node`` otherwise."""
    try:
        return await asyncio.wait_for(aw, timeout)
    except asyncio.TimeoutError as exc:
        raise NodeTimeout(node, f"timed out after {timeout:g} s {what} ({node} node)") from exc


class _FrameProtocol(asyncio.BufferedProtocol):
    def __init__(self, conn: Connection, on_made: Callable[[_FrameProtocol], None] | None = None) -> None:
        self.conn = conn
        # The decoder's own methods, called for every socket read: get_buffer is the protocol's (asyncio
        # and uvloop look it up on the instance), so no wrapper of ours sits in between; buffer_updated
        # is called from ours below.
        self.get_buffer = conn.get_buffer  # type: ignore[method-assign,assignment]
        self._buffer_updated = conn.buffer_updated
        # (bound once for FramedStream.recv, which runs for every message)
        self.frames = conn.frames
        self.next_event = conn.next_event
        self.loop = asyncio.get_running_loop()  # protocols are built by the loop that runs them
        self._on_made = on_made
        self.transport: asyncio.Transport | None = None
        self.lost: BaseException | None = None
        self.closed = False
        self.closed_event = asyncio.Event()
        self.error: ProtocolError | None = None
        self._read_waiter: asyncio.Future[bool] | None = None
        self._read_deadline = 0.0
        # One timer bounds every read wait: it is armed at the first wait's deadline and, when it fires
        # while a later wait (with a later deadline) is pending, re-armed to that wait's deadline. A
        # receive then costs no timer of its own, and no wait outlives its deadline.
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_timer_when = 0.0
        self.scatter_writes = False
        self._last_write = 0.0  # perf_counter() of the last small frame written or corked
        self.corked: list[bytes] = []  # small frames waiting for the end of this loop turn
        self._cork_bytes = 0
        self._drain_waiters: deque[asyncio.Future[None]] = deque()
        self.write_paused = False
        self.read_paused = False
        self.fed_eof = False  # the connection has been told the stream ended
        self.received = False  # bytes arrived since the read timer last looked (IDLE_RELEASE_S)
        self.handshake_timer: asyncio.TimerHandle | None = None  # (set by Listener)

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        # uvloop's writelines hands all buffers to one writev, as does asyncio's from Python 3.12; 3.11's
        # joins them into one bytes first (a copy of every tensor), so there we write them one by one.
        self.scatter_writes = type(transport).__module__.startswith("uvloop") or sys.version_info >= (3, 12)
        # Let up to a few MiB queue before drain() waits: with the default 64 KiB high-water mark a large
        # frame is sent in many pause/resume rounds and the pipe runs empty in between.
        self.transport.set_write_buffer_limits(high=_WRITE_HIGH_WATER)
        sock = self.transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):  # small messages must not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._on_made is not None:
            self._on_made(self)

    def buffer_updated(self, nbytes: int) -> None:
        self.received = True
        try:
            pending = self._buffer_updated(nbytes)
        except ProtocolError as exc:
            self.error = exc
            self._wake_reader()
            return
        if not pending:
            return  # the middle of a frame: nothing for the reader yet
        # What we send next answers this frame, so it goes out at once even if our previous write was a
        # moment ago (a ping-pong faster than the cork window would otherwise cork every reply).
        self._last_write = 0.0
        if pending >= _MAX_QUEUED_FRAMES and self.transport is not None:
            self.transport.pause_reading()
            self.read_paused = True
        fut = self._read_waiter  # (_wake_reader, inlined: this runs for every frame)
        if fut is not None and not fut.done():
            fut.set_result(True)

    def eof_received(self) -> bool:
        self.fed_eof = True
        try:
            self.conn.receive_data(b"")
        except ProtocolError as exc:
            self.error = exc
        self._wake_reader()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        self.closed_event.set()
        self.lost = exc
        self.fed_eof = True
        with contextlib.suppress(ProtocolError):
            self.conn.receive_data(b"")
        self._wake_reader()
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        while self._drain_waiters:
            fut = self._drain_waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    # helpers for FramedStream
    def write_small(self, data: bytes) -> None:
        """Write one small frame now, or cork it when it follows the previous one within the window."""
        now = perf_counter()
        if now - self._last_write > _CORK_WINDOW_S and not self.corked:
            self._last_write = now
            self.transport.write(data)  # type: ignore[union-attr]  # (set before any send)
            return
        self._last_write = now
        if not self.corked:
            self.loop.call_soon(self.flush_cork)
        self.corked.append(data)
        self._cork_bytes += len(data)
        if self._cork_bytes >= _CORK_MAX:
            self.flush_cork()

    def flush_cork(self) -> None:
        """Write the corked frames now (before a large frame, which must not overtake them, or a close)."""
        cork = self.corked
        if cork:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(cork[0] if len(cork) == 1 else b"".join(cork))
            cork.clear()
            self._cork_bytes = 0

    def _wake_reader(self) -> None:
        if self._read_waiter is not None and not self._read_waiter.done():
            self._read_waiter.set_result(True)

    def resume_reading_if_needed(self) -> None:
        if self.read_paused and self.conn.frames_pending < _MAX_QUEUED_FRAMES // 2 and self.transport:
            self.read_paused = False
            self.transport.resume_reading()

    def readable(self, deadline: float) -> asyncio.Future[bool]:
        """A future that becomes True when a frame, an error, EOF or loss arrives, and False once
        ``deadline`` (loop time) has passed. (A future rather than a coroutine: one object less per
        receive. Only the latest one is woken; the connection has one reader.)"""
        fut: asyncio.Future[bool] = self.loop.create_future()
        self._read_waiter = fut
        self._read_deadline = deadline
        if self._read_timer is None:
            self._arm_read_timer(min(deadline, self.loop.time() + IDLE_RELEASE_S))
        elif self._read_timer_when > deadline:
            self._arm_read_timer(deadline)
        return fut

    def _arm_read_timer(self, when: float) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = self.loop.call_at(when, self._on_read_timer)
        self._read_timer_when = when

    def _on_read_timer(self) -> None:
        self._read_timer = None
        fut = self._read_waiter
        if fut is None or fut.done():
            return  # nobody waits; the next wait arms the timer again
        now = self.loop.time()
        if now + _TIMER_SLACK_S >= self._read_deadline:
            fut.set_result(False)
            return
        if self.received:
            self.received = False
        else:  # a whole period of waiting and not a byte: the connection is idle
            self.conn.release_buffers()
        self._arm_read_timer(min(self._read_deadline, now + IDLE_RELEASE_S))

    async def wait_drained(self, timeout: float) -> bool:
        """Wait until the transport accepts more writes; False on timeout."""
        if not self.write_paused or self.closed:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._drain_waiters.append(fut)
        return await _wait_future(fut, timeout)


async def _wait_future(fut: asyncio.Future[None], timeout: float) -> bool:
    """Await ``fut`` for at most ``timeout`` s with a timer rather than ``wait_for`` (which would wrap it
    in a new task per call); cancelling the caller cancels ``fut``."""

    def expire() -> None:
        if not fut.done():
            fut.set_result(None)
            expired.append(True)

    expired: list[bool] = []
    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        await fut
    finally:
        handle.cancel()
    return not expired


class FramedStream:
    """A message connection to one peer node over an asyncio transport.

    ``node`` is the peer's role ("edge", "cloud", "test"), used in every error message so that a failed
    run names the node that failed.
    """

    def __init__(self, protocol: _FrameProtocol, node: str, timeout: float) -> None:
        self._p = protocol
        self.node = node
        self.timeout = timeout
        self.error_sent = False  # a fatal Error went out (send_error): the peer knows why we close
        transport = protocol.transport
        peer = transport.get_extra_info("peername") if transport is not None else None
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    @property
    def conn(self) -> Connection:
        return self._p.conn

    @property
    def closed(self) -> bool:
        return self._p.closed

    async def send(self, msg: Message, *, timeout: float | None = None) -> None:
        """Write ``msg`` and wait until the transport's buffer has drained below its high-water mark."""
        p = self._p
        transport = p.transport
        if p.closed or transport is None or transport.is_closing():
            raise PeerError(
                self.node, f"cannot send to the {self.node} node at {self.peer}: connection closed"
            )
        bufs = p.conn.send(msg)
        if len(bufs) == 1:
            p.write_small(bufs[0])  # type: ignore[arg-type]  # (one buffer: always bytes)
        elif sum(len(b) for b in bufs) <= _JOIN_MAX:
            p.write_small(b"".join(bufs))
        else:
            p.flush_cork()
            if p.scatter_writes:
                transport.writelines(bufs)
            else:
                for buf in bufs:
                    transport.write(buf)
        if not p.write_paused and not p.closed:
            return  # the common case: no await, so no task switch
        limit = timeout or self.timeout
        if not await p.wait_drained(limit):
            raise NodeTimeout(
                self.node,
                f"timed out after {limit:g} s sending to the {self.node} node at "
                f"{self.peer} (it is not reading)",
            )
        if self._p.closed:
            raise PeerError(
                self.node, f"the {self.node} node at {self.peer} closed the connection while we were sending"
            )

    async def recv(self, *, timeout: float | None = None, what: str = "for a message") -> Message:
        """The next message. Raises :class:`PeerError` when the peer closed the connection,
        :class:`RemoteProtocolError` when it sent something invalid, :class:`NodeTimeout` on timeout."""
        p = self._p
        if p.corked:
            p.flush_cork()  # what we sent goes out before we wait for (or work on) what comes next
        frames = p.frames
        next_event = p.next_event
        deadline: float | None = None
        while True:
            # With nothing received and nothing wrong, next_event would say NEED_DATA (every byte, error
            # and end of stream reaches the connection through this protocol, which records them), so
            # the usual case -- a reply that has not arrived yet -- waits without asking it.
            if frames or p.error is not None or p.closed or p.fed_eof:
                try:
                    event = next_event()
                except RemoteProtocolError as exc:
                    raise RemoteProtocolError(f"from the {self.node} node at {self.peer}: {exc}") from exc
                if p.read_paused:
                    p.resume_reading_if_needed()
                if event is CLOSED:
                    raise self._closed_error()
                if event is not NEED_DATA:
                    return event  # type: ignore[return-value]  # (the sentinels are handled here)
                if p.error is not None:
                    err = p.error
                    raise RemoteProtocolError(f"from the {self.node} node at {self.peer}: {err}") from err
                if p.closed:
                    raise self._closed_error()
            if deadline is None:
                deadline = p.loop.time() + (timeout or self.timeout)
            if not await p.readable(deadline):
                raise NodeTimeout(
                    self.node,
                    f"timed out after {timeout or self.timeout:g} s waiting {what} from the {self.node} "
                    f"node at {self.peer}",
                )

    def _closed_error(self) -> PeerError:
        detail = f" ({self._p.lost})" if self._p.lost else ""
        return PeerError(self.node, f"the {self.node} node at {self.peer} closed the connection{detail}")

    async def send_error(self, err: Error) -> None:
        """Best effort: tell the peer what went wrong before we close (never raises)."""
        self.error_sent = self.error_sent or err.fatal
        try:
            await self.send(err, timeout=min(self.timeout, 2.0))
        except Exception as exc:  # the peer may already be gone; we are closing anyway
            log.debug("could not send error to %s: %s", self.peer, exc)

    def abort(self) -> None:
        if self._p.transport is not None:
            self._p.transport.abort()

    async def close(self) -> None:
        """Close the connection and wait (briefly) until the transport is gone; safe to call twice and
        under cancellation (the transport is closed before the first await)."""
        transport = self._p.transport
        if transport is None:
            return
        if not transport.is_closing():
            self._p.flush_cork()  # what we sent goes out before the close
            transport.close()
        if not self._p.closed:
            try:
                await asyncio.wait_for(_wait_closed(self._p), 2.0)
            except asyncio.TimeoutError:
                transport.abort()


async def _wait_closed(p: _FrameProtocol) -> None:
    await p.closed_event.wait()


async def open_stream(
    host: str,
    port: int,
    *,
    node: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_frame_size: int | None = None,
    tls: ssl.SSLContext | None = None,
) -> FramedStream:
    """Connect to the ``node`` at ``host:port`` (over TLS with ``tls``, a client context:
    :meth:`TlsFiles.client_context`); :class:`PeerError` naming it if that fails."""
    loop = asyncio.get_running_loop()
    conn = Connection(max_frame_size=max_frame_size or MAX_FRAME_SIZE)
    try:
        _, protocol = await with_timeout(
            loop.create_connection(
                lambda: _FrameProtocol(conn),
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                ssl_handshake_timeout=timeout if tls is not None else None,
            ),
            timeout,
            node,
            f"connecting to {host}:{port}",
        )
    except OSError as exc:
        raise PeerError(
            node, f"cannot connect to the {node} node at {host}:{port}: {exc.strerror or exc}"
        ) from exc
    return FramedStream(protocol, node, timeout)


Handler = Callable[[FramedStream], Awaitable[None]]


class Listener:
    """A listening socket that runs ``handler(stream)`` for each connection.

    The stream is closed when the handler returns or raises; the handler's errors are logged and never
    propagated, so one bad connection cannot stop the node. A connection must complete the handshake
    (its handler calls ``stream.conn.handshake_done()``) within ``handshake_timeout`` seconds (default:
    ``timeout``), and at most ``max_pending_handshakes`` may be waiting to at once; the listener closes
    one that is too slow, and one over that number as soon as it is accepted. :meth:`close` stops
    listening, cancels the handlers and waits for them. ``tls``: a server context
    (:meth:`TlsFiles.server_context`) to accept only TLS connections with a client certificate.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        node: str,
        peer_node: str = "peer",
        timeout: float = DEFAULT_TIMEOUT_S,
        max_frame_size: int | None = None,
        handshake_timeout: float | None = None,
        max_pending_handshakes: int = MAX_PENDING_HANDSHAKES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if max_pending_handshakes < 1:
            raise ValueError(f"max_pending_handshakes must be >= 1, got {max_pending_handshakes}")
        self._handler = handler
        self._node = node
        self._peer_node = peer_node
        self._timeout = timeout
        self._max_frame_size = max_frame_size
        self._handshake_timeout = timeout if handshake_timeout is None else handshake_timeout
        if not self._handshake_timeout > 0:
            raise ValueError(f"handshake_timeout must be > 0, got {self._handshake_timeout}")
        self._max_pending = max_pending_handshakes
        self._tls = tls
        self._pending: set[FramedStream] = set()  # accepted, handshake not (yet known to be) done
        self._refused = 0  # connections refused since the pending ones were last below the cap
        self._server: asyncio.base_events.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Bind and listen; returns the address actually bound (port 0 picks a free port)."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._make_protocol,
                host,
                port,
                ssl=self._tls,
                ssl_handshake_timeout=self._handshake_timeout if self._tls is not None else None,
            )
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    def _make_protocol(self) -> _FrameProtocol:
        conn = Connection(max_frame_size=self._max_frame_size or MAX_FRAME_SIZE)
        return _FrameProtocol(conn, on_made=self._on_connection)

    def _on_connection(self, proto: _FrameProtocol) -> None:
        loop = asyncio.get_running_loop()
        stream = FramedStream(proto, self._peer_node, self._timeout)
        pending = self._pending
        if len(pending) >= self._max_pending:
            pending.difference_update([s for s in pending if s.conn.handshaken])
        if len(pending) >= self._max_pending:
            self._refuse(stream)
            return
        if self._refused:
            log.warning(
                "refused %d connection(s) while %d were waiting to complete the handshake",
                self._refused,
                self._max_pending,
            )
            self._refused = 0
        pending.add(stream)
        proto.handshake_timer = loop.call_later(self._handshake_timeout, self._handshake_expired, stream)
        task = loop.create_task(self._serve_one(stream))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refuse(self, stream: FramedStream) -> None:
        # (One line per flood, not per connection: the count follows once the pending ones drop.)
        if not self._refused:
            log.warning(
                "refusing connections: %d are waiting to complete the handshake, the most allowed "
                "(closed %s; further refusals are counted)",
                len(self._pending),
                stream.peer,
            )
        else:
            log.debug("refused connection from %s (handshake queue full)", stream.peer)
        self._refused += 1
        stream.abort()

    def _handshake_expired(self, stream: FramedStream) -> None:
        if stream.conn.handshaken or stream.closed:
            return
        log.warning(
            "closing connection from %s: no handshake within %g s", stream.peer, self._handshake_timeout
        )
        self._pending.discard(stream)
        stream.abort()

    async def _serve_one(self, stream: FramedStream) -> None:
        try:
            await self._handler(stream)
        except asyncio.CancelledError:
            raise
        except ProtocolError as exc:
            log.error("closing connection from %s: %s", stream.peer, exc)
            if not stream.error_sent:  # (the handler told the peer already, e.g. bad-input: one error)
                await stream.send_error(Error("protocol", str(exc), self._node))
        except PeerError as exc:
            log.warning("connection from %s ended: %s", stream.peer, exc)
        except Exception:
            log.exception("unexpected error serving %s; closing that connection", stream.peer)
        finally:
            self._pending.discard(stream)
            await stream.close()

    @property
    def connections(self) -> int:
        return len(self._tasks)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
