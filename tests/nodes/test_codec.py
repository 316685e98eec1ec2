"""The sans-IO frame codec and message connection, joined in memory."""

from __future__ import annotations

import struct
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from nodes import (
    CLOSED,
    HANDSHAKE_MAX_FRAME_SIZE,
    NEED_DATA,
    Batch,
    ClockProbe,
    ClockReply,
    Connection,
    Error,
    Features,
    FrameDecoder,
    Hello,
    LocalProtocolError,
    Predictions,
    RemoteProtocolError,
    decode_frame,
    encode_frame,
    encode_frame_bytes,
)
from nodes.codec import LENGTH_PREFIX, FrameEncoder


def _pair() -> tuple[Connection, Connection]:
    a, b = Connection(), Connection()
    a.handshake_done()
    b.handshake_done()
    return a, b


def _transfer(src: Connection, dst: Connection, msg: object, chunk: int | None = None) -> None:
    data = b"".join(src.send(msg))  # type: ignore[arg-type]
    step = chunk or len(data)
    for i in range(0, len(data), step):
        dst.receive_data(data[i : i + step])


def _batch(n: int = 4) -> Batch:
    rng = np.random.default_rng(0)
    return Batch(
        batch_id=7,
        sample_ids=np.arange(n, dtype=np.int64),
        images=rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8),
        t_sent_ns=123,
    )


@pytest.mark.parametrize("chunk", [None, 1, 7, 4096])
def test_batch_round_trips_through_an_in_memory_pair_in_any_chunking(chunk: int | None) -> None:
    a, b = _pair()
    msg = _batch()
    _transfer(a, b, msg, chunk)
    got = b.next_event()
    assert isinstance(got, Batch)
    assert got.batch_id == 7 and got.t_sent_ns == 123
    np.testing.assert_array_equal(got.images, msg.images)
    np.testing.assert_array_equal(got.sample_ids, msg.sample_ids)
    assert b.next_event() is NEED_DATA


def test_every_message_type_round_trips() -> None:
    ids = np.array([3, 5], dtype=np.int64)
    msgs = [
        Hello(role="test", model="mem", exit=3, threshold=0.3, token="t", session="s"),
        Predictions(
            batch_id=1,
            source="cloud",
            sample_ids=ids,
            preds=np.array([1, 2], dtype=np.int64),
            entropy=np.array([0.5, 0.6], dtype=np.float32),
            t_edge_recv_ns=1,
            t_edge_done_ns=2,
            t_cloud_recv_ns=3,
            t_cloud_done_ns=4,
            cloud_entropy=np.zeros(2, dtype=np.float32),
        ),
        Features(
            session="s",
            batch_id=1,
            sample_ids=ids,
            features=np.ones((2, 4, 7, 7), dtype=np.float32),
            entropy=np.array([0.5, 0.6], dtype=np.float32),
            t_edge_recv_ns=-5,
            t_edge_done_ns=6,
        ),
        Error("bad-input", "nope", "edge", 3, fatal=False),
        ClockProbe(seq=1, t_sent_ns=99),
    ]
    a, b = _pair()
    for m in msgs:
        _transfer(a, b, m)
    for m in msgs:
        got = b.next_event()
        assert type(got) is type(m)
        if isinstance(m, Features):
            assert isinstance(got, Features)
            np.testing.assert_array_equal(got.features, m.features)
        elif not isinstance(m, Predictions):
            assert got == m


def test_decoded_tensors_are_views_of_the_frame_not_copies() -> None:
    arr = np.arange(1 << 16, dtype=np.float32).reshape(16, 4096)
    dec = FrameDecoder()
    dec.receive_data(encode_frame_bytes({"type": "x", "t": arr}))
    frame = dec.next_frame()
    assert frame is not None
    out = decode_frame(frame)["t"]
    assert np.shares_memory(out, frame)
    assert out.flags.writeable and out.ctypes.data % 8 == 0
    np.testing.assert_array_equal(out, arr)


def test_encode_does_not_copy_tensor_bytes() -> None:
    arr = np.ones(1 << 20, dtype=np.uint8)
    bufs = encode_frame({"t": arr})
    views = [b for b in bufs if isinstance(b, memoryview)]
    assert len(views) == 1 and np.shares_memory(np.asarray(views[0]), arr)


