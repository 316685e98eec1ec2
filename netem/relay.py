"""A user-space TCP relay for loopback mode (no namespaces): rate and one-way delay on the byte stream.

It listens on 127.0.0.1, and for each accepted connection opens one to the target and copies both
directions. Each chunk is charged its bytes plus the TCP/IP headers it would carry on a 1500-byte MTU
link (52 bytes per 1448), serialised at the rate behind the chunks before it, and delivered one delay
later (plus uniform jitter, order kept). It cannot delay the TCP handshake or ACKs, nor drop packets:
the testbed reports those as not applied.

Run as ``python -m netem.run_relay --label L --target HOST:PORT [--rate-bps R] [--delay-ns D] ...``; it
prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netem import _proc

if TYPE_CHECKING:  # the child process must not import netem.spec: it pulls in models (torch)
    from pathlib import Path

    from netem.spec import LinkSpec

HEADER_BYTES = 52
"""IPv4 (20) + TCP with timestamps (32) per segment."""
SEGMENT_PAYLOAD = 1448
"""Payload of a full segment at MTU 1500 with timestamps."""
CHUNK = 16 * 1024
"""Read size: small enough that rate pacing stays smooth at 1 mbit (≈130 ms per chunk)."""
MIN_BUFFER = 64 * 1024
"""Bytes held per direction before the relay stops reading (back-pressure to the sender)."""
CONNECT_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 3600.0
"""A connection with no traffic either way for an hour is dead; a run never idles that long."""
WRITE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class RelayParams:
    rate_bps: int | None = None
    delay_ns: int = 0
    jitter_ns: int = 0
    seed: int = 0

    @classmethod
    def from_spec(cls, spec: LinkSpec, seed: int = 0) -> RelayParams:
        return cls(spec.rate_bps, round(spec.delay_s * 1e9), round(spec.jitter_s * 1e9), seed)

    def buffer_bytes(self) -> int:
        if self.rate_bps is None:
            return MIN_BUFFER
        return max(MIN_BUFFER, int(self.rate_bps / 8 * 2 * (self.delay_ns + self.jitter_ns) / 1e9))


def wire_bytes(n: int) -> int:
    """Bytes on the wire for ``n`` payload bytes: headers of ⌈n/1448⌉ segments added."""
    return n + HEADER_BYTES * -(-n // SEGMENT_PAYLOAD)


class _Pipe:
    """One direction: a reader task that schedules chunks and a writer task that delivers them on time."""

    def __init__(self, params: RelayParams, rng: random.Random) -> None:
        self.p = params
        self.rng = rng
        self.queue: collections.deque[tuple[int, bytes]] = collections.deque()
        self.queued = 0
        self.changed = asyncio.Event()
        self.ser_end = 0
        self.last_release = 0
        self.eof = False

    def schedule(self, now: int, data: bytes) -> None:
        p = self.p
        start = max(now, self.ser_end)
        self.ser_end = start
        if p.rate_bps is not None:
            self.ser_end = start + round(wire_bytes(len(data)) * 8 * 1e9 / p.rate_bps)
        d = p.delay_ns
        if p.jitter_ns:
            d = max(0, d + round(self.rng.uniform(-p.jitter_ns, p.jitter_ns)))
        release = max(self.ser_end + d, self.last_release)
        self.last_release = release
        self.queue.append((release, data))
        self.queued += len(data)
        self.changed.set()

    async def read_side(self, reader: asyncio.StreamReader) -> None:
        limit = self.p.buffer_bytes()
        try:
            while True:
                while self.queued >= limit:
                    self.changed.clear()
                    await self.changed.wait()
                data = await asyncio.wait_for(reader.read(CHUNK), IDLE_TIMEOUT_S)
                if not data:
                    return
                self.schedule(time.monotonic_ns(), data)
        finally:
            self.eof = True
            self.changed.set()

    async def write_side(self, writer: asyncio.StreamWriter) -> None:
        while True:
            if not self.queue:
                if self.eof:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                self.changed.clear()
                await self.changed.wait()
                continue
            release, data = self.queue[0]
            wait = (release - time.monotonic_ns()) / 1e9
            if wait > 0:
                # call_at-based sleep; the event loop wakes within about a millisecond
                await asyncio.sleep(wait)
            self.queue.popleft()
            self.queued -= len(data)
            self.changed.set()
            writer.write(data)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)


async def _serve_one(
    params: RelayParams,
    target: tuple[str, int],
    rng: random.Random,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT_S)
    except (OSError, asyncio.TimeoutError):
        writer.close()
        return
    fwd, back = _Pipe(params, rng), _Pipe(params, rng)
    tasks = [
        asyncio.create_task(c)
        for c in (fwd.read_side(reader), fwd.write_side(up_w), back.read_side(up_r), back.write_side(writer))
    ]
    try:
        await asyncio.gather(*tasks)
    except (OSError, asyncio.TimeoutError):
        pass  # a peer went away or went silent: close both sides
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (writer, up_w):
            w.close()
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                await asyncio.wait_for(w.wait_closed(), 1.0)


async def serve(params: RelayParams, target: tuple[str, int], port: int = 0) -> None:
    rng = random.Random(params.seed)
    server = await asyncio.start_server(lambda r, w: _serve_one(params, target, rng, r, w), "127.0.0.1", port)
    sock_port = server.sockets[0].getsockname()[1]
    print(f"READY {sock_port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with server:
        await stop.wait()


def start(
    params: RelayParams,
    target: tuple[str, int],
    *,
    label: str,
    log: Path | None = None,
    timeout_s: float = 10.0,
) -> tuple[subprocess.Popen[str], int]:
    """Start an owned relay child (dies with its parent); returns it and the port it listens on.

    ``log``: the file its stderr is appended to; without it, the child writes to our stderr."""
    argv = [
        sys.executable,
        "-m",
        "netem.run_relay",
        "--label",
        label,
        "--target",
        f"{target[0]}:{target[1]}",
        "--delay-ns",
        str(params.delay_ns),
        "--jitter-ns",
        str(params.jitter_ns),
        "--seed",
        str(params.seed),
    ]
    if params.rate_bps is not None:
        argv += ["--rate-bps", str(params.rate_bps)]
    with open(log, "ab") if log is not None else contextlib.nullcontext() as stderr:
        # (the child has its own copy of the log's descriptor; ours closes once it is started)
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=_proc.die_with_parent,  # noqa: PLW1509 - see die_with_parent
        )
    port = int(_proc.wait_ready(proc, f"relay {label}", timeout_s, log))
    return proc, port


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.run_relay", description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True)
    ap.add_argument("--target", required=True, help="HOST:PORT to forward to")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--rate-bps", type=int, default=None)
    ap.add_argument("--delay-ns", type=int, default=0)
    ap.add_argument("--jitter-ns", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    if not host or not port.isdigit():
        print(f"error: --target {args.target!r} must be HOST:PORT", file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the owner stops us, not the terminal's Ctrl-C
    params = RelayParams(args.rate_bps, args.delay_ns, args.jitter_ns, args.seed)
    asyncio.run(serve(params, (host, int(port)), args.port))
    return 0
