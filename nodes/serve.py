"""The test node as a server of runs: ``python -m nodes.test --serve --edge HOST:PORT --cloud HOST:PORT``.

A study runs many points on the same edge and cloud processes (``harness.study``). Its test node stays
up too, and the harness drives it over stdin/stdout, one JSON line each way per run:

- it prints :class:`Serving` once it is up;
- for each :class:`RunRequest` line on stdin it reconfigures the cloud, then the edge
  (:class:`~nodes.messages.Configure`: the checkpoint, exit and threshold of the request), runs the
  warm-up and the measured batches over its connections, writes the records file atomically and prints
  :class:`RunDone` naming it -- or :class:`RunFailed` saying what failed and which node;
- it exits 0 when stdin closes (or on SIGTERM between runs).

Connections to the nodes and the loaded datasets are kept between runs; a failed run closes the
connections, and the next run opens new ones. A node that died stays dead: every later run fails,
naming it, until the harness starts the nodes again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Annotated, TypeVar, Union

import msgspec

from contract.errors import LocalExitError
from contract.names import DEFAULT_DATASET, SERVE_PROTOCOL
from models import ImageDataset, load_dataset
from nodes import cli
from nodes.errors import UsageError
from nodes.messages import Configure, NonNegInt, Threshold
from nodes.records import write_records
from nodes.test import ClientConfig, Connections, measure
from nodes.transport import TlsFiles

log = logging.getLogger(__name__)

#: Longest request line accepted (a request is a few hundred bytes; this bounds what a stray writer
#: to stdin can make the node buffer).
MAX_LINE = 64 * 1024

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
T = TypeVar("T")


class RunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One run asked of a serving test node: the configuration the nodes get, the run's options (those
    of ``python -m nodes.test``) and the records file to write."""

    out: str
    checkpoint: str
    exit: NonNegInt
    threshold: Threshold
    model: str | None = None  # what the checkpoint must hold (checked by the nodes)
    sha256: str | None = None  # the checkpoint's digest the nodes must find
    dataset: str = DEFAULT_DATASET
    data_dir: str | None = None
    samples: PositiveInt | None = None
    batch_size: PositiveInt = 32
    inflight: PositiveInt = 1
    warmup_batches: NonNegInt = 2
    seed: int | None = None

    def to_json(self) -> bytes:
        """One line (without its newline)."""
        return msgspec.json.encode(self)

    @classmethod
    def from_json(cls, line: bytes | str) -> RunRequest:
        """Parse one line; :class:`~nodes.errors.UsageError` saying what is wrong with it."""
        try:
            return msgspec.json.decode(line, type=cls)
        except msgspec.DecodeError as exc:  # (ValidationError included)
            raise UsageError(f"unusable run request: {exc}") from exc

    def client_config(self, base: ClientConfig) -> ClientConfig:
        """``base`` (addresses, token, timeouts) with this run's options, expecting of the nodes what
        the request configures."""
        return dataclasses.replace(
            base,
            dataset=self.dataset,
            data_dir=Path(self.data_dir) if self.data_dir is not None else None,
            samples=self.samples,
            batch_size=self.batch_size,
            inflight=self.inflight,
            warmup_batches=self.warmup_batches,
            model=self.model,
            exit=self.exit,
            threshold=self.threshold,
            seed=self.seed,
        )

    def configure(self) -> Configure:
        return Configure(
            checkpoint=self.checkpoint,
            exit=self.exit,
            threshold=self.threshold,
            model=self.model,
            sha256=self.sha256,
        )


class _Reply(msgspec.Struct, frozen=True, tag_field="reply", forbid_unknown_fields=True):
    def to_json(self) -> bytes:
        return msgspec.json.encode(self)


class Serving(_Reply, frozen=True, tag="serving"):
    """The first line: the test node is up and speaks ``protocol``."""

    protocol: str = SERVE_PROTOCOL


class RunDone(_Reply, frozen=True, tag="done"):
    """A run completed; its records are in ``records``."""

    records: str


class RunFailed(_Reply, frozen=True, tag="failed"):
    """A run failed: ``message`` says what, ``node`` which node (None: the request or the test node
    itself), ``exit_code`` is what the one-run program would have exited with (2: a mistake to fix)."""

    message: str
    node: str | None = None
    exit_code: int = 1


