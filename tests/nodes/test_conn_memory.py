"""What a connection costs a node: receive buffers that start small, grow with the traffic and shrink when
it stops, a cap on connections that have not completed the handshake, a handshake timeout, and a real
cloud node's memory under a few hundred idle connections and a flood of silent ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodes import (
    HANDSHAKE_MAX_FRAME_SIZE,
    Batch,
    ClockProbe,
    ClockReply,
    Connection,
    FrameDecoder,
    FramedStream,
    Hello,
    Listener,
    PeerError,
    Ready,
    decode_frame,
    encode_frame_bytes,
    open_stream,
    transport,
)
from nodes.codec import LENGTH_PREFIX
from nodes.messages import PROTOCOL_VERSION
from nodes.protocol import NEED_DATA

KIB = 1024
MIB = 1024 * KIB

# -- the receive buffer of the sans-IO decoder ------------------------------------------------------------


def _small_frames(n: int, size: int = 150) -> tuple[bytes, list[np.ndarray]]:
    payloads = [np.full(size, i % 251, np.uint8) for i in range(n)]
    return b"".join(encode_frame_bytes({"t": p}) for p in payloads), payloads


def _read_all(
    get_buffer: Callable[[int], memoryview],
    buffer_updated: Callable[[int], int],
    data: bytes,
    cap: int = 1 << 30,
    each: Callable[[int], None] | None = None,
) -> list[int]:
    """Feed ``data`` as a socket would, each read as large as the buffer lent (at most ``cap``); the
    buffer sizes lent, read by read. ``each(i)`` runs before read i."""
    sizes: list[int] = []
    pos = 0
    while pos < len(data):
        if each is not None:
            each(len(sizes))
        buf = get_buffer(-1)
        sizes.append(len(buf))
        n = min(len(buf), len(data) - pos, cap)
        buf[:n] = data[pos : pos + n]
        buffer_updated(n)
        pos += n
    return sizes


def _taken(dec: FrameDecoder) -> list[np.ndarray]:
    out = []
    while (frame := dec.next_frame()) is not None:
        out.append(decode_frame(frame)["t"])
    return out


def test_receive_buffer_starts_small_and_grows_only_while_reads_fill_it() -> None:
    dec = FrameDecoder()
    first = len(dec.get_buffer(-1))
    assert first <= 8 * KIB  # what an idle connection holds
    assert dec.retained_bytes == first
    # one frame per read (a request, a reply): the buffer never fills, it stays as it is
    data, payloads = _small_frames(40)
    one = len(data) // 40
    assert _read_all(dec.get_buffer, dec.buffer_updated, data, cap=one) == [first] * 40
    assert len(_taken(dec)) == 40
    # a peer streaming faster than we read fills every read: the buffer doubles until it takes many
    # frames at once, and every frame still arrives whole and in order
    data, payloads = _small_frames(4000)
    sizes = _read_all(dec.get_buffer, dec.buffer_updated, data)
    got = _taken(dec)
    assert len(got) == len(payloads)
    for a, b in zip(got, payloads, strict=True):
        np.testing.assert_array_equal(a, b)
    lent = [n for n in sizes if n >= first]  # (the others: the rest of a frame a read cut in two)
    assert lent == sorted(lent) and lent[0] == first
    assert 64 * KIB <= max(lent) <= 1 * MIB


def test_released_buffers_shrink_back_and_receiving_goes_on() -> None:
    dec = FrameDecoder()
    first = dec.retained_bytes
    data, _ = _small_frames(4000)
    _read_all(dec.get_buffer, dec.buffer_updated, data)
    _taken(dec)
    big = np.arange(3 * MIB, dtype=np.uint8)
    held = []
    for _ in range(3):  # large bodies leave recycled buffers behind
        dec.receive_data(encode_frame_bytes({"t": big}))
        held.append(_taken(dec)[0])
    del held[1:]
    assert dec.retained_bytes >= 3 * MIB
    dec.release_buffers()
    assert dec.retained_bytes == first
    np.testing.assert_array_equal(held[0], big)  # what the caller still holds is untouched
    data, _ = _small_frames(500)
    _read_all(dec.get_buffer, dec.buffer_updated, data + encode_frame_bytes({"t": big[::-1].copy()}))
    got = _taken(dec)
    assert len(got) == 501
    np.testing.assert_array_equal(got[-1], big[::-1])
    np.testing.assert_array_equal(held[0], big)


def test_before_the_handshake_the_buffer_grows_no_larger_than_a_handshake_frame() -> None:
    conn = Connection()  # a stranger's connection: small frames only until handshake_done
    data, _ = _small_frames(8000)
    sizes = _read_all(conn.get_buffer, conn.buffer_updated, data)
    assert max(sizes) <= HANDSHAKE_MAX_FRAME_SIZE + LENGTH_PREFIX.size
    conn.handshake_done()
    sizes = _read_all(conn.get_buffer, conn.buffer_updated, data)
    assert max(sizes) > HANDSHAKE_MAX_FRAME_SIZE + LENGTH_PREFIX.size


_MIXED = [10, 150, 5000, 70_000, 1_200_000]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from(_MIXED), min_size=1, max_size=8),
    st.integers(min_value=1, max_value=400_000),
    st.sets(st.integers(min_value=0, max_value=300), max_size=30),
)
def test_fuzz_releasing_between_any_two_reads_never_changes_what_arrives(
    sizes: list[int], cap: int, release_at: set[int]
) -> None:
    rng = np.random.default_rng(len(sizes) * 1000 + cap % 1000)
    payloads = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    data = b"".join(encode_frame_bytes({"t": p}) for p in payloads)
    cap = max(cap, len(data) // 300)  # (at most a few hundred reads per example)
    dec = FrameDecoder()
    got: list[np.ndarray] = []

    def between(i: int) -> None:
        got.extend(_taken(dec))
        if i in release_at:
            dec.release_buffers()

    _read_all(dec.get_buffer, dec.buffer_updated, data, cap=cap, each=between)
    got.extend(_taken(dec))
    assert len(got) == len(payloads)
    for a, b in zip(got, payloads, strict=True):
        np.testing.assert_array_equal(a, b)


# -- the transport: idle release, the pre-handshake cap, the handshake timeout ------------------------------


def _ready() -> Ready:
    return Ready(role="cloud", version=PROTOCOL_VERSION, model="mem", exit=1)


async def _serve(stream: FramedStream) -> None:
    """A server: hello -> ready (the handshake), then a clock reply to each probe until the peer leaves."""
    msg = await stream.recv()
    assert isinstance(msg, Hello)
    stream.conn.handshake_done()
    await stream.send(_ready())
    with contextlib.suppress(PeerError):
        while True:
            probe = await stream.recv()
            assert isinstance(probe, ClockProbe)
            await stream.send(ClockReply(probe.seq, probe.t_sent_ns, 0, 0))


@contextlib.asynccontextmanager
async def _listening(
    handler: Callable[[FramedStream], object], **kw: object
) -> AsyncIterator[tuple[Listener, int]]:
    """A listener on loopback and its port."""
    listener = Listener(handler, node="cloud", **kw)  # type: ignore[arg-type]
    _, port = await listener.start("127.0.0.1", 0)
    try:
        yield listener, port
    finally:
        await listener.close()


async def _closed_by_peer(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the other end closes (EOF or reset) within ``within`` s; False if it stays open."""
    try:
        return await asyncio.wait_for(reader.read(1), within) == b""
    except asyncio.TimeoutError:  # (before OSError: TimeoutError is one)
        return False
    except OSError:  # reset
        return True