def test_large_frame_is_received_in_place_through_get_buffer() -> None:
    payload = np.random.default_rng(1).integers(0, 256, 3 << 20, dtype=np.uint8)
    data = encode_frame_bytes({"t": payload})
    dec = FrameDecoder()
    pos = 0
    while pos < len(data):
        buf = dec.get_buffer(-1)
        n = min(len(buf), len(data) - pos, 100_000)
        buf[:n] = data[pos : pos + n]
        dec.buffer_updated(n)
        pos += n
    frame = dec.next_frame()
    assert frame is not None
    np.testing.assert_array_equal(decode_frame(frame)["t"], payload)


def _feed_through_get_buffer(dec: FrameDecoder, data: bytes, cap: int) -> list[np.ndarray]:
    got = []
    pos = 0
    while pos < len(data):
        buf = dec.get_buffer(-1)
        assert len(buf) > 0
        n = min(len(buf), len(data) - pos, cap)
        buf[:n] = data[pos : pos + n]
        dec.buffer_updated(n)
        pos += n
        while (frame := dec.next_frame()) is not None:
            got.append(decode_frame(frame)["t"])
    return got


def test_after_a_large_frame_only_the_next_prefix_is_read_so_the_next_body_lands_in_place() -> None:
    # Read into the 256 KiB scratch buffer, most of the next large body was copied a second time.
    frame = encode_frame_bytes({"t": np.ones(300_000, dtype=np.uint8)})
    dec = FrameDecoder()
    assert len(_feed_through_get_buffer(dec, frame, 1 << 30)) == 1
    prefix = dec.get_buffer(-1)
    assert len(prefix) == LENGTH_PREFIX.size
    prefix[:] = frame[: LENGTH_PREFIX.size]
    dec.buffer_updated(LENGTH_PREFIX.size)
    assert len(dec.get_buffer(-1)) == len(frame) - LENGTH_PREFIX.size  # the whole body, in place
    small = encode_frame_bytes({"t": np.ones(10, dtype=np.uint8)})
    dec = FrameDecoder()
    _feed_through_get_buffer(dec, small, 1 << 30)
    assert len(dec.get_buffer(-1)) > 1024  # after small frames: a read may pick up several


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.sampled_from([10, 1000, 70_000, 300_000]), min_size=1, max_size=6),
    st.integers(min_value=1, max_value=200_000),
)
def test_frames_of_mixed_sizes_arrive_whole_through_get_buffer(sizes: list[int], cap: int) -> None:
    rng = np.random.default_rng(len(sizes))
    payloads = [rng.integers(0, 256, n, dtype=np.uint8) for n in sizes]
    data = b"".join(encode_frame_bytes({"t": p}) for p in payloads)
    got = _feed_through_get_buffer(FrameDecoder(), data, cap)
    assert len(got) == len(payloads)
    for out, payload in zip(got, payloads, strict=True):
        np.testing.assert_array_equal(out, payload)


def _frames_or_error(dec: FrameDecoder, reads: list[bytes], through_buffer: bool) -> list[object]:
    """The bodies ``dec`` splits ``reads`` into (each read fed as one chunk), then the error if any."""
    out: list[object] = []
    try:
        for read in reads:
            if through_buffer:
                rest = read
                while rest:
                    buf = dec.get_buffer(-1)
                    n = min(len(buf), len(rest))
                    buf[:n] = rest[:n]
                    dec.buffer_updated(n)
                    rest = rest[n:]
            else:
                dec.receive_data(read)
            while (frame := dec.next_frame()) is not None:
                out.append(bytes(frame))
    except RemoteProtocolError as exc:
        out.append(str(exc))
    return out


_SMALL_FRAMES = [
    b"".join(Connection().send(ClockProbe(seq=3, t_sent_ns=4))),
    b"".join(Connection().send(_batch(1))),
    encode_frame_bytes({"t": np.ones(70_000, np.uint8)}),
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(st.sampled_from(_SMALL_FRAMES), st.binary(min_size=1, max_size=40)), max_size=6),
    st.sampled_from([16, 1024, 1 << 20]),
    st.integers(min_value=0, max_value=50_000),
)
@example([b"\x00\x00\x00\x02ab"], 1024, 0)  # a whole frame too short to hold a header length
@example([_SMALL_FRAMES[0]], 16, 0)  # a whole frame over the limit
def test_fuzz_reading_into_the_buffer_splits_like_receive_data(
    parts: list[bytes], limit: int, step: int
) -> None:
    # get_buffer/buffer_updated has a fast path for a read that is exactly one whole frame; whatever the
    # bytes and however they are read (each part as one read, or in reads of ``step`` bytes), it must
    # yield the frames and the error that receive_data does.
    data = b"".join(parts)
    reads = [data[i : i + step] for i in range(0, len(data), step)] if step else parts
    assert _frames_or_error(FrameDecoder(limit), reads, True) == _frames_or_error(
        FrameDecoder(limit), reads, False
    )