Reply = Union[Serving, RunDone, RunFailed]  # noqa: UP007 -- (a runtime type for msgspec on Python 3.10)


def decode_reply(line: bytes | str) -> Reply:
    """Parse one line of a serving test node's stdout; ``UsageError`` when it is none of the replies."""
    try:
        reply: Reply = msgspec.json.decode(line, type=Reply)
    except msgspec.DecodeError as exc:
        raise UsageError(f"not a reply of a serving test node: {exc}") from exc
    return reply


class _Server:
    """The state of a serving test node between runs: its connections and the datasets it loaded.

    ``base``: the addresses, token and timeouts every run shares (no model expectations: each run's
    configure says what the nodes must run)."""

    def __init__(self, base: ClientConfig) -> None:
        self.base = base
        self.conns: Connections | None = None
        self.datasets: dict[tuple[str, str | None], ImageDataset] = {}

    def dataset(self, req: RunRequest) -> ImageDataset:
        key = (req.dataset, req.data_dir)
        if key not in self.datasets:
            data_dir = Path(req.data_dir) if req.data_dir is not None else None
            self.datasets[key] = load_dataset(req.dataset, "test", data_dir)
        return self.datasets[key]

    async def run(self, req: RunRequest) -> RunDone:
        cfg = req.client_config(self.base)
        data = self.dataset(req)
        if self.conns is None:
            self.conns = await Connections.open(self.base)
        await self.conns.configure(req.configure())
        result = await measure(cfg, data, self.conns)
        write_records(result, req.out)
        return RunDone(records=req.out)

    async def answer(self, line: bytes) -> RunDone | RunFailed:
        try:
            done = await self.run(RunRequest.from_json(line))
        except LocalExitError as exc:
            log.error("run failed: %s", exc)
            # (the connections may hold replies of the failed run, or lead to a node that is gone)
            await self.drop_connections()
            return RunFailed(
                message=str(exc), node=getattr(exc, "node", None), exit_code=int(getattr(exc, "exit_code", 2))
            )
        log.info("run done: %s", done.records)
        return done

    async def drop_connections(self) -> None:
        if self.conns is not None:
            conns, self.conns = self.conns, None
            await conns.close()


def _say(reply: _Reply) -> None:
    sys.stdout.buffer.write(reply.to_json() + b"\n")
    sys.stdout.buffer.flush()


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    try:
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    except ValueError as exc:  # (a regular file: asyncio reads only pipes, sockets and terminals)
        raise UsageError(f"--serve reads its requests from a pipe or a terminal: {exc}") from exc
    return reader


async def _until_stopped(stop: asyncio.Event, aw: Awaitable[T]) -> tuple[bool, T | None]:
    """Await ``aw`` unless ``stop`` is set first (then cancel it): (stopped, its result)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(aw)
    stopper = loop.create_task(stop.wait())
    try:
        await asyncio.wait([task, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        return True, None
    return False, task.result()


async def serve(
    edge: tuple[str, int],
    cloud: tuple[str, int],
    *,
    token: str | None = None,
    timeout: float = 30.0,
    clock_probes: int = 5,
    tls: TlsFiles | None = None,
) -> int:
    """Serve runs from stdin until it closes or SIGTERM/SIGINT comes (a run under way is abandoned, and
    writes no records); returns the exit code."""
    server = _Server(
        ClientConfig(edge, cloud, token=token, timeout=timeout, clock_probes=clock_probes, tls=tls)
    )
    stop = cli.stop_on_signals()
    lines = await _stdin_lines()
    _say(Serving())
    try:
        while True:
            stopped, line = await _until_stopped(stop, lines.readline())
            if not stopped and line is not None and line.strip():
                stopped, reply = await _until_stopped(stop, server.answer(line))
                if reply is not None:
                    _say(reply)
            if stopped:
                log.info("stopping on a signal")
                return 0
            if not line:
                log.info("stdin closed: done")
                return 0
    except ValueError as exc:  # (StreamReader.readline: a line over MAX_LINE)
        raise UsageError(f"a request line is longer than {MAX_LINE} bytes") from exc
    finally:
        await server.drop_connections()
