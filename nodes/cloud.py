"""The cloud node: runs blocks k+1..9 and the cloud head on the edge's features and answers the test node.

Test nodes connect first and get a session id in their :class:`Ready`; the edge forwards each batch's
unsure samples as :class:`Features` tagged with that session, and the cloud sends its
:class:`Predictions` back on the test node's connection. A test node may reconfigure the cloud between
runs (:class:`~nodes.messages.Configure`); the command line gives only the first configuration.

    python -m nodes.cloud --listen 127.0.0.1:0 --checkpoint mem.pt --exit 5
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from contract.cli import Parser
from models import ModelError
from nodes import cli
from nodes.compute import BadInput, ModelParts, PartsCache, configure_parts, run_cloud, set_threads
from nodes.errors import RemoteProtocolError, UsageError
from nodes.handshake import accept_hello, send_ready
from nodes.messages import (
    PROTOCOL_VERSION,
    ClockProbe,
    ClockReply,
    Configure,
    Error,
    Features,
    Predictions,
    Ready,
    Received,
    Shutdown,
)
from nodes.timing import clock_domain
from nodes.transport import FramedStream, Listener, TlsFiles

log = logging.getLogger(__name__)

# A connected test node may sit idle this long between messages (the run's own timeouts are the test
# node's business); a dead peer is noticed by TCP long before.
IDLE_TIMEOUT_S = 3600.0

#: Test-only hook: a factor ≥ 1 by which procedure 4 is made longer (``1.15``: 15 % slower), so that a
#: benchmark can check that the regression check catches a known slow-down of the cloud part. Read once
#: at start-up; nothing in the product sets it, and a node started with it logs a warning.
TEST_SLOWDOWN_ENV = "LOCALEXIT_TEST_CLOUD_SLOWDOWN"


@dataclass(frozen=True)
class CloudConfig:
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    timeout: float = 30.0
    tls: TlsFiles | None = None  # mutual TLS on every connection (nodes.transport.TlsFiles)
    slowdown: float = 1.0  # test-only (TEST_SLOWDOWN_ENV): procedure 4 takes this factor longer

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in 0..65535, got {self.port}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")
        if not 1.0 <= self.slowdown < float("inf"):
            raise ValueError(f"slowdown must be a factor ≥ 1, got {self.slowdown}")


class CloudNode:
    """The cloud server. ``start()`` listens, ``close()`` stops and closes every connection.

    ``parts`` is the configuration in force: the one it was built with at first, then what the last
    :class:`Configure` asked for (loaded through ``cache``).
    """

    def __init__(self, config: CloudConfig, parts: ModelParts, cache: PartsCache | None = None) -> None:
        self.config = config
        self.parts = parts
        self._cache = cache if cache is not None else PartsCache()
        self._sessions: dict[str, FramedStream] = {}
        self._listener = Listener(
            self._handle,
            node="cloud",
            peer_node="peer",
            timeout=config.timeout,
            tls=config.tls.server_context() if config.tls is not None else None,
        )

    async def start(self) -> tuple[str, int]:
        host, port = await self._listener.start(self.config.host, self.config.port)
        log.info("cloud node: %s exit %d, listening on %s:%d", self.parts.kind, self.parts.exit, host, port)
        return host, port

    async def close(self) -> None:
        await self._listener.close()

    async def _handle(self, stream: FramedStream) -> None:
        hello = await accept_hello(
            stream,
            node="cloud",
            accept_roles=("test", "edge"),
            model=self.parts.kind,
            exit=self.parts.exit,
            threshold=None,
            token=self.config.token,
        )
        if hello is None:
            log.warning("refused a connection from %s", stream.peer)
            return
        stream.node = hello.role
        if hello.role == "test":
            await self._serve_test(stream)
        else:
            await self._serve_edge(stream)

    def _ready(self, session: str | None = None) -> Ready:
        return Ready(
            role="cloud",
            version=PROTOCOL_VERSION,
            model=self.parts.kind,
            exit=self.parts.exit,
            threshold=None,
            session=session,
            checkpoint=str(self.parts.meta.path),
            sha256=self.parts.meta.sha256,
            clock_domain=clock_domain(),
        )

    async def _serve_test(self, stream: FramedStream) -> None:
        session = secrets.token_hex(8)
        self._sessions[session] = stream
        try:
            await send_ready(stream, self._ready(session))
            log.info("test node %s connected (session %s)", stream.peer, session)
            while True:
                msg = await stream.recv(timeout=IDLE_TIMEOUT_S)
                if isinstance(msg, ClockProbe):
                    await stream.send(_clock_reply(msg))
                elif isinstance(msg, Configure):
                    await self._on_configure(stream, session, msg)
                elif isinstance(msg, Shutdown):
                    log.info("test node %s done (%s)", stream.peer, msg.reason)
                    return
                elif isinstance(msg, Error):
                    log.warning("test node %s reported: %s", stream.peer, msg.message)
                    return
                else:
                    raise RemoteProtocolError(
                        f"a test node may not send {type(msg).__name__.lower()} to the cloud"
                    )
        finally:
            self._sessions.pop(session, None)

    async def _on_configure(self, test: FramedStream, session: str, msg: Configure) -> None:
        """Switch to the configuration ``msg`` asks for and answer with it, or refuse (non-fatal)."""
        parts = configure_parts(self._cache, msg, node="cloud", others=len(self._sessions) - 1)
        if isinstance(parts, Error):
            log.warning("refused a configuration: %s", parts.message)
            await test.send(parts)
            return
        self.parts = parts
        log.info("configured: %s exit %d from %s", parts.kind, parts.exit, msg.checkpoint)
        await test.send(self._ready(session))

    async def _serve_edge(self, stream: FramedStream) -> None:
        await send_ready(stream, self._ready())
        log.info("edge node %s connected", stream.peer)
        while True:
            msg = await stream.recv(timeout=IDLE_TIMEOUT_S)
            if isinstance(msg, Features):
                await self._on_features(stream, msg)
            elif isinstance(msg, ClockProbe):
                await stream.send(_clock_reply(msg))
            elif isinstance(msg, Shutdown):
                log.info("edge node %s done (%s)", stream.peer, msg.reason)
                return
            elif isinstance(msg, Error):
                log.warning("edge node %s reported: %s", stream.peer, msg.message)
                if msg.fatal:
                    return
            else:
                raise RemoteProtocolError(
                    f"the edge node may not send {type(msg).__name__.lower()} to the cloud"
                )

    def _parts_at(self, exit: int | None) -> ModelParts:
        """The configured parts, or the same checkpoint split at ``exit`` (a batch an edge with an exit
        policy cut elsewhere); :class:`BadInput` for an exit the model lacks."""
        if exit is None or exit == self.parts.exit:
            return self.parts
        try:
            return self._cache.get(self.parts.meta.path, exit)
        except ModelError as exc:
            raise BadInput(f"features cut at exit {exit}: {exc}") from exc

    async def _on_features(self, edge: FramedStream, msg: Features) -> None:
        t_recv = time.monotonic_ns()
        try:
            preds, entropy = run_cloud(self._parts_at(msg.exit), msg.features)
        except BadInput as exc:
            await edge.send_error(Error("bad-input", f"batch {msg.batch_id}: {exc}", "cloud", msg.batch_id))
            raise
        t_done = time.monotonic_ns()
        if self.config.slowdown != 1.0:
            t_done = _stretch(t_recv, t_done, self.config.slowdown)
        if msg.ack:
            await edge.send(Received(msg.batch_id, t_recv, t_done))
        reply = Predictions(
            batch_id=msg.batch_id,
            source="cloud",
            sample_ids=msg.sample_ids,
            preds=preds,
            entropy=msg.entropy,
            t_edge_recv_ns=msg.t_edge_recv_ns,
            t_edge_done_ns=msg.t_edge_done_ns,
            t_cloud_recv_ns=t_recv,
            t_cloud_done_ns=t_done,
            cloud_entropy=entropy,
        )
        test = self._sessions.get(msg.session)
        if test is None or test.closed:
            log.warning(
                "batch %d: no test node with session %s; dropping its predictions", msg.batch_id, msg.session
            )
            await edge.send(
                Error(
                    "unknown-session",
                    f"no test node with session {msg.session}",
                    "cloud",
                    msg.batch_id,
                    fatal=False,
                )
            )
            return
        try:
            await test.send(reply)
        except Exception as exc:  # the test node's failure must not end the edge's connection
            log.warning("batch %d: cannot reply to test node %s: %s", msg.batch_id, test.peer, exc)


def _stretch(start_ns: int, end_ns: int, factor: float) -> int:
    """Busy-wait until ``start + factor · (end − start)`` and return the time then: the CPU stays taken,
    as slower code would keep it, and the wait is by the clock, so other load does not stretch it further."""
    deadline = start_ns + round(factor * (end_ns - start_ns))
    now = time.monotonic_ns()
    while now < deadline:
        now = time.monotonic_ns()
    return now


def slowdown_from_env(environ: Mapping[str, str]) -> float:
    """The test-only slow-down factor in ``environ`` (:data:`TEST_SLOWDOWN_ENV`; 1.0 when unset)."""
    raw = environ.get(TEST_SLOWDOWN_ENV)
    if raw is None or raw == "":
        return 1.0
    try:
        factor = float(raw)
    except ValueError:
        factor = float("nan")
    if not 1.0 <= factor < float("inf"):
        raise UsageError(f"{TEST_SLOWDOWN_ENV} must be a factor ≥ 1 (e.g. 1.15), got {raw!r}")
    return factor


def _clock_reply(msg: ClockProbe) -> ClockReply:
    t = time.monotonic_ns()
    return ClockReply(seq=msg.seq, t_sent_ns=msg.t_sent_ns, t_recv_ns=t, t_reply_ns=time.monotonic_ns())


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m nodes.cloud", description=__doc__.split("\n\n")[0])
    cli.add_server_args(p, "cloud", "blocks K+1..9")
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads")
    cli.add_common_args(p)
    return p


async def amain(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    slowdown = slowdown_from_env(os.environ)
    if slowdown != 1.0:
        log.warning(
            "%s=%g: procedure 4 is made %g× as long (a test hook, never set by the product)",
            TEST_SLOWDOWN_ENV,
            slowdown,
            slowdown,
        )
    cache = PartsCache(spec=args.model_spec, device=args.device)
    parts = cache.get(args.checkpoint, args.exit)
    node = CloudNode(
        CloudConfig(
            host=args.listen[0],
            port=args.listen[1],
            token=cli.token_from(args),
            timeout=args.timeout,
            tls=cli.tls_from(args),
            slowdown=slowdown,
        ),
        parts,
        cache,
    )
    stop = cli.stop_on_signals()
    host, port = await node.start()
    try:
        cli.settle_heap()
        cli.print_ready(host, port)
        await stop.wait()
        log.info("cloud node stopping")
    finally:
        await node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    cli.apply_env_defaults("cloud", argv)
    return cli.run_entry(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
