"""Transport benchmark: framed tensors (nodes/) vs a raw socket, a raw asyncio echo and pyzmq, on loopback.

    .venv/bin/python -m bench.bench_transport [--quick] [--congestion-control NAME]
    .venv/bin/python -m bench.bench_transport --tls [--quick]     # the cost of TLS on the framed transport

Measured in one run, receivers in a separate process, so only ratios are reported against targets:

- throughput: K framed ``Batch`` messages carrying a uint8 tensor of P bytes, sender to receiver until the
  receiver acknowledges the last one, vs ``socket.sendall`` of the same K×P bytes into ``recv_into``
  (target ≥ 0.9× raw from 1 MiB up), and vs pyzmq PAIR sockets sending the same payloads zero-copy
  (target: not slower, i.e. ≥ 1.0× zmq);
- round trip: a small framed message (clock probe → clock reply) vs a raw asyncio echo of 64 bytes on the
  same event loop (target ≤ 1.2×), and vs a pyzmq PAIR ping-pong;
- decode: time to turn a received frame into a message, per payload size (target: flat; zero-copy).

``--tls`` measures instead what TLS (``nodes.transport.TlsFiles``: mutual, a private CA's P-256
certificates made with ``openssl``) costs the framed transport: throughput and round trip over TLS vs
plain TCP, paired by round as below.

Each transfer trial also counts the TCP segments the kernel sent again during it (``RetransSegs``). On
loopback nothing is lost, but segments can arrive out of order and be taken for lost (BBR does this on
loopback; see docs/design-notes.md). ``--congestion-control NAME``
(root) runs the whole benchmark in a private network namespace whose connections use NAME -- the same
for every method, pyzmq's sockets included, which no socket option could do -- and leaves the machine's
setting alone.

When run as root it also measures the round trips with idle CPUs kept out of sleep states
(``harness.environment.cpus_kept_awake``), for comparison only: on a VM that halts idle vCPUs most of a
loopback round trip is waking the peer's vCPU, which tells the machine's share from the code's.

Both are measured in rounds, and a ratio is the median over the rounds of the ratio between the
framed method and the other method *in the same round*, with its interquartile range: a round's
trials run within a fraction of a second of each other, so they share the machine's state. Throughput:
each round runs one trial per method and size, the methods one after the other, size by size, their
order reversed every other round; the GB/s shown are each method's best trial. Round trips: one block
of 1000 per method per round, the order reversed every other round. (A ratio of each method's best
trial would compare bests that may come from different machine states on a VM whose vCPUs change
speed every few seconds; pairing by round avoids that.) What each baseline is, exactly:

- raw: a blocking ``socket.sendall`` of the payload (one buffer, no event loop, no framing) into a
  blocking ``recv_into`` that reuses one buffer -- the most a Python process can get from TCP here; both
  ends set TCP_NODELAY, as the framed transport does;
- raw asyncio echo: ``StreamWriter.write``/``drain`` then ``StreamReader.readexactly`` of 64 bytes, on the
  same event loop as the framed client (uvloop when installed; the echo server too), TCP_NODELAY on;
- pyzmq: PAIR sockets, ``send_multipart([64-byte header, payload], copy=False)``, receiver
  ``recv_multipart(copy=False)``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import numpy as np
from tabulate import tabulate

from harness.environment import cpus_kept_awake
from netem.probe import TCP_CC_PROC, available_congestion_controls, congestion_control
from nodes import Batch, ClockProbe, ClockReply, FrameDecoder, FramedStream, Listener, open_stream
from nodes.codec import BodyDecoder, FrameEncoder
from nodes.errors import PeerError
from nodes.messages import Message
from nodes.transport import TlsFiles

KIB = 1024
MIB = 1024 * KIB
SPEC = struct.Struct(">QQ")  # (messages, payload bytes) announced before each raw/zmq trial
ECHO_SIZE = 64


def _run_loop(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# -- receivers (run in a child process) -------------------------------------------------------------------


def raw_server(pipe: Pipe) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    pipe.send(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    spec = bytearray(SPEC.size)
    buf = bytearray(0)
    while True:
        view = memoryview(spec)
        got = 0
        while got < SPEC.size:
            n = conn.recv_into(view[got:])
            if n == 0:
                return
            got += n
        k, p = SPEC.unpack(spec)
        if len(buf) < p:
            buf = bytearray(p)
        mv = memoryview(buf)[:p]
        for _ in range(k):
            got = 0
            while got < p:
                got += conn.recv_into(mv[got:])
        conn.sendall(b"k")


def framed_server(pipe: Pipe, tls: TlsFiles | None = None) -> None:
    async def handler(stream: FramedStream) -> None:
        stream.conn.handshake_done()
        with contextlib.suppress(PeerError):  # (the client closes when done: the end, not a failure)
            while True:
                msg = await stream.recv(timeout=600)
                if isinstance(msg, ClockProbe):
                    if msg.seq == 0:  # round-trip probe
                        await stream.send(ClockReply(0, msg.t_sent_ns, 0, 0))
                        continue
                    for _ in range(msg.seq):  # a throughput trial of seq messages
                        m = await stream.recv(timeout=600)
                        assert isinstance(m, Batch)
                    await stream.send(ClockReply(msg.seq, 0, 0, 0))

    async def main() -> None:
        server_tls = tls.server_context() if tls is not None else None
        listener = Listener(handler, node="cloud", timeout=600, tls=server_tls)
        _, port = await listener.start("127.0.0.1", 0)
        pipe.send(port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until told to stop
        await listener.close()

    _run_loop(main())


def echo_server(pipe: Pipe) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.readexactly(ECHO_SIZE)
                writer.write(data)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main() -> None:
        srv = await asyncio.start_server(handle, "127.0.0.1", 0)
        pipe.send(srv.sockets[0].getsockname()[1])
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        srv.close()

    _run_loop(main())


def zmq_server(pipe: Pipe) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    pipe.send(port)
    while True:
        spec = sock.recv()
        k, p = SPEC.unpack(spec)
        if k == 0 and p == 0:
            break
        if p == 0:  # ping-pong of k round trips
            for _ in range(k):
                sock.send(sock.recv(copy=False), copy=False)
            continue
        for _ in range(k):
            sock.recv_multipart(copy=False)
        sock.send(b"k")
    sock.close(linger=0)
    ctx.term()


def _stop_servers(procs: list[tuple[Any, Any]]) -> None:
    """Ask each server process to stop on its pipe; kill one still running 3 s later."""
    for proc, pipe in procs:
        with contextlib.suppress(BrokenPipeError, OSError):
            pipe.send("stop")
        proc.join(timeout=3)
        if proc.is_alive():
            proc.kill()


def _start(target: Callable[..., None], *extra: Any) -> tuple[mp.process.BaseProcess, Pipe, int]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=target, args=(child, *extra), daemon=True)
    proc.start()
    if not parent.poll(60):
        proc.kill()
        raise RuntimeError(f"{target.__name__} did not start")
    return proc, parent, int(parent.recv())


# -- senders (one trial each; the caller interleaves the methods) ----------------------------------------


def raw_trial(s: socket.socket, k: int, payload: np.ndarray) -> float:
    s.sendall(SPEC.pack(k, len(payload)))
    t0 = time.perf_counter()
    for _ in range(k):
        s.sendall(payload.data)
    if s.recv(1) != b"k":
        raise RuntimeError("raw receiver did not acknowledge")
    return time.perf_counter() - t0


async def framed_trial(stream: FramedStream, k: int, msg: Batch) -> float:
    await stream.send(ClockProbe(seq=k, t_sent_ns=0))
    t0 = time.perf_counter()
    for _ in range(k):
        await stream.send(msg)
    ack = await stream.recv()
    if not (isinstance(ack, ClockReply) and ack.seq == k):
        raise RuntimeError(f"framed receiver answered {ack!r}")
    return time.perf_counter() - t0


def zmq_trial(sock: Any, k: int, payload: np.ndarray) -> float:
    header = b"\x00" * 64  # a small header frame, as a user would send dtype/shape alongside
    sock.send(SPEC.pack(k, len(payload)))
    t0 = time.perf_counter()
    for _ in range(k):
        sock.send_multipart([header, payload.data], copy=False)
    if sock.recv() != b"k":
        raise RuntimeError("zmq receiver did not acknowledge")
    return time.perf_counter() - t0


async def framed_rtt(stream: FramedStream, n: int) -> float:
    probe = ClockProbe(seq=0, t_sent_ns=1)
    t0 = time.perf_counter()
    for _ in range(n):
        await stream.send(probe)
        await stream.recv()
    return (time.perf_counter() - t0) / n


async def echo_rtt(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> float:
    data = b"x" * ECHO_SIZE
    t0 = time.perf_counter()
    for _ in range(n):
        writer.write(data)
        await writer.drain()
        await reader.readexactly(ECHO_SIZE)
    return (time.perf_counter() - t0) / n


def zmq_rtt(sock: Any, n: int) -> float:
    data = b"x" * ECHO_SIZE
    sock.send(SPEC.pack(n, 0))
    t0 = time.perf_counter()
    for _ in range(n):
        sock.send(data)
        sock.recv()
    return (time.perf_counter() - t0) / n


RTT_METHODS = ("framed", "echo", "zmq")
#: The round trip's targets: the framed round trip over each other method's, at most.
RTT_TARGETS = {"echo": 1.2, "zmq": 1.0}


@dataclass
class RoundTrips:
    """Interleaved blocks of round trips: each method's block times (seconds per round trip, in order) and
    the per-block ratios of the framed time to each other method's in the same round of blocks."""

    blocks: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in RTT_METHODS})

    def best(self, method: str) -> float:
        return min(self.blocks[method], default=float("inf"))

    def ratios(self, method: str) -> list[float]:
        return [f / o for f, o in zip(self.blocks["framed"], self.blocks[method], strict=True)]

    def ratio(self, method: str) -> float:
        """The median of the per-round ratios: each round's blocks ran within a few hundred milliseconds
        of each other, so they share the machine's state; the median of many rounds is the steady ratio."""
        return _median_iqr(self.ratios(method))[0]

    def spread(self, method: str) -> tuple[float, float]:
        """The interquartile range of the per-round ratios."""
        _, low, high = _median_iqr(self.ratios(method))
        return low, high


