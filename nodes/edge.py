"""The edge node: runs blocks 1..k, exit head k and the entropy on each batch, answers the confident
samples itself and forwards the features of the rest to the cloud.

    python -m nodes.edge --listen 127.0.0.1:0 --cloud 127.0.0.1:9001 --checkpoint mem.pt --exit 5 --threshold 0.3

It connects to the cloud at start-up (retrying until ``--timeout``) and prints ``READY host:port`` once
both the cloud link and its own listener are up. If the cloud link breaks, every connected test node is
told (an error naming the cloud node) and the edge reconnects for the next batch that needs it. A test
node may reconfigure it between runs (:class:`~nodes.messages.Configure`): the command line gives only
the first configuration.

With ``--exit-policy adaptive`` or ``oracle`` (a multi-exit model only), the edge holds every exit it may
use (``--exits``, default all) and cuts each batch at the exit its policy chooses (:mod:`nodes.policy`,
:mod:`nodes.multiexit`); its predictions say which exit and why, and its features tell the cloud where
they were cut. ``fixed`` (the default) is the paper's behaviour, unchanged on the wire.

With ``--calibration FILE`` (``harness calibrate``) instead of ``--threshold``, each exit cuts at its own
threshold, its logits divided by its own temperature before the entropy (:mod:`nodes.thresholds`); the
file must have been made for ``--checkpoint``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from contract.cli import Parser
from contract.errors import LocalExitError
from nodes import cli
from nodes.compute import BadInput, ModelParts, PartsCache, configure_parts, run_edge, set_threads
from nodes.errors import NodeError, PeerError, RemoteProtocolError, UsageError
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
    Received,
    Shutdown,
)
from nodes.multiexit import ExitSet, PolicyMaker, PolicySetup
from nodes.policy import POLICIES, ExitPolicy, LinkTruth, Profile, check_policy, read_profile, usable_exits
from nodes.thresholds import ExitThresholds, read_calibration
from nodes.timing import clock_domain
from nodes.transport import FramedStream, Listener, TlsFiles, open_stream

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
    tls: TlsFiles | None = None  # mutual TLS towards the cloud and the test node (nodes.transport)

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
    ``thresholds`` (a calibration file's) gives each exit its own T and temperature instead; the
    threshold in force is then the one of the exit in force.
    """

    def __init__(
        self,
        config: EdgeConfig,
        parts: ModelParts,
        cache: PartsCache | None = None,
        policy: PolicyMaker | None = None,
        thresholds: ExitThresholds | None = None,
    ) -> None:
        self.config = config
        self.parts = parts
        self.cuts = thresholds if thresholds is not None else ExitThresholds.of(config.threshold)
        self._cache = cache if cache is not None else PartsCache()
        # With an exit policy: each test connection (a run) gets a fresh policy at its first batch; the
        # cloud's replies to the probes and acks of the batches in flight feed its link estimate.
        self._maker = policy
        self._policy: ExitPolicy | None = None
        self._run_t0_ns = 0
        self._sent: dict[int, tuple[int, int]] = {}  # batch id -> (features sent at, bytes)
        self._probes: dict[int, int] = {}  # probe seq -> sent at
        self._probe_seq = 0
        self._cloud: FramedStream | None = None
        self._cloud_reader: asyncio.Task[None] | None = None
        self._cloud_lock = asyncio.Lock()
        self._tests: set[FramedStream] = set()
        self._listener = Listener(
            self._handle,
            node="edge",
            peer_node="test",
            timeout=config.timeout,
            tls=config.tls.server_context() if config.tls is not None else None,
        )

    @property
    def threshold(self) -> float:
        """T at the exit in force (the configured exit, for an edge with an exit policy)."""
        return self._cut_threshold(self.parts.exit)

    @property
    def _fallback_threshold(self) -> float:
        # (exit 0 cuts nothing: a plain threshold is still the one announced, a calibration's is none)
        return self.cuts.uniform if self.cuts.uniform is not None else 0.0

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
                stream = await open_stream(
                    cfg.cloud_host,
                    cfg.cloud_port,
                    node="cloud",
                    timeout=cfg.timeout,
                    tls=cfg.tls.client_context() if cfg.tls is not None else None,
                )
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
                elif isinstance(msg, Received):
                    self._on_received(msg)
                elif isinstance(msg, ClockReply):
                    self._on_probe_reply(msg)
                else:
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
        # (a run's time 0, the oracle's, is its test node's start where it says, else this moment)
        self._policy = None
        self._sent.clear()
        self._probes.clear()
        self._run_t0_ns = hello.started_ns if hello.started_ns is not None else time.monotonic_ns()
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
        if self._maker is not None:
            await test.send(
                Error(
                    "policy",
                    f"an edge with the {self._maker.name} exit policy runs the checkpoint and exits it "
                    "started with; start a new edge for another configuration",
                    "edge",
                    fatal=False,
                )
            )
            return
        parts = configure_parts(self._cache, msg, node="edge", others=len(self._tests - {test}))
        if isinstance(parts, Error):
            log.warning("refused a configuration: %s", parts.message)
            await test.send(parts)
            return
        assert msg.threshold is not None  # (configure_parts refuses an edge configuration without one)
        if self.cuts.calibration is not None:
            refusal = self._calibrated_refusal(parts, msg.threshold)
            if refusal is not None:
                log.warning("refused a configuration: %s", refusal)
                await test.send(Error("calibration", refusal, "edge", fatal=False))
                return
            self.parts = parts
        else:
            self.parts, self.cuts = parts, ExitThresholds.of(msg.threshold)
        log.info("configured: %s exit %d T=%g from %s", parts.kind, parts.exit, msg.threshold, msg.checkpoint)
        await test.send(self._ready())

    def _calibrated_refusal(self, parts: ModelParts, threshold: float) -> str | None:
        """Why a calibrated edge cannot take ``parts`` at ``threshold`` (None: it can): its file is
        for one checkpoint, and it gives each exit's threshold."""
        if parts.meta.sha256 != self.parts.meta.sha256:
            return (
                f"this edge's calibration file {self.cuts.calibration} is for its checkpoint "
                f"{self.parts.meta.path}; start a new edge for another checkpoint"
            )
        try:
            want = self.cuts.threshold(parts.exit)
        except ValueError as exc:
            return str(exc)
        if not math.isclose(threshold, want, rel_tol=1e-9, abs_tol=1e-12):
            return (
                f"this edge cuts exit {parts.exit} at T={want:g} from its calibration file "
                f"{self.cuts.calibration}, not at T={threshold:g}"
            )
        return None

    def _on_received(self, msg: Received) -> None:
        sent = self._sent.pop(msg.batch_id, None)
        if sent is None or self._policy is None:
            return
        held_ns = msg.t_cloud_done_ns - msg.t_cloud_recv_ns
        self._policy.observe_transfer(sent[1], (time.monotonic_ns() - sent[0] - held_ns) / 1e6)

    def _on_probe_reply(self, msg: ClockReply) -> None:
        sent = self._probes.pop(msg.seq, None)
        if sent is None or self._policy is None:
            return
        held_ns = msg.t_reply_ns - msg.t_recv_ns
        self._policy.observe_rtt((time.monotonic_ns() - sent - held_ns) / 1e6)

    def _observing(self) -> bool:
        return self._policy is not None and self._policy.observes_link

    def _choose(self, msg: Batch) -> tuple[ModelParts, dict[str, float | str | None] | None]:
        """The parts to cut ``msg`` with, and the decision to record (None: no policy)."""
        if self._maker is None:
            return self.parts, None
        if self._policy is None:
            self._policy = self._maker.make(msg.images, self.cuts, self._run_t0_ns)
        now = time.monotonic_ns()
        decision = self._policy.choose(len(msg.sample_ids), now)
        why = decision.to_json()
        why["run_s"] = (now - self._run_t0_ns) / 1e9
        return self._maker.exits.at(decision.exit), why

    def _cut_threshold(self, exit: int) -> float:
        return self.cuts.threshold(exit) if exit > 0 else self._fallback_threshold

    async def _on_batch(self, test: FramedStream, msg: Batch, session: str) -> None:
        t_recv = time.monotonic_ns()
        try:
            parts, decision = self._choose(msg)
            out = run_edge(
                parts, msg.images, self._cut_threshold(parts.exit), self.cuts.temperature(parts.exit)
            )
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
                exit=None if decision is None else parts.exit,
                decision=decision,
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
            exit=None if decision is None else parts.exit,
            ack=self._observing(),
        )
        try:
            cloud = await self._get_cloud()
            if self._observing():
                # The probe goes first on the same stream: its reply times the round trip as the link is
                # now, and the features' ack then times their bytes crossing.
                self._probe_seq += 1
                self._probes[self._probe_seq] = time.monotonic_ns()
                await cloud.send(ClockProbe(self._probe_seq, self._probes[self._probe_seq]))
                self._sent[msg.batch_id] = (time.monotonic_ns(), features.features.nbytes)
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
    cut = p.add_mutually_exclusive_group(required=True)
    cut.add_argument(
        "--threshold",
        type=cli.threshold_arg,
        metavar="T",
        help="a sample exits at the edge when its normalized entropy is < T",
    )
    cut.add_argument(
        "--calibration",
        default=None,
        metavar="FILE",
        help="each exit's T (and temperature) from this file, made for --checkpoint by "
        "`python -m harness calibrate`, instead of one --threshold",
    )
    p.add_argument("--threads", type=cli.positive_int, default=None, help="torch threads")
    p.add_argument(
        "--exit-policy",
        choices=POLICIES,
        default="fixed",
        help="how each batch's exit is chosen (multi-exit model only for adaptive and oracle; "
        "default fixed: --exit for every batch)",
    )
    p.add_argument(
        "--exits",
        type=_exit_list,
        default=None,
        metavar="K,K,...",
        help="the exits an exit policy may choose from (default: every local exit of the model)",
    )
    p.add_argument(
        "--profile",
        default=None,
        metavar="FILE",
        help="per-exit profile (python -m harness profile); default: measured on each run's first batch",
    )
    p.add_argument(
        "--latency-slo",
        type=cli.positive_float,
        default=None,
        metavar="MS",
        help="pick the most accurate exit expected to keep the per-sample latency within MS",
    )
    p.add_argument(
        "--link-schedule",
        default=None,
        metavar="FILE|INLINE",
        help="the oracle policy's knowledge: the edge–cloud link's schedule (time 0: a run's connection)",
    )
    cli.add_common_args(p)
    return p