async def _eventually(condition: Callable[[], bool], within: float) -> bool:
    """Whether ``condition`` holds, polled until it does or ``within`` seconds have passed."""
    for _ in range(int(within / 0.02)):
        if condition():
            return True
        await asyncio.sleep(0.02)
    return condition()


async def _hello(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Ready:
    writer.write(b"".join(Connection().send(Hello(role="test"))))
    conn = Connection()
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        assert data, "closed during the handshake"
        conn.receive_data(data)
        if (ev := conn.next_event()) is not NEED_DATA:
            assert isinstance(ev, Ready)
            return ev


async def test_a_quiet_connection_gives_back_its_grown_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transport, "IDLE_RELEASE_S", 0.1)
    accepted: asyncio.Queue[FramedStream] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(stream: FramedStream) -> None:
        stream.conn.handshake_done()
        await accepted.put(stream)
        await done.wait()

    async with _listening(handler, timeout=10.0) as (_, port):
        client = await open_stream("127.0.0.1", port, node="cloud", timeout=10.0)
        client.conn.handshake_done()
        try:
            server = await asyncio.wait_for(accepted.get(), 5)
            images = np.arange(2 * MIB, dtype=np.uint8).reshape(1, 1, 1, -1)
            for i in range(3):
                await client.send(Batch(i, np.array([i]), images, 0))
                assert isinstance(await server.recv(), Batch)
            assert server.conn.retained_bytes >= 2 * MIB  # kept for the next large frame
            waiting = asyncio.ensure_future(server.recv())
            # nothing arrives for a while: the buffers are given back
            assert await _eventually(lambda: server.conn.retained_bytes <= 16 * KIB, 10.0)
            await client.send(Batch(9, np.array([9]), images, 0))
            got = await asyncio.wait_for(waiting, 5)
            assert isinstance(got, Batch) and got.batch_id == 9
            np.testing.assert_array_equal(got.images, images)
        finally:
            done.set()
            await client.close()