TRANSFER_METHODS = ("raw", "framed", "zmq")
#: The throughput targets: framed throughput over the other method's, at least; raw only from 1 MiB up.
TRANSFER_TARGETS = {"raw": 0.9, "zmq": 1.0}
RAW_TARGET_FROM = 1 * MIB


def _median_iqr(ratios: list[float]) -> tuple[float, float, float]:
    """The median of paired ratios and their interquartile range."""
    if len(ratios) < 2:
        return (ratios[0],) * 3 if ratios else (float("nan"),) * 3
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(ratios), q[0], q[2]


@dataclass
class Transfers:
    """Throughput trials in rounds: per method and payload size, each round's trial time (seconds for
    the whole trial, in order). A ratio is framed throughput over the other method's, round by round."""

    times: dict[str, dict[int, list[float]]] = field(
        default_factory=lambda: {m: {} for m in TRANSFER_METHODS}
    )
    #: per method and size, each trial's TCP segments retransmitted (only where the kernel says)
    retrans: dict[str, dict[int, list[int]]] = field(
        default_factory=lambda: {m: {} for m in TRANSFER_METHODS}
    )

    def add(self, method: str, size: int, seconds: float, retransmitted: int | None = None) -> None:
        self.times[method].setdefault(size, []).append(seconds)
        if retransmitted is not None:
            self.retrans[method].setdefault(size, []).append(retransmitted)

    def retransmitted(self, method: str, size: int) -> float | None:
        """Mean TCP segments retransmitted per trial, or None where not counted."""
        counts = self.retrans[method].get(size)
        return statistics.mean(counts) if counts else None

    def best(self, method: str, size: int) -> float:
        """The fastest trial (seconds)."""
        return min(self.times[method][size])

    def ratios(self, method: str, size: int) -> list[float]:
        # throughput framed / other = the other's time / framed time, in the same round
        return [o / f for f, o in zip(self.times["framed"][size], self.times[method][size], strict=True)]

    def ratio(self, method: str, size: int) -> tuple[float, float, float]:
        """Median of the per-round ratios, with the interquartile range: (median, q1, q3)."""
        return _median_iqr(self.ratios(method, size))


