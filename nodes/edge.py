"""The edge node: runs blocks 1..k, exit head k and the entropy on each batch, answers the confident
samples itself and forwards the features of the rest to the cloud.

    python -m nodes.edge --listen 127.0.0.1:0 --cloud 127.0.0.1:9001 --checkpoint mem.pt --exit 5 --threshold 0.3

It connects to the cloud at start-up (retrying until ``--timeout``) and prints ``READY host:port`` once
both the cloud link and its own listener are up. If the cloud link breaks, every connected test node is
told (an error naming the cloud node) and the edge reconnects for the next batch that needs it. A test
node may reconfigure it between runs (:class:`~nodes.messages.Configure`): the command line gives only
the first configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import numpy as np

from contract.cli import Parser
from nodes import cli
from nodes.compute import BadInput, ModelParts, PartsCache, configure_parts, run_edge, set_threads
from nodes.errors import NodeError, PeerError, RemoteProtocolError
from nodes.handshake import accept_hello, client_handshake, send_ready
from nodes.messages import (
    PROTOCOL_VERSION,
    Batch,
    ClockProbe,
    ClockReply,
    Configure,
    Error,
    Features,
    Hello,
    Predictions,
    Ready,
    Shutdown,
)
from nodes.timing import clock_domain
from nodes.transport import FramedStream, Listener, open_stream

log = logging.getLogger(__name__)

IDLE_TIMEOUT_S = 3600.0  # see nodes.cloud.IDLE_TIMEOUT_S
_CONNECT_RETRY_S = 0.2


@dataclass(frozen=True)
class EdgeConfig:
    cloud_host: str
    cloud_port: int
    threshold: float
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("port", "cloud_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise ValueError(f"{name} must be in 0..65535, got {getattr(self, name)}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


class EdgeNode:
    """The edge server. ``start()`` connects to the cloud and listens; ``close()`` undoes both.

    ``parts`` and ``threshold`` are the configuration in force: ``config.threshold`` and the parts it
    was built with at first, then what the last :class:`Configure` asked for (loaded through ``cache``).
    """

    def __init__(self, config: EdgeConfig, parts: ModelParts, cache: PartsCache | None = None) -> None:
        self.config = config
        self.parts = parts
        self.threshold = config.threshold
        self._cache = cache if cache is not None else PartsCache()
        self._cloud: FramedStream | None = None
        self._cloud_reader: asyncio.Task[None] | None = None
        self._cloud_lock = asyncio.Lock()
        self._tests: set[FramedStream] = set()
        self._listener = Listener(self._handle, node="edge", peer_node="test", timeout=config.timeout)

    async def start(self) -> tuple[str, int]:
        await self._connect_cloud(retry_for=self.config.timeout)
        host, port = await self._listener.start(self.config.host, self.config.port)
        log.info(
            "edge node: %s exit %d T=%g, listening on %s:%d, cloud at %s:%d",
            self.parts.kind,
            self.parts.exit,
            self.threshold,
            host,
            port,
            self.config.cloud_host,
            self.config.cloud_port,
        )
        return host, port

    async def close(self) -> None:
        try:
            await self._listener.close()
        finally:
            if self._cloud_reader is not None:
                self._cloud_reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._cloud_reader
            if self._cloud is not None:
                with contextlib.suppress(Exception):
                    await self._cloud.send(Shutdown("edge stopping"), timeout=1.0)
                await self._cloud.close()

    # -- the cloud link --------------------------------------------------------------------------------
    async def _connect_cloud(self, retry_for: float = 0.0) -> FramedStream:
        cfg = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for
        while True:
            try:
                stream = await open_stream(cfg.cloud_host, cfg.cloud_port, node="cloud", timeout=cfg.timeout)
                break
            except PeerError:
                if loop.time() >= deadline:
                    raise
                await asyncio.sleep(_CONNECT_RETRY_S)
        try:
            await client_handshake(
                stream, Hello(role="edge", model=self.parts.kind, exit=self.parts.exit, token=cfg.token)
            )
        except BaseException:
            await stream.close()
            raise
        self._cloud = stream
        self._cloud_reader = asyncio.get_running_loop().create_task(self._read_cloud(stream))
        log.info("connected to the cloud node at %s", stream.peer)
        return stream

    async def _get_cloud(self) -> FramedStream:
        async with self._cloud_lock:
            if self._cloud is not None and not self._cloud.closed:
                return self._cloud
            log.info("reconnecting to the cloud node")
            return await self._connect_cloud()

    async def _read_cloud(self, stream: FramedStream) -> None:
        """The cloud only ever sends the edge errors and clock replies; watch for them and for loss."""
        try:
            while True:
                msg = await stream.recv(timeout=IDLE_TIMEOUT_S)
                if isinstance(msg, Error):
                    log.warning("cloud node reported: %s", msg.message)
                    if msg.fatal:
                        await self._tell_tests(
                            Error(msg.code, f"the cloud node reported: {msg.message}", "cloud")
                        )
                        return
                elif not isinstance(msg, ClockReply):
                    raise RemoteProtocolError(
                        f"the cloud node sent the edge an unexpected {type(msg).__name__.lower()} message"
                    )
        except asyncio.CancelledError:
            raise
        except NodeError as exc:
            log.error("lost the cloud node: %s", exc)
            await self._tell_tests(
                Error("cloud-lost", f"the edge lost its connection to the cloud node: {exc}", "cloud")
            )
        finally:
            if self._cloud is stream:
                self._cloud = None
            await stream.close()

    async def _tell_tests(self, err: Error) -> None:
        for test in list(self._tests):
            await test.send_error(err)

    # -- test nodes ------------------------------------------------------------------------------------
    async def _handle(self, stream: FramedStream) -> None:
        hello = await accept_hello(
            stream,
            node="edge",
            accept_roles=("test",),
            model=self.parts.kind,
            exit=self.parts.exit,
            threshold=self.threshold,
            token=self.config.token,
        )
        if hello is None:
            log.warning("refused a connection from %s", stream.peer)
            return
        if hello.session is None:
            await stream.send_error(
                Error(
                    "no-session",
                    "connect to the cloud node first and pass the session id from its ready message in hello",
                    "edge",
                )
            )
            return
        await send_ready(stream, self._ready())
        self._tests.add(stream)
        log.info("test node %s connected (session %s)", stream.peer, hello.session)
        try:
            while True:
                msg = await stream.recv(timeout=IDLE_TIMEOUT_S)
                if isinstance(msg, Batch):
                    await self._on_batch(stream, msg, hello.session)
                elif isinstance(msg, ClockProbe):
                    t = time.monotonic_ns()
                    await stream.send(ClockReply(msg.seq, msg.t_sent_ns, t, time.monotonic_ns()))
                elif isinstance(msg, Configure):
                    await self._on_configure(stream, msg)
                elif isinstance(msg, Shutdown):
                    log.info("test node %s done (%s)", stream.peer, msg.reason)
                    return
                elif isinstance(msg, Error):
                    log.warning("test node %s reported: %s", stream.peer, msg.message)
                    return
                else:
                    raise RemoteProtocolError(
                        f"a test node may not send {type(msg).__name__.lower()} to the edge"
                    )
        finally:
            self._tests.discard(stream)

    def _ready(self) -> Ready:
        return Ready(
            role="edge",
            version=PROTOCOL_VERSION,
            model=self.parts.kind,
            exit=self.parts.exit,
            threshold=self.threshold,
            checkpoint=str(self.parts.meta.path),
            sha256=self.parts.meta.sha256,
            clock_domain=clock_domain(),
        )

    async def _on_configure(self, test: FramedStream, msg: Configure) -> None:
        """Switch to the configuration ``msg`` asks for and answer with it, or refuse (non-fatal): the
        connection stays open and the configuration in force stays as it was."""
        parts = configure_parts(self._cache, msg, node="edge", others=len(self._tests - {test}))
        if isinstance(parts, Error):
            log.warning("refused a configuration: %s", parts.message)
            await test.send(parts)
            return
        assert msg.threshold is not None  # (configure_parts refuses an edge configuration without one)
        self.parts, self.threshold = parts, msg.threshold
        log.info("configured: %s exit %d T=%g from %s", parts.kind, parts.exit, msg.threshold, msg.checkpoint)
        await test.send(self._ready())

    async def _on_batch(self, test: FramedStream, msg: Batch, session: str) -> None:
        t_recv = time.monotonic_ns()
        try:
            out = run_edge(self.parts, msg.images, self.threshold)
        except BadInput as exc:
            await test.send_error(Error("bad-input", f"batch {msg.batch_id}: {exc}", "edge", msg.batch_id))
            raise
        t_done = time.monotonic_ns()
        local = out.local
        # The small reply goes first: the edge latency should not wait for the features to be written.
        await test.send(
            Predictions(
                batch_id=msg.batch_id,
                source="edge",
                sample_ids=msg.sample_ids[local],
                preds=out.preds[local],
                entropy=out.entropy[local],
                t_edge_recv_ns=t_recv,
                t_edge_done_ns=t_done,
            )
        )
        if local.all():
            return
        unsure = ~local
        features = Features(
            session=session,
            batch_id=msg.batch_id,
            sample_ids=msg.sample_ids[unsure],
            features=np.ascontiguousarray(out.features[unsure]),
            entropy=out.entropy[unsure],
            t_edge_recv_ns=t_recv,
            t_edge_done_ns=t_done,
        )
        try:
            cloud = await self._get_cloud()
            await cloud.send(features)
        except NodeError as exc:
            log.error("batch %d: cannot forward to the cloud node: %s", msg.batch_id, exc)
            await test.send_error(
                Error(
                    "cloud-unavailable",
                    f"the edge cannot forward batch {msg.batch_id} to the cloud node: {exc}",
                    "cloud",
                    msg.batch_id,
                )
            )
            raise PeerError("cloud", str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m nodes.edge", description=__doc__.split("\n\n")[0])
    cli.add_server_args(p, "edge", "blocks 1..K")
    p.add_argument(
        "--threshold",
        type=cli.threshold_arg,
        required=True,
        metavar="T",
        help="a sample exits at the edge when its normalized entropy is < T",
    )
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads")
    cli.add_common_args(p)
    return p


async def amain(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cache = PartsCache()
    parts = cache.get(args.checkpoint, args.exit)
    cfg = EdgeConfig(
        cloud_host=args.cloud[0],
        cloud_port=args.cloud[1],
        threshold=args.threshold,
        host=args.listen[0],
        port=args.listen[1],
        token=cli.token_from(args),
        timeout=args.timeout,
    )
    node = EdgeNode(cfg, parts, cache)
    stop = cli.stop_on_signals()
    try:
        host, port = await node.start()
        cli.settle_heap()
        cli.print_ready(host, port)
        await stop.wait()
        log.info("edge node stopping")
    finally:
        await node.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(args.verbose)
    cli.apply_env_defaults("edge", argv)
    return cli.run_entry(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
