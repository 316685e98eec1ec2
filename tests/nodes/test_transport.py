"""The asyncio transport over real loopback sockets: large frames, buffer recycling, read deadlines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from nodes import (
    Batch,
    ClockProbe,
    ClockReply,
    FramedStream,
    Listener,
    NodeTimeout,
    PeerError,
    RemoteProtocolError,
    open_stream,
    transport,
)

MIB = 1024 * 1024


@contextlib.asynccontextmanager
async def _listening() -> AsyncIterator[tuple[int, asyncio.Queue[FramedStream]]]:
    """A listener on loopback: (its port, a queue of the server streams it accepts, the handshake frame
    limit lifted); each stream stays open until the block ends."""
    accepted: asyncio.Queue[FramedStream] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(stream: FramedStream) -> None:
        stream.conn.handshake_done()
        await accepted.put(stream)
        await done.wait()

    listener = Listener(handler, node="cloud", timeout=5.0)
    _, port = await listener.start("127.0.0.1", 0)
    try:
        yield port, accepted
    finally:
        done.set()
        await listener.close()


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """A connected (client, server) pair of streams with the handshake frame limit lifted."""
    async with _listening() as (port, accepted):
        client = await open_stream("127.0.0.1", port, node="cloud", timeout=5.0)
        client.conn.handshake_done()
        try:
            server = await asyncio.wait_for(accepted.get(), 5.0)
            yield client, server
        finally:
            await client.close()


def _batch(i: int, size: int) -> Batch:
    images = (np.arange(size, dtype=np.int64) * (i + 1) % 251).astype(np.uint8).reshape(1, 1, 1, size)
    return Batch(batch_id=i, sample_ids=np.array([i], np.int64), images=images, t_sent_ns=i)


async def test_large_frames_arrive_intact_while_earlier_ones_are_still_held(
    pair: tuple[FramedStream, FramedStream],
) -> None:
    client, server = pair
    sent = [_batch(i, 3 * MIB + 5) for i in range(4)]  # large and not a multiple of the alignment
    held = []
    for msg in sent:
        await client.send(msg)
        got = await server.recv()
        assert isinstance(got, Batch)
        held.append(got)  # the receiver must not recycle a buffer these still view
    for msg, got in zip(sent, held, strict=True):
        assert got.batch_id == msg.batch_id
        np.testing.assert_array_equal(got.images, msg.images)


async def test_recv_times_out_after_earlier_receives_share_the_deadline_timer(
    pair: tuple[FramedStream, FramedStream],
) -> None:
    client, server = pair
    for i in range(3):
        await client.send(ClockProbe(seq=i, t_sent_ns=0))
        assert isinstance(await server.recv(timeout=5.0), ClockProbe)
    t0 = time.monotonic()
    with pytest.raises(NodeTimeout, match=r"timed out after 0\.2 s"):
        await server.recv(timeout=0.2)  # shorter than the timer armed by the receives above
    assert 0.15 <= time.monotonic() - t0 < 2.0


async def test_recv_waits_for_a_late_message_within_its_timeout(
    pair: tuple[FramedStream, FramedStream],
) -> None:
    client, server = pair
    with pytest.raises(NodeTimeout):
        await server.recv(timeout=0.05)  # arms the timer early; the next wait must outlive it

    async def late() -> None:
        await asyncio.sleep(0.3)
        await client.send(ClockReply(seq=1, t_sent_ns=0, t_recv_ns=0, t_reply_ns=0))

    task = asyncio.create_task(late())
    got = await server.recv(timeout=5.0)
    await task
    assert isinstance(got, ClockReply) and got.seq == 1


async def test_a_burst_of_small_messages_arrives_whole_and_in_order(
    pair: tuple[FramedStream, FramedStream],
) -> None:
    client, server = pair
    for seq in range(500):  # back to back: corked and written together
        await client.send(ClockProbe(seq=seq, t_sent_ns=seq))
    big = Batch(
        batch_id=0, sample_ids=np.arange(1), images=np.ones((1, 1, 1, 2 * MIB), np.uint8), t_sent_ns=0
    )
    await client.send(big)  # a large frame must not overtake the corked small ones
    await client.send(ClockProbe(seq=500, t_sent_ns=0))
    for seq in range(500):
        got = await server.recv()
        assert isinstance(got, ClockProbe) and got.seq == seq
    assert isinstance(await server.recv(), Batch)
    last = await server.recv()
    assert isinstance(last, ClockProbe) and last.seq == 500


async def test_a_reply_goes_out_at_once_even_right_after_our_previous_write(
    pair: tuple[FramedStream, FramedStream], monkeypatch: pytest.MonkeyPatch
) -> None:
    # In a ping-pong faster than the cork window every reply followed our previous write within it,
    # and was corked; a frame received since then makes the next write an answer, sent at once.
    monkeypatch.setattr(transport, "_CORK_WINDOW_S", 60.0)
    client, server = pair
    await server.send(ClockProbe(seq=0, t_sent_ns=0))  # our previous write, just now
    await client.send(ClockProbe(seq=1, t_sent_ns=0))
    assert isinstance(await server.recv(timeout=2.0), ClockProbe)
    await server.send(ClockReply(seq=1, t_sent_ns=0, t_recv_ns=0, t_reply_ns=0))
    assert server._p.corked == []  # written to the transport, nothing held back
    await server.send(ClockReply(seq=2, t_sent_ns=0, t_recv_ns=0, t_reply_ns=0))
    assert len(server._p.corked) == 1  # a second frame right after it is corked as before
    assert isinstance(await client.recv(timeout=2.0), ClockProbe)
    for seq in (1, 2):
        got = await client.recv(timeout=2.0)
        assert isinstance(got, ClockReply) and got.seq == seq


async def test_a_lone_message_is_written_at_once_not_corked(pair: tuple[FramedStream, FramedStream]) -> None:
    # A reply or a batch's predictions must leave before the node goes on computing (a corked frame
    # would wait until the event loop next ran and inflate the procedure times).
    client, server = pair
    await asyncio.sleep(0.001)  # the previous write is long past
    await client.send(ClockProbe(seq=1, t_sent_ns=0))
    assert client._p.corked == []  # written to the transport, nothing held back
    got = await server.recv(timeout=2.0)
    assert isinstance(got, ClockProbe) and got.seq == 1


@pytest.mark.parametrize(
    ("sent", "close", "error", "match"),
    [
        (b"", True, PeerError, "closed the connection"),  # a clean close between frames
        (b"\x00\x00\x01\x00abc", True, RemoteProtocolError, "closed in the middle of a frame"),
        (b"\x00\x00\x00\x02ab", False, RemoteProtocolError, "too short to hold a header length"),
    ],
)
async def test_a_waiting_receive_learns_at_once_what_ended_the_stream(
    sent: bytes, close: bool, error: type[Exception], match: str
) -> None:
    # A receive with nothing queued waits without asking the connection; whatever ends the wait -- a
    # close, a truncated frame, bytes that are no frame -- must still surface then, not at the timeout.
    async with _listening() as (port, accepted):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            server = await asyncio.wait_for(accepted.get(), 5.0)
            waiting = asyncio.create_task(server.recv(timeout=30.0))
            await asyncio.sleep(0.05)  # the receive is waiting now
            writer.write(sent)
            if close:
                writer.close()
            t0 = time.monotonic()
            with pytest.raises(error, match=match):
                await asyncio.wait_for(waiting, 10.0)
            assert time.monotonic() - t0 < 5.0
        finally:
            writer.close()