def test_a_whole_frame_over_the_limit_read_into_the_buffer_is_refused() -> None:
    frame = encode_frame_bytes({"t": np.ones(2000, np.uint8)})
    dec = FrameDecoder(max_frame_size=1024)
    buf = dec.get_buffer(-1)
    buf[: len(frame)] = frame
    with pytest.raises(RemoteProtocolError, match="limit is 1024"):
        dec.buffer_updated(len(frame))


def test_clean_close_between_frames_is_closed_not_an_error() -> None:
    a, b = _pair()
    _transfer(a, b, ClockProbe(seq=0, t_sent_ns=0))
    b.receive_data(b"")
    assert isinstance(b.next_event(), ClockProbe)
    assert b.next_event() is CLOSED


def test_truncated_frame_is_a_remote_error() -> None:
    data = b"".join(Connection().send(_batch()))
    b = Connection()
    b.handshake_done()
    b.receive_data(data[:-10])
    b.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle of a frame"):
        b.next_event()


def test_oversized_length_prefix_is_refused_before_allocating() -> None:
    dec = FrameDecoder(max_frame_size=1024)
    with pytest.raises(RemoteProtocolError, match="limit is 1024"):
        dec.receive_data(LENGTH_PREFIX.pack(2**32 - 1))
    with pytest.raises(RemoteProtocolError):  # the decoder stays failed
        dec.receive_data(b"x")


def test_handshake_limit_applies_until_handshake_done() -> None:
    big = encode_frame_bytes({"type": "hello", "pad": b"x" * HANDSHAKE_MAX_FRAME_SIZE})
    c = Connection()
    with pytest.raises(RemoteProtocolError, match="limit"):
        c.receive_data(big)
    c2 = Connection()
    c2.handshake_done()
    c2.receive_data(big)  # accepted after the handshake (decoding it then fails on the unknown field)
    with pytest.raises(RemoteProtocolError, match="unknown field `pad`"):
        c2.next_event()


def test_garbage_bytes_are_a_remote_error() -> None:
    c = Connection()
    with pytest.raises(RemoteProtocolError):
        c.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        c.next_event()


def _frame_from_header_bytes(packed: bytes, tail: bytes = b"") -> bytes:
    head = struct.pack(">I", len(packed)) + packed
    head += bytes(-len(head) % 8)
    body = head + tail
    return LENGTH_PREFIX.pack(len(body)) + body


def test_unknown_message_type_is_a_remote_error() -> None:
    c = Connection()
    c.receive_data(_frame_from_header_bytes(msgpack.packb({"type": "launch-missiles"})))
    with pytest.raises(RemoteProtocolError, match="unknown message type 'launch-missiles'"):
        c.next_event()


@pytest.mark.parametrize(
    ("descriptor", "tail", "match"),
    [
        (["|O", [1], 8], bytes(8), "not allowed"),
        (["<f4", [-1], 4], bytes(8), "negative"),
        (["<f4", [4], 99], bytes(16), "cannot be"),
        (["<f4", [1000], 4000], bytes(8), "runs past the end"),
        (["<f4", [1], 4], bytes(64), "account for"),
    ],
)
def test_bad_tensor_descriptors_are_remote_errors(descriptor: list[object], tail: bytes, match: str) -> None:
    packed = msgpack.packb({"type": "x", "t": msgpack.ExtType(1, msgpack.packb(descriptor))})
    dec = FrameDecoder()
    dec.receive_data(_frame_from_header_bytes(packed, tail))
    frame = dec.next_frame()
    assert frame is not None
    with pytest.raises(RemoteProtocolError, match=match):
        decode_frame(frame)


def test_we_refuse_to_send_what_the_protocol_cannot_carry() -> None:
    with pytest.raises(LocalProtocolError, match="dtype"):
        encode_frame({"t": np.array(["a"], dtype=object)})
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        encode_frame({"t": object()})
    with pytest.raises(LocalProtocolError, match="exceeds the limit"):
        encode_frame({"t": np.zeros(2048, np.uint8)}, max_frame_size=1024)