async def test_connections_over_the_pre_handshake_cap_are_closed_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="nodes.transport")
    cap = 4
    async with _listening(_serve, timeout=30.0, max_pending_handshakes=cap) as (listener, port):
        opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        try:
            for _ in range(cap):
                opened.append(await asyncio.open_connection("127.0.0.1", port))
            assert await _eventually(lambda: listener.connections == cap, 10.0)
            extra = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            opened.extend(extra)
            for reader, _ in extra:
                assert await _closed_by_peer(reader, 5.0), "a connection over the cap must be closed"
            assert any("refusing connections" in r.getMessage() for r in caplog.records)
            for reader, _ in opened[:cap]:  # those under the cap are still waiting for their hello
                assert not await _closed_by_peer(reader, 0.2)
            # a connection that completes its handshake no longer counts: there is room for a new one
            await _hello(*opened[0])
            late = await asyncio.open_connection("127.0.0.1", port)
            opened.append(late)
            assert isinstance(await _hello(*late), Ready)
        finally:
            for _, writer in opened:
                writer.close()


async def test_a_handshake_that_takes_too_long_is_closed(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="nodes.transport")
    async with _listening(_serve, timeout=30.0, handshake_timeout=0.5) as (_, port):
        silent = await asyncio.open_connection("127.0.0.1", port)
        partial = await asyncio.open_connection("127.0.0.1", port)
        prompt = await asyncio.open_connection("127.0.0.1", port)
        try:
            hello = b"".join(Connection().send(Hello(role="test")))
            partial[1].write(hello[: len(hello) // 2])  # half a hello, then nothing
            await _hello(*prompt)
            assert await _closed_by_peer(silent[0], 10.0)
            assert await _closed_by_peer(partial[0], 10.0)
            assert any("no handshake within 0.5 s" in r.getMessage() for r in caplog.records)
            # the connection that completed its handshake in time is served long after the timeout
            await asyncio.sleep(0.6)
            reader, writer = prompt
            writer.write(b"".join(Connection().send(ClockProbe(seq=7, t_sent_ns=1))))
            conn = Connection()
            conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
            reply = conn.next_event()
            assert isinstance(reply, ClockReply) and reply.seq == 7
        finally:
            for _, writer in (silent, partial, prompt):
                writer.close()


# -- a real cloud node under many idle connections -------------------------------------------------------

IDLE = 400  # handshaken connections that then send nothing (all from this process, to 127.0.0.1)
FLOOD = 300  # connections that never send a byte
TOKEN = "conn-memory-token"


@pytest.fixture
def cloud_node(tiny_checkpoint: Path, tmp_path: Path) -> Iterator[tuple[psutil.Process, int]]:
    """A cloud node program requiring a token (its stderr goes to a file: it logs every connection)."""
    with open(tmp_path / "cloud.log", "w") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nodes.cloud",
                "--checkpoint",
                str(tiny_checkpoint),
                "--exit",
                "2",
                "--threads",
                "1",
                "--token",
                TOKEN,
            ],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
        )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        line = proc.stdout.readline() if ready else ""
        assert line.startswith("READY "), (line, (tmp_path / "cloud.log").read_text()[-2000:])
        yield psutil.Process(proc.pid), int(line.rsplit(":", 1)[1])
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=10)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _handshake(sock: socket.socket) -> None:
    sock.sendall(b"".join(Connection().send(Hello(role="test", token=TOKEN))))
    conn = Connection()
    while (ev := conn.next_event()) is NEED_DATA:
        data = sock.recv(65536)
        assert data, "the node closed a connection during its handshake"
        conn.receive_data(data)
    assert isinstance(ev, Ready)


