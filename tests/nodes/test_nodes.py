"""The cloud, edge and test nodes in one event loop: full runs, handshake refusals, bad input, lost peers."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models import synthetic_dataset
from nodes import (
    Batch,
    ClockProbe,
    Connection,
    Error,
    Features,
    HandshakeError,
    Hello,
    PeerError,
    Ready,
    Shutdown,
    cli,
    encode_frame_bytes,
)
from nodes.cloud import CloudConfig, CloudNode
from nodes.codec import LENGTH_PREFIX
from nodes.compute import load_parts
from nodes.edge import EdgeConfig, EdgeNode
from nodes.messages import Message
from nodes.protocol import NEED_DATA
from nodes.records import write_records
from nodes.test import run_test_client
from tests.programs import Nodes

EXIT = 3


async def _start(checkpoint: Path, threshold: float, token: str | None = None) -> Nodes:
    torch.set_num_threads(1)
    parts = load_parts(checkpoint, EXIT)
    cloud = CloudNode(CloudConfig(token=token, timeout=5.0), parts)
    cloud_addr = await cloud.start()
    edge = EdgeNode(
        EdgeConfig(
            cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=threshold, token=token, timeout=5.0
        ),
        parts,
    )
    edge_addr = await edge.start()
    return Nodes(cloud, edge, cloud_addr, edge_addr)


def _median_entropy(checkpoint: Path) -> float:
    """A threshold that sends about half of the synthetic samples to each exit (the model is untrained)."""
    from nodes.compute import run_edge

    out = run_edge(load_parts(checkpoint, EXIT), synthetic_dataset(n=100, seed=3).images, 0.5)
    return float(np.median(out.entropy))


@pytest.fixture
async def testbed(tiny_checkpoint: Path) -> AsyncIterator[Nodes]:
    tb = await _start(tiny_checkpoint, threshold=_median_entropy(tiny_checkpoint))
    try:
        yield tb
    finally:
        await tb.edge.close()
        await tb.cloud.close()


async def test_full_run_gives_one_record_per_sample_and_telescoping_procedures(
    testbed: Nodes, tmp_path: Path
) -> None:
    data = synthetic_dataset(n=100, seed=3)
    t = testbed.edge.config.threshold
    result = await run_test_client(testbed.client(model="mem", exit=EXIT, threshold=t), dataset=data)
    assert sorted(r.id for r in result.samples) == list(range(100))
    assert [b.size for b in result.batches] == [32, 32, 32, 4]
    exits = {r.exit for r in result.samples}
    assert exits == {"edge", "cloud"}, "threshold chosen so that both exits are used"
    for r in result.samples:
        assert r.label == data.labels[r.id]
        assert 0 <= r.pred < 10 and r.latency_ms > 0
        assert (r.entropy is not None and r.entropy < t) == (r.exit == "edge")
    doc = result.to_json()
    for b in doc["batches"]:
        p = b["procedures_ms"]
        assert all(v >= 0 for v in p.values())
        if b["cloud"]:
            assert p["1"] + p["2"] + p["3-2"] + p["4"] + p["5"] == pytest.approx(b["latency_ms"], abs=1e-3)
        else:
            assert "3-2" not in p and "4" not in p
    assert doc["overall"]["measured_samples"] == 100 and doc["warmup"] == {"batches": 1}
    out = write_records(result, tmp_path / "rec.json")
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["rec.json"]


async def test_inflight_batches_and_all_edge_exits(tiny_checkpoint: Path) -> None:
    tb = await _start(tiny_checkpoint, threshold=1.0)
    try:
        result = await run_test_client(tb.client(inflight=3, batch_size=8), dataset=synthetic_dataset(n=64))
    finally:
        await tb.edge.close()
        await tb.cloud.close()
    assert len(result.samples) == 64 and {r.exit for r in result.samples} == {"edge"}
    assert all("3-2" not in b.to_json()["procedures_ms"] for b in result.batches)


async def test_test_node_freezes_its_heap_for_the_measured_run_and_unfreezes_after(
    testbed: Nodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen_at_first_batch: list[int] = []
    real_settle = cli.settle_heap

    def settle() -> None:
        real_settle()
        frozen_at_first_batch.append(gc.get_freeze_count())

    monkeypatch.setattr(cli, "settle_heap", settle)
    result = await run_test_client(testbed.client(), dataset=synthetic_dataset(n=40))
    assert len(result.samples) == 40
    assert len(frozen_at_first_batch) == 1 and frozen_at_first_batch[0] > 0
    assert gc.get_freeze_count() == 0  # an in-process caller gets its heap back


def test_settle_heap_moves_what_survived_start_up_out_of_the_collectors_way() -> None:
    try:
        cli.settle_heap()
        assert gc.get_freeze_count() > 1000  # (this process has imported numpy, torch and pytest)
        assert gc.get_count()[2] == 0
    finally:
        gc.unfreeze()


async def test_config_mismatch_is_refused_with_a_clear_message(testbed: Nodes) -> None:
    with pytest.raises(HandshakeError, match=r"runs mem exit 3, but the test node expects mem exit 5"):
        await run_test_client(testbed.client(model="mem", exit=5), dataset=synthetic_dataset(n=8))
    with pytest.raises(HandshakeError, match=r"T=0\.3"):
        await run_test_client(testbed.client(threshold=0.3), dataset=synthetic_dataset(n=8))


async def test_token_keeps_strangers_out(tiny_checkpoint: Path) -> None:
    tb = await _start(tiny_checkpoint, threshold=0.5, token="s3cret")
    try:
        with pytest.raises(HandshakeError, match="token"):
            await run_test_client(tb.client(token="wrong"), dataset=synthetic_dataset(n=8))
        with pytest.raises(HandshakeError, match="token"):
            await run_test_client(tb.client(), dataset=synthetic_dataset(n=8))
        ok = await run_test_client(tb.client(token="s3cret"), dataset=synthetic_dataset(n=8))
        assert len(ok.samples) == 8
    finally:
        await tb.edge.close()
        await tb.cloud.close()


# -- bad input: each closes only the offending connection, and the node keeps serving ------------------


async def _raw(addr: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(*addr), 5)


async def _read_until_closed(reader: asyncio.StreamReader) -> list[Message]:
    """Everything the node sends until it closes the connection (which it must, within 5 s)."""
    conn = Connection()
    conn.handshake_done()
    msgs: list[Message] = []
    while True:
        data = await asyncio.wait_for(reader.read(65536), 5)
        conn.receive_data(data)
        while (ev := conn.next_event()) is not NEED_DATA:
            if not isinstance(ev, Message.__args__):  # type: ignore[attr-defined]
                return msgs
            msgs.append(ev)
        if not data:
            return msgs


async def _handshake_raw(tb: Nodes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A hand-made test-node connection to the edge, past the hello."""
    reader, writer = await _raw(tb.edge_addr)
    writer.write(b"".join(Connection().send(Hello(role="test", session="nosuch"))))
    conn = Connection()
    conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
    assert isinstance(conn.next_event(), Ready)
    return reader, writer