def test_a_small_frame_is_checked_against_the_limit_in_force() -> None:
    # The encoder remembers the prefixes of small frames by header length; a lower limit set afterwards
    # still applies to them.
    enc = FrameEncoder()
    probe = ClockProbe(seq=1, t_sent_ns=2)
    first = enc.encode(probe)
    assert enc.encode(probe) == first  # (from what it remembered)
    enc.max_frame_size = 16
    with pytest.raises(LocalProtocolError, match="exceeds the limit of 16 bytes"):
        enc.encode(probe)
    enc.max_frame_size = 1024
    assert enc.encode(probe) == first


def test_message_fields_are_validated_both_ways() -> None:
    with pytest.raises(ValueError, match="images must have dtype uint8"):
        Batch(batch_id=0, sample_ids=np.arange(2), images=np.zeros((2, 1, 2, 2), np.float32), t_sent_ns=0)
    c = Connection()
    c.receive_data(
        encode_frame_bytes(
            {
                "type": "batch",
                "batch_id": -1,
                "sample_ids": np.arange(1),
                "images": np.zeros((1, 1, 2, 2), np.uint8),
                "t_sent_ns": 0,
            }
        )
    )
    with pytest.raises(
        RemoteProtocolError, match=r"invalid batch message: Expected `int` >= 0 - at `\$.batch_id`"
    ):
        c.next_event()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512), st.integers(min_value=1, max_value=64))
def test_fuzz_random_bytes_only_ever_raise_remote_protocol_error(data: bytes, chunk: int) -> None:
    c = Connection()
    c.handshake_done()
    try:
        for i in range(0, len(data), chunk):
            c.receive_data(data[i : i + chunk])
            while c.next_event() is not NEED_DATA:
                pass
        c.receive_data(b"")
        while c.next_event() is not CLOSED:
            pass
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=2048), st.integers(min_value=0, max_value=10**6))
def test_fuzz_mutated_valid_frames_never_crash_the_decoder(noise: bytes, where: int) -> None:
    good = bytearray(b"".join(Connection().send(_batch(2))))
    pos = where % len(good)
    good[pos : pos + len(noise)] = noise
    c = Connection()
    c.handshake_done()
    try:
        c.receive_data(bytes(good))
        c.receive_data(b"")
        while c.next_event() not in (CLOSED, NEED_DATA):
            pass
    except RemoteProtocolError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from(["|u1", "<i8", "<f4", "<f8", "|b1"]),
    st.lists(st.integers(min_value=0, max_value=5), max_size=4),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=5),
)
def test_fuzz_tensor_round_trip_any_dtype_shape_and_chunking(
    dtype: str, shape: list[int], chunks: list[int]
) -> None:
    arr = (np.arange(int(np.prod(shape)) if shape else 1) % 7).astype(dtype).reshape(shape)
    data = encode_frame_bytes({"a": arr, "b": [arr, {"c": arr}]})
    dec = FrameDecoder()
    pos = 0
    i = 0
    while pos < len(data):
        step = chunks[i % len(chunks)]
        dec.receive_data(data[pos : pos + step])
        pos += step
        i += 1
    frame = dec.next_frame()
    assert frame is not None and dec.next_frame() is None
    out = decode_frame(frame)
    for got in (out["a"], out["b"][0], out["b"][1]["c"]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)


def test_large_frame_buffer_is_recycled_only_once_nothing_views_it() -> None:
    payload = np.arange(2 << 20, dtype=np.uint8)
    data = encode_frame_bytes({"t": payload})
    dec = FrameDecoder()
    dec.receive_data(data)
    first = decode_frame(_next(dec))["t"]
    dec.receive_data(encode_frame_bytes({"t": payload[::-1].copy()}))
    second = decode_frame(_next(dec))["t"]
    assert not np.shares_memory(first, second)  # `first` is still held: its bytes must stay put
    dec.receive_data(data)
    third = decode_frame(_next(dec))["t"]  # both spares are in use: a buffer of its own
    assert not np.shares_memory(third, first) and not np.shares_memory(third, second)
    np.testing.assert_array_equal(first, payload)
    np.testing.assert_array_equal(second, payload[::-1])
    addresses = {first.ctypes.data, second.ctypes.data}
    del first, second, third
    dec.receive_data(data)
    fourth = decode_frame(_next(dec))["t"]
    assert fourth.ctypes.data in addresses  # nothing viewed the spares any more: no fresh allocation
    np.testing.assert_array_equal(fourth, payload)