def _exit_list(text: str) -> tuple[int, ...]:
    try:
        exits = tuple(int(x) for x in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected exits like 2,5,8, got {text!r}") from exc
    if not exits or min(exits) < 0:
        raise argparse.ArgumentTypeError(f"expected exits like 2,5,8, got {text!r}")
    return exits


def link_truth(text: str) -> LinkTruth:
    """The link schedule ``text`` (``--link-schedule``'s forms) as the oracle policy's :class:`LinkTruth`."""
    from netem.schedule import from_text  # (netem's specs load the model package: only when asked)

    try:
        schedule = from_text(text)
    except (ValueError, LocalExitError) as exc:
        raise UsageError(f"bad --link-schedule: {exc}") from exc
    if not schedule.steps:
        raise UsageError("--link-schedule has no link steps for the oracle to know")
    return LinkTruth(
        at_s=tuple(s.at_s for s in schedule.steps),
        rate_bps=tuple(None if s.spec.rate_bps is None else float(s.spec.rate_bps) for s in schedule.steps),
        delay_ms=tuple(s.spec.delay_s * 1e3 for s in schedule.steps),
    )


def exit_thresholds(args: argparse.Namespace, parts: ModelParts) -> ExitThresholds:
    """``--threshold`` for every exit, or ``--calibration``'s per exit (:class:`UsageError` for a file
    made for another checkpoint, or one without the exits the edge may cut at)."""
    if args.calibration is None:
        return ExitThresholds.of(args.threshold)
    try:
        cuts = read_calibration(args.calibration, parts.meta.sha256)
        cuts.check([parts.exit, *(args.exits or ())])
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    return cuts


def check_profile(profile: Profile, path: str, cuts: ExitThresholds, exits: tuple[int, ...]) -> None:
    """ValueError unless ``profile`` counted each exit's local samples at the T and temperature the edge
    cuts it at (its local-exit rates would be another threshold's)."""
    for k in exits:
        if k not in profile.exit_numbers:
            continue  # (PolicySetup names the missing exits)
        p = profile.at(k)
        measured = p.threshold if p.threshold is not None else profile.threshold
        if not math.isclose(measured, cuts.threshold(k), abs_tol=1e-12) or not math.isclose(
            p.temperature, cuts.temperature(k)
        ):
            raise ValueError(
                f"the profile {path} was measured at exit {k} with threshold {measured:g} (temperature "
                f"{p.temperature:g}); the edge cuts it at {cuts.threshold(k):g} (temperature "
                f"{cuts.temperature(k):g}): profile with the same --threshold or --calibration"
            )


def policy_setup(
    args: argparse.Namespace, cache: PartsCache, parts: ModelParts, cuts: ExitThresholds | None = None
) -> PolicySetup | None:
    """The exit policy the options ask for (None: fixed), or :class:`UsageError` saying what is wrong."""
    cuts = cuts if cuts is not None else exit_thresholds(args, parts)
    try:
        check_policy(args.exit_policy, parts.kind, args.latency_slo)
        if args.exit_policy == "fixed":
            if args.profile is not None or args.exits is not None:
                raise ValueError("--profile and --exits apply to the adaptive and oracle exit policies")
            return None
        exits = usable_exits(parts.meta.config.local_exits, args.exits)
        cuts.check(exits)
        profile = None
        if args.profile is not None:
            profile = read_profile(args.profile)
            if profile.sha256 is not None and profile.sha256 != parts.meta.sha256:
                raise ValueError(f"the profile {args.profile} was measured on another checkpoint")
            check_profile(profile, args.profile, cuts, exits)
        truth = link_truth(args.link_schedule) if args.exit_policy == "oracle" else None
        exit_set = ExitSet.load(cache, args.checkpoint, exits, parts.exit)
        return PolicySetup(args.exit_policy, exit_set, profile=profile, slo_ms=args.latency_slo, truth=truth)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


async def amain(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    cache = PartsCache(spec=args.model_spec, device=args.device)
    parts = cache.get(args.checkpoint, args.exit)
    cuts = exit_thresholds(args, parts)
    cfg = EdgeConfig(
        cloud_host=args.cloud[0],
        cloud_port=args.cloud[1],
        # (with --calibration the edge cuts at each exit's T from the file, which replaces this one)
        threshold=args.threshold if args.threshold is not None else 0.0,
        host=args.listen[0],
        port=args.listen[1],
        token=cli.token_from(args),
        timeout=args.timeout,
        tls=cli.tls_from(args),
    )
    node = EdgeNode(cfg, parts, cache, policy_setup(args, cache, parts, cuts), cuts)
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
