"""The asyncio transport over real loopback sockets: large frames, buffer recycling, read deadlines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from nodes import Batch, ClockProbe, ClockReply, FramedStream, Listener, NodeTimeout, open_stream

MIB = 1024 * 1024


@pytest.fixture
async def pair() -> AsyncIterator[tuple[FramedStream, FramedStream]]:
    """A connected (client, server) pair of streams with the handshake frame limit lifted."""
    accepted: asyncio.Queue[FramedStream] = asyncio.Queue()
    done = asyncio.Event()

    async def handler(stream: FramedStream) -> None:
        stream.conn.handshake_done()
        await accepted.put(stream)
        await done.wait()

    listener = Listener(handler, node="cloud", timeout=5.0)
    _, port = await listener.start("127.0.0.1", 0)
    client = await open_stream("127.0.0.1", port, node="cloud", timeout=5.0)
    client.conn.handshake_done()
    server = await asyncio.wait_for(accepted.get(), 5.0)
    try:
        yield client, server
    finally:
        done.set()
        await client.close()
        await listener.close()


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