def test_holding_the_previous_message_while_receiving_the_next_reuses_two_buffers() -> None:
    # The usual receiver keeps the message it works on while the next one arrives; after the first two
    # frames no new buffer may be allocated (a fresh large buffer costs page faults per frame).
    payload = np.arange(2 << 20, dtype=np.uint8)
    data = encode_frame_bytes({"t": payload})
    dec = FrameDecoder()
    held = None
    addresses = []
    for _ in range(6):
        dec.receive_data(data)
        frame = decode_frame(_next(dec))["t"]
        assert held is None or not np.shares_memory(frame, held)
        np.testing.assert_array_equal(frame, payload)
        addresses.append(frame.ctypes.data)
        held = frame
    assert len(set(addresses)) == 2
    assert addresses[2:] == addresses[:2] * 2


def test_a_known_dtype_and_shape_still_gets_each_arrays_conversion() -> None:
    # The encoder packs each (dtype, shape) descriptor once; an array it has seen the like of must still
    # be made contiguous and little-endian before its bytes go out.
    enc = FrameEncoder()
    square = np.arange(16, dtype=np.float32).reshape(4, 4)
    wide = np.arange(8, dtype="<i4")
    for value in (square, square.T, wide, wide.astype(">i4"), wide[::-1], square):
        frame = FrameDecoder()
        frame.receive_data(b"".join(enc.encode({"t": value})))
        got = decode_frame(_next(frame))["t"]
        assert got.dtype.str == value.dtype.newbyteorder("<").str
        np.testing.assert_array_equal(got, value)


def test_one_dimensional_tensors_are_writable_views_of_the_frame() -> None:
    dec = FrameDecoder()
    dec.receive_data(encode_frame_bytes({"a": np.arange(5, dtype=np.int64), "b": np.zeros(0, np.float32)}))
    frame = _next(dec)
    got = decode_frame(frame)
    assert np.shares_memory(got["a"], frame) and got["a"].flags.writeable
    np.testing.assert_array_equal(got["a"], np.arange(5))
    assert got["b"].shape == (0,) and got["b"].dtype == np.float32


def test_numpy_scalars_and_nested_tensors_take_the_tensor_path() -> None:
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = decode_frame(_next_from(encode_frame_bytes({"n": np.int64(7), "x": [{"a": arr}]})))
    assert out["n"] == 7
    np.testing.assert_array_equal(out["x"][0]["a"], arr)


def _next(dec: FrameDecoder) -> np.ndarray | bytearray:
    frame = dec.next_frame()
    assert frame is not None
    return frame


def _next_from(data: bytes) -> np.ndarray | bytearray:
    dec = FrameDecoder()
    dec.receive_data(data)
    return _next(dec)


def test_frames_interoperate_with_the_reference_msgpack_implementation() -> None:
    # A peer in another language packs headers with its own msgpack library; ours must read them, and
    # it must read ours (msgspec does the packing here, msgpack-python is the independent check).
    probe = _frame_from_header_bytes(msgpack.packb({"type": "clock_probe", "seq": 3, "t_sent_ns": -5}))
    c = Connection()
    c.receive_data(probe)
    assert c.next_event() == ClockProbe(seq=3, t_sent_ns=-5)
    ours = b"".join(Connection().send(ClockReply(seq=1, t_sent_ns=2, t_recv_ns=3, t_reply_ns=4)))
    (head_len,) = struct.unpack_from(">I", ours, 4)
    assert msgpack.unpackb(ours[8 : 8 + head_len]) == {
        "type": "clock_reply",
        "seq": 1,
        "t_sent_ns": 2,
        "t_recv_ns": 3,
        "t_reply_ns": 4,
    }


def test_encoder_keeps_no_reference_to_the_arrays_it_sent() -> None:
    # A received array forwarded onwards must not stay referenced by the encoder: the decoder recycles a
    # receive buffer only once nothing views it (its reference count).
    arr = np.ones((2, 3), np.float32)
    before = sys.getrefcount(arr)
    enc = FrameEncoder()
    enc.encode({"t": arr})
    assert sys.getrefcount(arr) == before
    with pytest.raises(LocalProtocolError):
        FrameEncoder(max_frame_size=16).encode({"t": arr})  # refused: too large
    with pytest.raises(LocalProtocolError):
        enc.encode({"t": arr, "x": object()})  # refused after the array was collected
    assert sys.getrefcount(arr) == before
