"""The test node: streams a test set to the edge in batches and collects one record per sample.

    python -m nodes.test --edge 127.0.0.1:9000 --cloud 127.0.0.1:9001 --dataset fashion-mnist --out rec.json
    python -m nodes.test --edge 127.0.0.1:9000 --cloud 127.0.0.1:9001 --serve   # runs asked for on stdin

It connects to the cloud first (to get a session id), then to the edge. By default it is closed loop, as
in the paper: the next batch goes out when every prediction of the previous one has arrived;
``--inflight N`` allows N batches outstanding. Warm-up batches (the first batches of the set, sent
again afterwards) are excluded from the records. A run either completes -- every sample has a prediction
-- and writes its records atomically, or fails with a message naming the node that failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from contract.cli import Parser
from contract.names import DATASETS, DEFAULT_DATASET
from contract.rules import check_batch_size
from models import ImageDataset, load_dataset
from nodes import cli
from nodes.errors import ConfigureError, NodeError, NodeTimeout, PeerError, RemoteProtocolError, UsageError
from nodes.handshake import client_handshake, configure, describe
from nodes.messages import (
    Batch,
    ClockProbe,
    ClockReply,
    Configure,
    Error,
    Hello,
    Predictions,
    Ready,
    Shutdown,
)
from nodes.policy import process_start_ns
from nodes.records import BatchRecord, RecordsResult, SampleRecord, write_records
from nodes.timing import (
    NS_PER_MS,
    BatchStamps,
    ClockError,
    ClockEstimate,
    NodeClock,
    check_clocks,
    clock_domain,
    clock_offset,
    correct_stamps,
    node_clock,
)
from nodes.transport import FramedStream, TlsFiles, open_stream

log = logging.getLogger(__name__)

# Readers wait this long for an unsolicited message; the run's progress is bounded by cfg.timeout per
# batch instead (an idle cloud is normal when every sample exits at the edge).
_READER_IDLE_S = 24 * 3600.0


@dataclass(frozen=True)
class ClientConfig:
    """What the test node does. ``model``/``exit``/``threshold`` are checked against the nodes in hello
    (``None``: accept what they run)."""

    edge: tuple[str, int]
    cloud: tuple[str, int]
    dataset: str = DEFAULT_DATASET
    data_dir: Path | None = None
    samples: int | None = None
    batch_size: int = 32
    inflight: int = 1
    warmup_batches: int = 2
    model: str | None = None
    exit: int | None = None
    threshold: float | None = None
    timeout: float = 30.0
    seed: int | None = None
    token: str | None = None
    clock_probes: int = 5
    tls: TlsFiles | None = None  # mutual TLS towards the edge and the cloud (nodes.transport)

    def __post_init__(self) -> None:
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        check_batch_size(self.batch_size)
        if self.inflight < 1 or self.warmup_batches < 0 or self.clock_probes < 1:
            raise ValueError("inflight and clock_probes must be >= 1, warmup_batches >= 0")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be > 0, got {self.timeout}")


@dataclass(eq=False)
class _Pending:
    """Mutable bookkeeping of one batch in flight (private to a run)."""

    batch_id: int
    ids: np.ndarray
    t_send: int
    done: asyncio.Future[None]
    edge: Predictions | None = None
    t_edge_reply: int = 0
    cloud: list[tuple[Predictions, int]] = field(default_factory=list)
    answered: set[int] = field(default_factory=set)

    def complete(self) -> bool:
        return self.edge is not None and len(self.answered) == len(self.ids)


class _Run:
    def __init__(self, cfg: ClientConfig, data: ImageDataset) -> None:
        self.cfg = cfg
        self.data = data
        self.pending: dict[int, _Pending] = {}
        self.finished = False

    # -- receiving ---------------------------------------------------------------------------------
    async def read(self, stream: FramedStream, source: str) -> None:
        try:
            while True:
                msg = await stream.recv(timeout=_READER_IDLE_S, what="for predictions")
                t = time.monotonic_ns()
                if isinstance(msg, Predictions):
                    self._on_predictions(msg, source, t)
                elif isinstance(msg, Error):
                    via = "" if msg.node == source else f" (reported by the {source} node)"
                    raise PeerError(msg.node, f"the {msg.node} node failed{via}: {msg.message} [{msg.code}]")
                else:
                    raise RemoteProtocolError(
                        f"unexpected {type(msg).__name__.lower()} from the {source} node"
                    )
        except asyncio.CancelledError:
            raise
        except NodeError as exc:
            if not self.finished:
                self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        for p in self.pending.values():
            if not p.done.done():
                p.done.set_exception(exc)

    def _on_predictions(self, msg: Predictions, source: str, t: int) -> None:
        p = self.pending.get(msg.batch_id)
        if p is None or msg.source != source:
            raise RemoteProtocolError(
                f"the {source} node sent predictions for batch {msg.batch_id}, which is not in flight"
            )
        ids = set(msg.sample_ids.tolist())
        if len(ids) != len(msg.sample_ids) or not ids <= set(p.ids.tolist()) or ids & p.answered:
            raise RemoteProtocolError(
                f"the {source} node sent predictions for samples that are not in "
                f"batch {msg.batch_id} or were answered already"
            )
        if len(msg.preds) and (msg.preds.min() < 0 or msg.preds.max() >= self.data.num_classes):
            raise RemoteProtocolError(
                f"the {source} node predicted a class outside 0..{self.data.num_classes - 1}"
            )
        if source == "edge":
            if p.edge is not None:
                raise RemoteProtocolError(f"the edge node answered batch {msg.batch_id} twice")
            p.edge, p.t_edge_reply = msg, t
        else:
            p.cloud.append((msg, t))
        p.answered |= ids
        if p.complete() and not p.done.done():
            p.done.set_result(None)

    # -- sending -----------------------------------------------------------------------------------
    async def wait_one(self, outstanding: list[_Pending]) -> None:
        done, _ = await asyncio.wait(
            [p.done for p in outstanding], timeout=self.cfg.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not done:
            oldest = outstanding[0]
            node = "edge" if oldest.edge is None else "cloud"
            missing = len(oldest.ids) - len(oldest.answered)
            raise NodeTimeout(
                node,
                f"timed out after {self.cfg.timeout:g} s waiting for predictions of batch "
                f"{oldest.batch_id} from the {node} node ({missing} of {len(oldest.ids)} "
                "samples missing)",
            )
        for fut in done:
            fut.result()  # raises the failure a reader recorded
        outstanding[:] = [p for p in outstanding if not p.done.done()]

    async def stream_batches(self, edge: FramedStream, order: np.ndarray) -> list[_Pending]:
        cfg = self.cfg
        bs = cfg.batch_size
        chunks = [order[i : i + bs] for i in range(0, len(order), bs)]
        schedule = [(chunks[i % len(chunks)], False) for i in range(cfg.warmup_batches)]
        schedule += [(c, True) for c in chunks]
        loop = asyncio.get_running_loop()
        outstanding: list[_Pending] = []
        measured: list[_Pending] = []
        for batch_id, (ids, is_measured) in enumerate(schedule):
            if is_measured and batch_id == cfg.warmup_batches:
                while outstanding:  # warm-up must be over before the measured run starts
                    await self.wait_one(outstanding)
            while len(outstanding) >= cfg.inflight:
                await self.wait_one(outstanding)
            ids64 = ids.astype(np.int64)
            images = self.data.images[ids]  # gathered before t_send: not part of procedure 1
            p = _Pending(batch_id, ids64, 0, loop.create_future())
            self.pending[batch_id] = p
            p.t_send = time.monotonic_ns()
            await edge.send(Batch(batch_id=batch_id, sample_ids=ids64, images=images, t_sent_ns=p.t_send))
            outstanding.append(p)
            if is_measured:
                measured.append(p)
        while outstanding:
            await self.wait_one(outstanding)
        return measured


async def _probe(stream: FramedStream, n: int) -> ClockEstimate:
    samples = []
    for seq in range(n):
        t0 = time.monotonic_ns()
        await stream.send(ClockProbe(seq=seq, t_sent_ns=t0))
        msg = await stream.recv(what="for a clock reply")
        t3 = time.monotonic_ns()
        if not isinstance(msg, ClockReply) or msg.seq != seq:
            raise RemoteProtocolError(
                f"the {stream.node} node answered a clock probe with {type(msg).__name__.lower()}"
            )
        samples.append((t0, msg.t_recv_ns, msg.t_reply_ns, t3))
    return clock_offset(samples)


async def _clocks(conns: Connections, before: dict[str, ClockEstimate], probes: int) -> dict[str, NodeClock]:
    """Probe each node again after the run; with the probes before it, how its stamps are corrected."""
    local = clock_domain()
    clocks = {}
    for node, stream, ready in (
        ("edge", conns.edge, conns.edge_ready),
        ("cloud", conns.cloud, conns.cloud_ready),
    ):
        after = await _probe(stream, probes)
        clocks[node] = node_clock(before[node], after, peer_domain=ready.clock_domain, local_domain=local)
    return clocks


def _select(cfg: ClientConfig, data: ImageDataset) -> np.ndarray:
    n = len(data) if cfg.samples is None else cfg.samples
    if n > len(data):
        raise UsageError(f"--samples {n} is more than the {len(data)} samples of the {data.name} test set")
    if cfg.seed is None:
        return np.arange(n)
    return np.random.default_rng(cfg.seed).permutation(len(data))[:n]


def _node_info(stream: FramedStream, ready: Ready) -> dict[str, Any]:
    return {
        "address": stream.peer,
        "version": ready.version,
        "model": ready.model,
        "exit": ready.exit,
        "threshold": ready.threshold,
        "checkpoint": ready.checkpoint,
        "sha256": ready.sha256,
    }


def _build_result(
    cfg: ClientConfig,
    data: ImageDataset,
    measured: list[_Pending],
    edge_ready: Ready,
    clock: dict[str, NodeClock],
    nodes: dict[str, dict[str, Any]],
) -> RecordsResult:
    samples: list[SampleRecord] = []
    batches: list[BatchRecord] = []
    for index, p in enumerate(measured):
        assert p.edge is not None
        e = p.edge
        for sid, pred, ent in zip(e.sample_ids.tolist(), e.preds.tolist(), e.entropy.tolist(), strict=True):
            samples.append(
                SampleRecord(
                    sid, int(data.labels[sid]), pred, "edge", ent, (p.t_edge_reply - p.t_send) / NS_PER_MS
                )
            )
        last_cloud: tuple[Predictions, int] | None = None
        for msg, t in p.cloud:
            assert msg.cloud_entropy is not None
            for sid, pred, ent, cent in zip(
                msg.sample_ids.tolist(),
                msg.preds.tolist(),
                msg.entropy.tolist(),
                msg.cloud_entropy.tolist(),
                strict=True,
            ):
                samples.append(
                    SampleRecord(
                        sid, int(data.labels[sid]), pred, "cloud", ent, (t - p.t_send) / NS_PER_MS, cent
                    )
                )
            if last_cloud is None or t > last_cloud[1]:
                last_cloud = (msg, t)
        n_cloud = sum(len(m.sample_ids) for m, _ in p.cloud)
        raw = BatchStamps(
            t_send=p.t_send,
            t_edge_recv=e.t_edge_recv_ns,
            t_edge_done=e.t_edge_done_ns,
            t_edge_reply=p.t_edge_reply,
            local=len(e.sample_ids),
            cloud=n_cloud,
            t_cloud_recv=last_cloud[0].t_cloud_recv_ns if last_cloud else None,
            t_cloud_done=last_cloud[0].t_cloud_done_ns if last_cloud else None,
            t_cloud_reply=last_cloud[1] if last_cloud else None,
        )
        stamps = correct_stamps(raw, clock["edge"], clock["cloud"])
        batches.append(BatchRecord(index=index, size=len(p.ids), stamps=stamps))
    config = {
        "model": edge_ready.model,
        "exit": edge_ready.exit,
        "threshold": edge_ready.threshold,
        "batch_size": cfg.batch_size,
        "inflight": cfg.inflight,
        "dataset": data.name,
        "samples": len(samples),
        "warmup_batches": cfg.warmup_batches,
        "seed": cfg.seed,
    }
    return RecordsResult(
        config=config,
        samples=tuple(samples),
        batches=tuple(batches),
        first_send_ns=measured[0].t_send,
        last_recv_ns=max(b.stamps.t_done for b in batches),
        warmup_batches=cfg.warmup_batches,
        clock=clock,
        nodes=nodes,
        clock_check=check_clocks([b.stamps for b in batches], clock),
        decisions=tuple(_decision(p.edge) for p in measured if p.edge is not None),
    )


def _decision(edge: Predictions) -> dict[str, Any] | None:
    """The exit an edge with an exit policy cut the batch at and why (None: a fixed-exit edge)."""
    if edge.exit is None:
        return None
    return {"exit": edge.exit, **(edge.decision or {})}


@dataclass(eq=False)
class Connections:
    """The test node's connections to the cloud and the edge, past the handshake, with the latest
    :class:`Ready` of each (the configuration it runs). A run uses them from start to end; a serving
    test node keeps them for its next run (:mod:`nodes.serve`)."""

    cloud: FramedStream
    edge: FramedStream
    cloud_ready: Ready
    edge_ready: Ready

    @classmethod
    async def open(cls, cfg: ClientConfig) -> Connections:
        """Connect to the cloud (which gives the session id), then to the edge, expecting in hello the
        model, exit and threshold of ``cfg`` (``None``: whatever they run)."""
        streams: list[FramedStream] = []
        try:
            tls = cfg.tls.client_context() if cfg.tls is not None else None
            cloud = await open_stream(*cfg.cloud, node="cloud", timeout=cfg.timeout, tls=tls)
            streams.append(cloud)
            cloud_ready = await client_handshake(
                cloud, Hello(role="test", model=cfg.model, exit=cfg.exit, token=cfg.token)
            )
            edge = await open_stream(*cfg.edge, node="edge", timeout=cfg.timeout, tls=tls)
            streams.append(edge)
            edge_ready = await client_handshake(
                edge,
                Hello(
                    role="test",
                    model=cfg.model,
                    exit=cfg.exit,
                    threshold=cfg.threshold,
                    token=cfg.token,
                    session=cloud_ready.session,
                    started_ns=process_start_ns(),
                ),
            )
        except BaseException:
            for s in streams:
                await s.close()
            raise
        return cls(cloud, edge, cloud_ready, edge_ready)

    async def configure(self, request: Configure) -> None:
        """Reconfigure the cloud, then the edge (:func:`nodes.handshake.configure`); only between runs.

        A refusal (:class:`~nodes.errors.ConfigureError`) leaves both nodes as they were: when the edge
        refuses what the cloud took (an edge with an exit policy or a calibration file runs what it
        started with), the cloud is put back to the configuration it had, so that the pair still
        matches for the next run on these connections."""
        before = self.cloud_ready
        self.cloud_ready = await configure(self.cloud, request)
        try:
            self.edge_ready = await configure(self.edge, request)
        except ConfigureError:
            now = self.cloud_ready
            if before.checkpoint is not None and (now.sha256, now.exit) != (before.sha256, before.exit):
                self.cloud_ready = await configure(
                    self.cloud,
                    Configure(
                        checkpoint=before.checkpoint,
                        exit=before.exit,
                        model=before.model,
                        sha256=before.sha256,
                    ),
                )
            raise

    def check_same_model(self) -> None:
        e, c = self.edge_ready, self.cloud_ready
        if (e.model, e.exit) != (c.model, c.exit):
            raise NodeError(
                f"the edge runs {describe(e.model, e.exit, None)} but the cloud runs "
                f"{describe(c.model, c.exit, None)}; start both with the same checkpoint and --exit"
            )

    async def close(self) -> None:
        """Say goodbye to both nodes and close (never raises for a peer that is gone)."""
        for s in (self.cloud, self.edge):
            if not s.closed:
                with contextlib.suppress(Exception):
                    await s.send(Shutdown("test done"), timeout=1.0)
            await s.close()


async def measure(cfg: ClientConfig, data: ImageDataset, conns: Connections) -> RecordsResult:
    """One run over ``conns``: clock probes, the warm-up batches, the measured ones, clock probes again
    (the records' edge and cloud stamps are corrected by the offsets, :mod:`nodes.timing`); the complete
    result, or an error naming the node that failed. After an error ``conns`` may hold replies still in
    flight: close them."""
    conns.check_same_model()
    order = _select(cfg, data)
    run = _Run(cfg, data)
    readers: list[asyncio.Task[None]] = []
    try:
        before = {
            "edge": await _probe(conns.edge, cfg.clock_probes),
            "cloud": await _probe(conns.cloud, cfg.clock_probes),
        }
        loop = asyncio.get_running_loop()
        readers = [
            loop.create_task(run.read(conns.edge, "edge")),
            loop.create_task(run.read(conns.cloud, "cloud")),
        ]
        cli.settle_heap()
        measured = await run.stream_batches(conns.edge, order)
        run.finished = True
        for t in readers:  # (the replies to the probes after the run are _probe's, not the readers')
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        clock = await _clocks(conns, before, cfg.clock_probes)
        nodes = {
            "edge": _node_info(conns.edge, conns.edge_ready),
            "cloud": _node_info(conns.cloud, conns.cloud_ready),
        }
        return _build_result(cfg, data, measured, conns.edge_ready, clock, nodes)
    finally:
        gc.unfreeze()  # (for callers in a long-lived process: what was frozen is collectable again)
        run.finished = True
        for t in readers:
            t.cancel()
        for t in readers:
            with contextlib.suppress(asyncio.CancelledError):
                await t


async def run_test_client(cfg: ClientConfig, dataset: ImageDataset | None = None) -> RecordsResult:
    """Run the test set through the edge and cloud nodes; the complete result, or an error naming the
    node that failed (:class:`~nodes.errors.PeerError`, :class:`~nodes.errors.HandshakeError`)."""
    data = dataset if dataset is not None else load_dataset(cfg.dataset, "test", cfg.data_dir)
    _select(cfg, data)  # (a --samples the set cannot give is refused before connecting)
    conns = await Connections.open(cfg)
    try:
        return await measure(cfg, data, conns)
    finally:
        await conns.close()


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m nodes.test", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--edge",
        type=cli.hostport_arg,
        required=True,
        metavar="HOST:PORT",
        help="the edge node's address: batches go there (procedure 1)",
    )
    p.add_argument(
        "--cloud",
        type=cli.hostport_arg,
        required=True,
        metavar="HOST:PORT",
        help="the cloud node's address: the predictions of cloud-exited samples come from there (5)",
    )
    p.add_argument(
        "--dataset", default=DEFAULT_DATASET, help=f"{', '.join(DATASETS)} (default {DEFAULT_DATASET})"
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="dataset folder (default for fashion-mnist: /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--samples", type=cli.positive_int, default=None, help="first N samples (default: all)")
    p.add_argument("--batch-size", type=cli.positive_int, default=32, help="images per batch (default 32)")
    p.add_argument(
        "--inflight",
        type=cli.positive_int,
        default=1,
        help="batches outstanding at once (1 = closed loop, the paper's setting)",
    )
    p.add_argument(
        "--warmup-batches",
        type=cli.nonneg_int,
        default=2,
        help="batches sent first and left out of the records (default 2)",
    )
    p.add_argument("--model", default=None, help="expected model kind (checked in hello)")
    p.add_argument("--exit", type=cli.nonneg_int, default=None, help="expected local exit (checked in hello)")
    p.add_argument("--threshold", type=cli.threshold_arg, default=None, help="expected threshold (checked)")
    p.add_argument("--seed", type=int, default=None, help="shuffle the samples with this seed")
    p.add_argument(
        "--clock-probes",
        type=cli.positive_int,
        default=5,
        help="round trips to each node before and after the run, to measure its clock's offset and "
        "drift (default 5)",
    )
    p.add_argument(
        "--strict-clocks",
        action="store_true",
        help="fail the run (exit code 1, after writing the records) when a clock offset's uncertainty or "
        "drift exceeds 10%% of a procedure it corrects; without it the run only warns",
    )
    p.add_argument("--out", type=Path, default=None, help="records file to write (JSON; required)")
    p.add_argument(
        "--serve",
        action="store_true",
        help="run many runs instead of one: read one request per line on stdin (JSON: the run's options, "
        "the configuration to give the nodes and the records file), answer one line on stdout each, "
        "until stdin closes (see nodes/serve.py); only --edge, --cloud, --token, --timeout and "
        "--clock-probes apply then",
    )
    cli.add_common_args(p)
    return p


#: Options that belong to one run: a serving test node takes them from each request instead.
RUN_OPTIONS = ("dataset", "data_dir", "samples", "batch_size", "inflight", "warmup_batches", "model", "exit",
               "threshold", "seed", "out")  # fmt: skip


def _check_mode(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--out`` is required for one run; a serving test node refuses the run options it would ignore."""
    if not args.serve:
        if args.out is None:
            parser.error("--out FILE is required (or --serve)")
        return
    given = [name for name in RUN_OPTIONS if getattr(args, name) != parser.get_default(name)]
    if given:
        shown = ", ".join("--" + name.replace("_", "-") for name in given)
        parser.error(f"--serve takes each run's options from its request: leave out {shown}")


async def amain(args: argparse.Namespace) -> int:
    cfg = ClientConfig(
        edge=args.edge,
        cloud=args.cloud,
        dataset=args.dataset,
        data_dir=args.data_dir,
        samples=args.samples,
        batch_size=args.batch_size,
        inflight=args.inflight,
        warmup_batches=args.warmup_batches,
        model=args.model,
        exit=args.exit,
        threshold=args.threshold,
        timeout=args.timeout,
        seed=args.seed,
        token=cli.token_from(args),
        clock_probes=args.clock_probes,
        tls=cli.tls_from(args),
    )
    stop = cli.stop_on_signals()
    loop = asyncio.get_running_loop()
    run = loop.create_task(run_test_client(cfg))
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait([run, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not run.done():
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            raise NodeError("interrupted by a signal; the run is incomplete and no records were written")
    result = run.result()
    write_records(result, args.out)
    check = result.clock_check
    for warning in check.warnings if check is not None else ():
        log.warning("clocks: %s", warning)
    if args.strict_clocks and check is not None and not check.trusted:
        raise ClockError(
            f"the clock offsets are not known well enough for the procedure times (--strict-clocks): "
            f"{check.warnings[0]}; the records, written to {args.out}, say more"
        )
    edge_n = sum(1 for s in result.samples if s.exit == "edge")
    log.info(
        "done: %d samples (%d at the edge, %d in the cloud), overall latency %.3f ms/sample -> %s",
        len(result.samples),
        edge_n,
        len(result.samples) - edge_n,
        result.overall_latency_ms,
        args.out,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_mode(parser, args)
    cli.setup_logging(args.verbose)
    cli.apply_env_defaults("test", argv)
    if args.serve:
        from nodes.serve import serve  # (nodes.serve builds on this module)

        return cli.run_entry(
            serve(
                args.edge,
                args.cloud,
                token=cli.token_from(args),
                timeout=args.timeout,
                clock_probes=args.clock_probes,
                tls=cli.tls_from(args),
            )
        )
    return cli.run_entry(amain(args))


if __name__ == "__main__":
    raise SystemExit(main())