_SNMP = "/proc/net/snmp"
#: set by --congestion-control for the copy of this benchmark it runs in a private network namespace
_NETNS_CC_ENV = "LOCALEXIT_BENCH_CC"


def tcp_retransmitted() -> int | None:
    """The kernel's count of TCP segments retransmitted (``Tcp: RetransSegs``) in this network namespace,
    or None where there is no such count (not Linux)."""
    try:
        with open(_SNMP) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("Tcp:") and values.startswith("Tcp:"):
            counts = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            if "RetransSegs" in counts:
                return int(counts["RetransSegs"])
    return None


async def round_trips(
    stream: FramedStream,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    zsock: Any,
    rounds: int,
    block: int,
) -> RoundTrips:
    """``rounds`` rounds of one block of ``block`` round trips per method, the order reversed every
    other round so that neither method always follows the other."""
    out = RoundTrips()
    for i in range(rounds):
        for method in RTT_METHODS if i % 2 == 0 else reversed(RTT_METHODS):
            if method == "framed":
                t = await framed_rtt(stream, block)
            elif method == "echo":
                t = await echo_rtt(reader, writer, block)
            else:
                t = zmq_rtt(zsock, block)
            out.blocks[method].append(t)
    return out


#: Where the round trips run: (the client's CPUs, the servers' CPUs). Left to the scheduler, a server
#: that shares the client's CPU answers in a context switch (an echo in ~27 µs here) and one on the
#: other CPU only after that CPU wakes from its halt (~85 µs); which happened differed from method to
#: method and from run to run, so the ratios measured the placement. Each layout pins every method alike.
#: "separate CPUs" is the nodes' layout (each its own process, a deployment each its own machine), and
#: the one the targets are judged on; "one CPU" shows the framing's whole Python cost.
LAYOUTS: dict[str, tuple[set[int], set[int]]] = {"separate CPUs": ({0}, {1}), "one CPU": ({0}, {0})}
JUDGED_LAYOUT = "separate CPUs"