def _open_idle(port: int, n: int) -> list[socket.socket]:
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            socks.append(_connect(port))
            _handshake(socks[-1])
    except BaseException:
        _close(socks)
        raise
    return socks


def _close(socks: list[socket.socket]) -> None:
    for s in socks:
        s.close()
    socks.clear()


def _wait_connections(node: psutil.Process, n: int = 0) -> None:
    """Until the node holds ``n`` connections besides its listening socket (bounded)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(c.status != psutil.CONN_LISTEN for c in node.net_connections(kind="tcp")) == n:
            return
        time.sleep(0.1)
    raise AssertionError(f"the node still holds more than {n} connections a minute after the rest closed")


def _rss(node: psutil.Process) -> int:
    time.sleep(0.3)  # (the node finishes with what it was just sent)
    return int(node.memory_info().rss)


def _closed_by_node(socks: list[socket.socket], expect: int) -> int:
    """How many of ``socks`` the node has closed, waiting (bounded) until ``expect`` are."""
    closed: set[int] = set()
    deadline = time.monotonic() + 20
    while len(closed) < expect and time.monotonic() < deadline:
        readable, _, _ = select.select([s for s in socks if s.fileno() not in closed], [], [], 0.5)
        for s in readable:
            try:
                if s.recv(1) == b"":
                    closed.add(s.fileno())
            except OSError:
                closed.add(s.fileno())
    return len(closed)


@pytest.mark.slow
def test_idle_connections_cost_a_node_little_and_a_flood_is_capped(
    cloud_node: tuple[psutil.Process, int],
) -> None:
    node, port = cloud_node
    _close(_open_idle(port, 50))  # what the first connections allocate once (code paths, tables)
    _wait_connections(node)
    base = _rss(node)
    socks: list[socket.socket] = []
    flood: list[socket.socket] = []
    try:
        socks = _open_idle(port, IDLE)
        with_idle = _rss(node)
        per_connection = (with_idle - base) / IDLE
        # (a full-size receive buffer per connection made this about 260 KiB)
        assert per_connection < 48 * KIB, f"{per_connection / KIB:.1f} KiB per idle connection"

        # a flood of connections that never send a byte: all but MAX_PENDING_HANDSHAKES are closed
        flood = [_connect(port) for _ in range(FLOOD)]
        refused = _closed_by_node(flood, FLOOD - transport.MAX_PENDING_HANDSHAKES)
        assert refused >= FLOOD - transport.MAX_PENDING_HANDSHAKES
        with_flood = _rss(node)
        assert with_flood - with_idle < transport.MAX_PENDING_HANDSHAKES * 64 * KIB
        # once the flood has gone the node serves whoever shows the token again
        _close(flood)
        _wait_connections(node, IDLE)
        socks.append(_connect(port))
        _handshake(socks[-1])
    finally:
        _close(socks)
        _close(flood)
    _wait_connections(node)
    after = _rss(node)
    # (the node kept all of it: 400 idle connections left about 100 MiB behind)
    assert after - base < IDLE * 32 * KIB, f"{(after - base) / MIB:.1f} MiB more than before the connections"
    # what the heap kept is reused by the next connections rather than added to
    _close(_open_idle(port, IDLE))
    _wait_connections(node)
    again = _rss(node)
    assert again - after < IDLE * 8 * KIB, f"{(again - after) / MIB:.1f} MiB more after a second round"