BAD_BYTES = {
    "garbage": b"\x00\x00\x00\x10this is not a frame at all" * 3,
    "oversized-length-prefix": LENGTH_PREFIX.pack(2**32 - 1),
    # a well-framed body whose msgpack header is the one byte msgpack never uses (0xc1)
    "bad-msgpack-header": LENGTH_PREFIX.pack(8) + b"\x00\x00\x00\x01\xc1" + b"\x00" * 3,
}


@pytest.mark.parametrize("kind", sorted(BAD_BYTES))
async def test_bad_bytes_close_only_that_connection(
    testbed: Nodes, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    for addr in (testbed.edge_addr, testbed.cloud_addr):
        reader, writer = await _raw(addr)
        writer.write(BAD_BYTES[kind])
        msgs = await _read_until_closed(reader)
        writer.close()
        assert [m.code for m in msgs if isinstance(m, Error)] == ["protocol"]
    assert any("closing connection" in r.getMessage() for r in caplog.records)
    ok = await run_test_client(testbed.client(), dataset=synthetic_dataset(n=40))
    assert len(ok.samples) == 40


async def test_truncated_frame_closes_only_that_connection(
    testbed: Nodes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    reader, writer = await _handshake_raw(testbed)
    frame = b"".join(
        Connection().send(
            Batch(batch_id=0, sample_ids=np.arange(4), images=np.zeros((4, 1, 28, 28), np.uint8), t_sent_ns=0)
        )
    )
    writer.write(frame[: len(frame) // 2])
    writer.write_eof()
    await _read_until_closed(reader)
    writer.close()
    await asyncio.sleep(0.05)
    assert any("middle of a frame" in r.getMessage() for r in caplog.records)
    assert len((await run_test_client(testbed.client(), dataset=synthetic_dataset(n=8))).samples) == 8


async def test_unknown_message_type_after_handshake(testbed: Nodes) -> None:
    reader, writer = await _handshake_raw(testbed)
    writer.write(encode_frame_bytes({"type": "reboot"}))
    msgs = await _read_until_closed(reader)
    writer.close()
    assert any(isinstance(m, Error) and "unknown message type 'reboot'" in m.message for m in msgs)
    assert len((await run_test_client(testbed.client(), dataset=synthetic_dataset(n=8))).samples) == 8


async def test_tensor_that_does_not_fit_the_model(testbed: Nodes) -> None:
    reader, writer = await _handshake_raw(testbed)
    writer.write(
        b"".join(
            Connection().send(
                Batch(
                    batch_id=0,
                    sample_ids=np.arange(2),
                    images=np.zeros((2, 3, 32, 32), np.uint8),
                    t_sent_ns=0,
                )
            )
        )
    )
    msgs = await _read_until_closed(reader)
    writer.close()
    errors = [m for m in msgs if isinstance(m, Error)]
    # exactly one error frame: the bad-input that says what is wrong (no "protocol" error after it)
    assert [e.code for e in errors] == ["bad-input"] and "(N, 1, 28, 28)" in errors[0].message
    assert errors[0].batch_id == 0 and errors[0].node == "edge"
    assert len((await run_test_client(testbed.client(), dataset=synthetic_dataset(n=8))).samples) == 8


async def test_features_that_do_not_fit_the_model_get_one_error_from_the_cloud(testbed: Nodes) -> None:
    reader, writer = await _raw(testbed.cloud_addr)
    writer.write(b"".join(Connection().send(Hello(role="edge"))))
    conn = Connection()
    conn.receive_data(await asyncio.wait_for(reader.read(65536), 5))
    assert isinstance(conn.next_event(), Ready)
    bad = Features(
        session="nosuch",
        batch_id=5,
        sample_ids=np.arange(2),
        features=np.zeros((2, 1, 2, 2), np.float32),
        entropy=np.zeros(2, np.float32),
        t_edge_recv_ns=0,
        t_edge_done_ns=0,
    )
    writer.write(b"".join(Connection().send(bad)))
    msgs = await _read_until_closed(reader)
    writer.close()
    errors = [m for m in msgs if isinstance(m, Error)]
    assert [(e.code, e.batch_id, e.node) for e in errors] == [("bad-input", 5, "cloud")]
    assert len((await run_test_client(testbed.client(), dataset=synthetic_dataset(n=8))).samples) == 8


async def test_a_node_of_the_wrong_role_is_refused_in_plain_words(testbed: Nodes) -> None:
    reader, writer = await _raw(testbed.edge_addr)
    writer.write(b"".join(Connection().send(Hello(role="edge"))))
    msgs = await _read_until_closed(reader)
    writer.close()
    assert [(m.code, m.message) for m in msgs if isinstance(m, Error)] == [
        ("role", "the edge node does not accept connections from edge nodes, only from test nodes")
    ]


async def test_clock_probe_and_shutdown_on_a_raw_connection(testbed: Nodes) -> None:
    reader, writer = await _handshake_raw(testbed)
    writer.write(b"".join(Connection().send(ClockProbe(seq=4, t_sent_ns=1))))
    writer.write(b"".join(Connection().send(Shutdown())))
    msgs = await _read_until_closed(reader)
    writer.close()
    assert [type(m).__name__ for m in msgs] == ["ClockReply"]


# -- a peer that disappears mid-run ---------------------------------------------------------------------


async def test_cloud_lost_mid_run_fails_the_run_naming_the_cloud(tiny_checkpoint: Path) -> None:
    tb = await _start(tiny_checkpoint, threshold=0.0)  # every sample needs the cloud
    try:
        run = asyncio.ensure_future(
            run_test_client(tb.client(batch_size=1), dataset=synthetic_dataset(n=5000))
        )
        await asyncio.sleep(0.5)
        assert not run.done(), "the run must still be going when the cloud goes away"
        await tb.cloud.close()
        with pytest.raises(PeerError) as info:
            await asyncio.wait_for(run, 15)
        assert info.value.node == "cloud" and "cloud node" in str(info.value)
    finally:
        await tb.edge.close()
        await tb.cloud.close()


async def test_edge_lost_mid_run_fails_the_run_naming_the_edge(tiny_checkpoint: Path) -> None:
    tb = await _start(tiny_checkpoint, threshold=1.0)
    try:
        run = asyncio.ensure_future(
            run_test_client(tb.client(batch_size=1), dataset=synthetic_dataset(n=5000))
        )
        await asyncio.sleep(0.5)
        assert not run.done()
        await tb.edge.close()
        with pytest.raises(PeerError) as info:
            await asyncio.wait_for(run, 15)
        assert info.value.node == "edge" and "edge node" in str(info.value)
    finally:
        await tb.edge.close()
        await tb.cloud.close()