@contextlib.contextmanager
def pinned(client: set[int], servers: set[int], server_pids: list[int]) -> Iterator[None]:
    """Pin this thread to ``client`` and each server process's main thread to ``servers``; restored
    after."""
    before = {pid: os.sched_getaffinity(pid) for pid in (0, *server_pids)}
    try:
        os.sched_setaffinity(0, client)
        for pid in server_pids:
            os.sched_setaffinity(pid, servers)
        yield
    finally:
        for pid, cpus in before.items():
            with contextlib.suppress(OSError):  # (a server that has exited)
                os.sched_setaffinity(pid, cpus)


def layouts() -> dict[str, tuple[set[int], set[int]]]:
    """The layouts this machine can pin: all of them with two CPUs or more, else none."""
    usable = os.sched_getaffinity(0)
    return {name: cpus for name, cpus in LAYOUTS.items() if cpus[0] | cpus[1] <= usable}


async def measure(
    ports: dict[str, int],
    trials: list[tuple[int, int]],
    rounds: int,
    rtt_rounds: int,
    rtt_block: int,
    server_pids: list[int],
) -> dict[str, Any]:
    """All transfers and round trips. Transfers: ``rounds`` rounds of one trial per method and size,
    the methods' order reversed every other round (:class:`Transfers`). Round trips: interleaved blocks
    (:func:`round_trips`). One event loop runs the framed and the echo clients (the same loop, uvloop if
    installed); raw and zmq block the loop while they run."""
    import zmq

    transfers = Transfers()
    rtt: dict[str, RoundTrips] = {}  # per layout
    awake: RoundTrips | None = None  # the round trips with idle CPUs kept out of sleep states, when root
    ctx = zmq.Context()
    zsock = ctx.socket(zmq.PAIR)
    zsock.connect(f"tcp://127.0.0.1:{ports['zmq']}")
    raw = socket.create_connection(("127.0.0.1", ports["raw"]))
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    stream = await open_stream("127.0.0.1", ports["framed"], node="cloud", timeout=600)
    stream.conn.handshake_done()
    reader, writer = await asyncio.open_connection("127.0.0.1", ports["echo"])
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await framed_rtt(stream, 1)  # the receiver lifts its handshake frame limit before any big frame
        for i in range(rounds):
            for k, p in trials:
                payload = np.ones(p, dtype=np.uint8)
                msg = Batch(
                    batch_id=1,
                    sample_ids=np.zeros(1, np.int64),
                    images=payload.reshape(1, 1, 1, p),
                    t_sent_ns=0,
                )
                for name in TRANSFER_METHODS if i % 2 == 0 else reversed(TRANSFER_METHODS):
                    before = tcp_retransmitted()
                    if name == "raw":
                        t = raw_trial(raw, k, payload)
                    elif name == "framed":
                        t = await framed_trial(stream, k, msg)
                    else:
                        t = zmq_trial(zsock, k, payload)
                    after = tcp_retransmitted()
                    transfers.add(name, p, t, None if before is None or after is None else after - before)
        for name, (client_cpus, server_cpus) in (layouts() or {"unpinned": (set(), set())}).items():
            with contextlib.ExitStack() as stack:
                if client_cpus:
                    stack.enter_context(pinned(client_cpus, server_cpus, server_pids))
                await round_trips(stream, reader, writer, zsock, 2, rtt_block)  # (warm-up, not kept)
                rtt[name] = await round_trips(stream, reader, writer, zsock, rtt_rounds, rtt_block)
                if name == JUDGED_LAYOUT:
                    with cpus_kept_awake() as held:
                        if held:  # again with no CPU sleeping (for the table, not the targets)
                            await round_trips(stream, reader, writer, zsock, 2, rtt_block)
                            awake = await round_trips(
                                stream, reader, writer, zsock, max(4, rtt_rounds // 4), rtt_block
                            )
        zsock.send(SPEC.pack(0, 0))
    finally:
        writer.close()
        raw.close()
        await stream.close()
        zsock.close(linger=0)
        ctx.term()
    return {"throughput": transfers, "rtt": rtt, "rtt_awake": awake}


class _LoopbackTransport(asyncio.Transport):
    """Joins two protocols in one event loop: a write is handed to the peer's protocol on the loop's
    next turn, as a socket read would be. No syscall, no other process, no CPU to wake."""

    def __init__(self, loop: asyncio.AbstractEventLoop, buffered: bool) -> None:
        super().__init__()
        self._loop = loop
        self._buffered = buffered
        self.peer: Any = None

    def write(self, data: Any) -> None:
        self._loop.call_soon(self._deliver, bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(bytes(b) for b in list_of_data))

    def _deliver(self, data: bytes) -> None:
        if self._buffered:
            buf = self.peer.get_buffer(-1)
            if len(data) <= len(buf):  # (the common case, kept to one copy: this stub is timed too)
                buf[: len(data)] = data
                self.peer.buffer_updated(len(data))
                return
            view = memoryview(data)
            while view:  # in the parts the protocol's buffers take, as a socket's reads would
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                self.peer.buffer_updated(n)
                view = view[n:]
                if view:
                    buf = self.peer.get_buffer(-1)
        else:
            self.peer.data_received(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _joined(
    loop: asyncio.AbstractEventLoop, a: asyncio.BaseProtocol, b: asyncio.BaseProtocol, buffered: bool
) -> tuple[_LoopbackTransport, _LoopbackTransport]:
    ta, tb = _LoopbackTransport(loop, buffered), _LoopbackTransport(loop, buffered)
    ta.peer, tb.peer = b, a
    a.connection_made(ta)
    b.connection_made(tb)
    return ta, tb


async def python_rtt(n: int) -> dict[str, float]:
    """Round trips with both ends in this process and loop, joined by :class:`_LoopbackTransport`: what
    the framing costs in Python (both sides, per round trip), against asyncio's streams doing the echo.
    Steady where the socket round trips are not, so a change to the framing's Python shows here."""
    from nodes.protocol import Connection
    from nodes.transport import _FrameProtocol

    loop = asyncio.get_running_loop()
    ca, cb = Connection(), Connection()
    ca.handshake_done()
    cb.handshake_done()
    pa, pb = _FrameProtocol(ca), _FrameProtocol(cb)
    _joined(loop, pa, pb, buffered=True)
    client, server = FramedStream(pa, "peer", 600), FramedStream(pb, "peer", 600)
    ra, rb = asyncio.StreamReader(), asyncio.StreamReader()
    qa, qb = asyncio.StreamReaderProtocol(ra), asyncio.StreamReaderProtocol(rb)
    ta, tb = _joined(loop, qa, qb, buffered=False)
    wa, wb = asyncio.StreamWriter(ta, qa, ra, loop), asyncio.StreamWriter(tb, qb, rb, loop)

    async def framed_server() -> None:
        while True:
            msg = await server.recv()
            assert isinstance(msg, ClockProbe)
            if msg.seq:
                return
            await server.send(ClockReply(0, msg.t_sent_ns, 0, 0))

    async def echo_server() -> None:
        while (data := await rb.readexactly(ECHO_SIZE))[0]:
            wb.write(data)
            await wb.drain()

    tasks = [loop.create_task(framed_server()), loop.create_task(echo_server())]
    best = {"framed": float("inf"), "echo": float("inf")}
    for _ in range(7):
        best["framed"] = min(best["framed"], await framed_rtt(client, n))
        best["echo"] = min(best["echo"], await echo_rtt(ra, wa, n))
    await client.send(ClockProbe(seq=1, t_sent_ns=0))
    wa.write(bytes(ECHO_SIZE))
    await asyncio.gather(*tasks)
    return best


def decode_cost(sizes: list[int], repeats: int) -> dict[int, float]:
    """Seconds to turn one complete frame body into a Batch message, as a node's connection does it
    (the receive copy itself excluded)."""
    out: dict[int, float] = {}
    bodies = BodyDecoder(Message)
    for p in sizes:
        msg = Batch(
            batch_id=1, sample_ids=np.zeros(1, np.int64), images=np.ones((1, 1, 1, p), np.uint8), t_sent_ns=0
        )
        dec = FrameDecoder()
        dec.receive_data(b"".join(FrameEncoder().encode(msg)))
        frame = dec.next_frame()
        assert frame is not None
        n = 200
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                bodies.decode(frame)
            best = min(best, (time.perf_counter() - t0) / n)
        out[p] = best
    return out


def _fmt_size(p: int) -> str:
    return f"{p // MIB} MiB" if p >= MIB else f"{p // KIB} KiB"


def throughput_table(
    transfers: Transfers, trials: list[tuple[int, int]], decode: dict[int, float]
) -> tuple[str, list[str]]:
    """One row per payload size: each method's best trial (GB/s), the framed throughput's ratios to raw
    and to pyzmq (median of the rounds, interquartile range) against the targets, and the decode cost;
    and the targets missed."""
    rows = []
    failures = []
    for k, p in trials:
        row: list[Any] = [_fmt_size(p), k]
        row += [f"{k * p / transfers.best(m, p) / 1e9:.2f}" for m in TRANSFER_METHODS]
        for method, limit in TRANSFER_TARGETS.items():
            median, low, high = transfers.ratio(method, p)
            cell = f"{median:.2f} ({low:.2f}–{high:.2f})"
            if method != "raw" or p >= RAW_TARGET_FROM:
                ok = median >= limit
                cell += " ok" if ok else " MISSED"
                if not ok:
                    failures.append(f"throughput {_fmt_size(p)}: {median:.2f}x {method} < {limit:g}x")
            row.append(cell)
        row.append(f"{decode[p] * 1e6:.1f}")
        counted = [transfers.retransmitted(m, p) for m in TRANSFER_METHODS]
        if any(c is not None for c in counted):
            row.append(" · ".join("?" if c is None else f"{c:.1f}" for c in counted))
        rows.append(row)
    headers = [
        "payload",
        "msgs",
        "raw GB/s",
        "framed GB/s",
        "zmq GB/s",
        f"framed / raw (≥{TRANSFER_TARGETS['raw']:g} from {_fmt_size(RAW_TARGET_FROM)})",
        f"framed / zmq (≥{TRANSFER_TARGETS['zmq']:g})",
        "decode µs",
    ]
    if any(len(row) > len(headers) for row in rows):
        headers.append("TCP retransmits per trial (raw · framed · zmq)")
    return tabulate(rows, headers=headers), failures


def rtt_table(rows: dict[str, RoundTrips], judged: str | None) -> tuple[str, list[str]]:
    """One row per layout: each method's best block (µs) and the framed round trip's ratios to the echo
    and to pyzmq (median of the rounds, interquartile range); targets only on the ``judged`` row, whose
    misses are also returned."""

    def ratio(rtt: RoundTrips, method: str) -> str:
        low, high = rtt.spread(method)
        return f"{rtt.ratio(method):.2f} ({low:.2f}–{high:.2f})"

    out = []
    failures = []
    for name, rtt in rows.items():
        target = ""
        if name == judged:
            verdicts = []
            for method, limit in RTT_TARGETS.items():
                r = rtt.ratio(method)
                verdicts.append(f"{method} {'ok' if r <= limit else 'MISSED'} (≤{limit:g})")
                if r > limit:
                    failures.append(f"round trip ({judged}) {r:.2f}x {method} > {limit:g}x")
            target = ", ".join(verdicts)
        out.append(
            [
                name,
                *(f"{rtt.best(m) * 1e6:.1f}" for m in RTT_METHODS),
                ratio(rtt, "echo"),
                ratio(rtt, "zmq"),
                target,
            ]
        )
    table = tabulate(
        out,
        headers=[
            "round trip: where",
            "framed µs",
            "echo µs",
            "zmq µs",
            "framed / echo",
            "framed / zmq",
            "targets",
        ],
    )
    return table, failures


def in_private_netns(cc: str, command: list[str]) -> int:
    """Run ``command`` in a network namespace of its own (``lx<pid>-probe``, removed after; a killed
    run's is found by ``python -m harness clean``) whose new TCP connections use the congestion control
    ``cc``; its exit status. 2, with one line on stderr, where that cannot be done."""
    from netem import cleanup

    def refuse(why: str) -> int:
        print(f"bench_transport: --congestion-control {cc}: {why}", file=sys.stderr)
        return 2

    if sys.platform != "linux" or os.geteuid() != 0:
        return refuse("needs root on Linux (it makes a network namespace)")
    available = available_congestion_controls()
    if not available:
        return refuse("cannot read the kernel's congestion controls")
    if cc not in available:
        return refuse(f"this kernel has {', '.join(available)}")
    prefix = f"{cleanup.FAMILY}{os.getpid():x}"
    ns = cleanup.ns_name(prefix, "probe")
    cleanup.register_owner(prefix)
    try:
        for cmd in (
            ["ip", "netns", "add", ns],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
            # (the namespace's own setting: the machine's stays as it is)
            ["ip", "netns", "exec", ns, sys.executable, "-c", f"open({TCP_CC_PROC!r}, 'w').write({cc!r})"],
        ):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError as exc:  # (no iproute2)
                return refuse(f"cannot run {cmd[0]}: {exc.strerror or exc}")
            if r.returncode:
                return refuse(f"{' '.join(cmd[:4])}: {(r.stderr.strip().splitlines() or ['failed'])[-1]}")
        env = {**os.environ, _NETNS_CC_ENV: cc}
        return subprocess.run(["ip", "netns", "exec", ns, *command], env=env, check=False).returncode
    finally:
        with contextlib.suppress(OSError):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        cleanup.unregister_owner(prefix)


# -- TLS: the framed transport with and without it ------------------------------------------------------

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_NODE_EXT = (
    "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
    "extendedKeyUsage=serverAuth,clientAuth\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
)


def make_pki(folder: str) -> dict[str, TlsFiles]:
    """A private CA and a certificate for each end, made with the ``openssl`` command (P-256 keys, as a
    deployment would make them; docs/hosts.md)."""

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    ca, ca_key = f"{folder}/ca.pem", f"{folder}/ca.key"
    openssl("req", "-x509", *_KEY, "-keyout", ca_key, "-out", ca, "-days", "1", "-subj", "/CN=bench ca",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")  # fmt: skip
    with open(f"{folder}/node.ext", "w", encoding="utf-8") as fh:
        fh.write(_NODE_EXT)
    out = {}
    for name in ("server", "client"):
        key, csr, cert = (f"{folder}/{name}{s}" for s in (".key", ".csr", ".pem"))
        openssl("req", *_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
                "-days", "1", "-extfile", f"{folder}/node.ext")  # fmt: skip
        out[name] = TlsFiles(cert=Path(cert), key=Path(key), ca=Path(ca))
    return out


async def measure_tls(
    ports: dict[str, int], client: TlsFiles, trials: list[tuple[int, int]], rounds: int, rtt_block: int
) -> tuple[dict[str, dict[int, list[float]]], dict[str, list[float]]]:
    """Throughput trials and round-trip blocks of the framed transport over plain TCP and over TLS, the
    two interleaved in each round (order reversed every other round)."""
    streams = {
        "plain": await open_stream("127.0.0.1", ports["plain"], node="cloud", timeout=600),
        "tls": await open_stream(
            "127.0.0.1", ports["tls"], node="cloud", timeout=600, tls=client.client_context()
        ),
    }
    times: dict[str, dict[int, list[float]]] = {m: {p: [] for _k, p in trials} for m in streams}
    rtts: dict[str, list[float]] = {m: [] for m in streams}
    try:
        for stream in streams.values():
            stream.conn.handshake_done()
            await framed_rtt(stream, 100)  # (warm: the first round trips set up buffers)
        for r in range(rounds):
            order = list(streams) if r % 2 == 0 else list(reversed(streams))
            for k, p in trials:
                msg = Batch(batch_id=0, sample_ids=np.zeros(1, np.int64),
                            images=np.zeros((1, 1, 1, p), np.uint8), t_sent_ns=0)  # fmt: skip
                for method in order:
                    times[method][p].append(await framed_trial(streams[method], k, msg))
            for method in order:
                rtts[method].append(await framed_rtt(streams[method], rtt_block))
    finally:
        for stream in streams.values():
            await stream.close()
    return times, rtts


def run_tls(quick: bool) -> int:
    """The cost of TLS on the framed transport: throughput and round trip with TLS over without, paired
    by round."""
    import tempfile

    sizes = (
        [4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB]
        if quick
        else [4 * KIB, 64 * KIB, 1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB]
    )
    per_trial = 16 * MIB if quick else 64 * MIB
    rounds = 5 if quick else 11
    rtt_block = 500 if quick else 1000
    trials = [(max(1, min(4096, per_trial // p)), p) for p in sizes]
    procs = []
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as folder:
        pki = make_pki(folder)
        try:
            plain_p, plain_pipe, plain_port = _start(framed_server)
            tls_p, tls_pipe, tls_port = _start(framed_server, pki["server"])
            procs = [(plain_p, plain_pipe), (tls_p, tls_pipe)]
            times, rtts = _run_loop(
                measure_tls({"plain": plain_port, "tls": tls_port}, pki["client"], trials, rounds, rtt_block)
            )
        finally:
            _stop_servers(procs)
    import ssl

    print(
        f"# transport benchmark, TLS, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{platform.node()} ({platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs), "
        f"Python {sys.version.split()[0]}, {loop_name()}, {ssl.OPENSSL_VERSION}, loopback, {rounds} rounds"
    )
    rows = []
    for k, p in trials:
        best = {m: k * p / min(times[m][p]) / 1e9 for m in times}
        ratio = _median_iqr([tl / pl for pl, tl in zip(times["plain"][p], times["tls"][p], strict=True)])
        rows.append([_fmt_size(p), k, f"{best['plain']:.2f}", f"{best['tls']:.2f}",
                     f"{1 / ratio[0]:.2f}x [{1 / ratio[2]:.2f}–{1 / ratio[1]:.2f}]"])  # fmt: skip
    print(tabulate(rows, headers=["payload", "msgs", "plain GB/s", "TLS GB/s", "TLS / plain"]))
    rtt = _median_iqr([tl / pl for pl, tl in zip(rtts["plain"], rtts["tls"], strict=True)])
    print(
        f"\nround trip (clock probe → reply): plain {min(rtts['plain']) * 1e6:.1f} µs, TLS "
        f"{min(rtts['tls']) * 1e6:.1f} µs (best block of {rtt_block}); TLS / plain {rtt[0]:.2f}x "
        f"[{rtt[1]:.2f}–{rtt[2]:.2f}] (median of paired rounds, interquartile range)"
    )
    print(
        "\n(mutual TLS, P-256 certificates of a private CA, the cipher OpenSSL negotiates; throughput "
        "ratios are TLS throughput over plain, paired by round; no target: the numbers say what TLS costs)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_transport", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and rounds (< ~30 s)")
    ap.add_argument(
        "--congestion-control",
        metavar="NAME",
        help="run in a private network namespace whose TCP connections use this congestion control "
        "(e.g. cubic, bbr; root, Linux): applies to every method alike, pyzmq's sockets included",
    )
    ap.add_argument(
        "--tls",
        action="store_true",
        help="only the cost of TLS: the framed transport with mutual TLS vs plain TCP (needs openssl)",
    )
    args = ap.parse_args(argv)
    if args.tls:
        return run_tls(args.quick)
    if args.congestion_control and os.environ.get(_NETNS_CC_ENV) != args.congestion_control:
        rest = sys.argv[1:] if argv is None else argv
        return in_private_netns(
            args.congestion_control, [sys.executable, "-m", "bench.bench_transport", *rest]
        )
    sizes = (
        [4 * KIB, 64 * KIB, 1 * MIB, 16 * MIB, 64 * MIB]
        if args.quick
        else [4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1 * MIB, 4 * MIB, 16 * MIB, 64 * MIB]
    )
    per_trial = 32 * MIB if args.quick else 128 * MIB
    rounds = 5 if args.quick else 15  # of throughput trials
    rtt_rounds = 10 if args.quick else 40
    rtt_block = 1000
    trials = [(max(1, min(4096, per_trial // p)), p) for p in sizes]

    procs = []
    try:
        raw_p, raw_pipe, raw_port = _start(raw_server)
        fr_p, fr_pipe, fr_port = _start(framed_server)
        ec_p, ec_pipe, ec_port = _start(echo_server)
        zm_p, zm_pipe, zm_port = _start(zmq_server)
        procs = [(raw_p, raw_pipe), (fr_p, fr_pipe), (ec_p, ec_pipe), (zm_p, zm_pipe)]
        res = _run_loop(
            measure(
                {"raw": raw_port, "framed": fr_port, "echo": ec_port, "zmq": zm_port},
                trials,
                rounds,
                rtt_rounds,
                rtt_block,
                [p.pid for p in (fr_p, ec_p, zm_p) if p.pid is not None],
            )
        )
        transfers: Transfers = res["throughput"]
        rtt: dict[str, RoundTrips] = res["rtt"]
        awake: RoundTrips | None = res["rtt_awake"]
        decode = decode_cost(sizes, 5)
        in_process = _run_loop(python_rtt(10 * rtt_block))
    finally:
        _stop_servers(procs)

    print(
        f"# transport benchmark, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"{platform.node()} ({platform.processor() or platform.machine()}, {mp.cpu_count()} CPUs), "
        f"Python {sys.version.split()[0]}, {loop_name()}, loopback, {rounds} rounds of transfers, "
        f"TCP congestion control {congestion_control() or 'unknown'}"
        + (
            " (set in a private network namespace)"
            if args.congestion_control
            else " (this machine's default)"
        )
    )
    table, failures = throughput_table(transfers, trials, decode)
    print(table)
    print(
        f"\n(GB/s: each method's best of {rounds} trials; ratios: framed throughput over the other's, the "
        f"median over {rounds} rounds of the same round's trials, interquartile range in brackets; "
        "TCP retransmits: the kernel's count of segments sent again during each trial, the mean over the "
        "trials; on loopback they are segments that arrived out of order and were taken for lost)"
    )
    flat = max(decode.values()) / min(decode.values())
    print(
        f"\ndecode cost 64 MiB / 4 KiB: {decode[sizes[-1]] / decode[sizes[0]]:.2f}x "
        f"(max/min over sizes {flat:.2f}x; flat = zero-copy)"
    )
    judged = JUDGED_LAYOUT if JUDGED_LAYOUT in rtt else next(iter(rtt))
    layout_rows = dict(rtt)
    if awake is not None:
        layout_rows[f"{JUDGED_LAYOUT}, CPUs kept awake"] = awake
    table, rtt_failures = rtt_table(layout_rows, judged)
    failures += rtt_failures
    print()
    print(table)
    print(
        f"\n(framed: clock probe → clock reply; echo: raw asyncio echo of {ECHO_SIZE} B; zmq: pyzmq PAIR "
        f"ping-pong of {ECHO_SIZE} B. µs: the best block of {rtt_block} round trips; ratios: the median "
        f"over {rtt_rounds} rounds of interleaved blocks, interquartile range in brackets. Where: this "
        "process and the servers' pinned to CPUs as named; 'CPUs kept awake': PM QoS, as root, for "
        "comparison only)"
    )
    print(
        f"\nround trip in one process, both ends joined by a transport stub (the Python each side runs; "
        f"no syscalls, nothing to wake): framed {in_process['framed'] * 1e6:.2f} µs, asyncio streams echo "
        f"{in_process['echo'] * 1e6:.2f} µs ({in_process['framed'] / in_process['echo']:.2f}x)"
    )
    if decode[sizes[-1]] / decode[sizes[0]] > 2.0:
        failures.append("decode cost grows with payload size")
    print("\n" + ("all targets met" if not failures else "targets missed: " + "; ".join(failures)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
