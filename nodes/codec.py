"""Sans-IO frame codec: length-prefixed frames, a msgpack header, tensors carried out of band.

Nothing here touches a socket or an event loop (the h11 pattern): :class:`FrameEncoder` turns a message
(or a header mapping; :func:`encode_frame`) into a list of buffers to write, :class:`FrameDecoder`
accepts bytes (``receive_data``) or lends its own buffer to be filled (``get_buffer``/``buffer_updated``,
which is what :class:`asyncio.BufferedProtocol` and ``socket.recv_into`` want) and hands out complete
frames, and :class:`BodyDecoder` turns a frame back into a message (or a mapping; :func:`decode_frame`).

Wire layout of one frame::

    u32 big-endian  L            length of the body that follows (the "length prefix")
    body (L bytes):
      u32 big-endian  H          length of the msgpack header
      H bytes                    msgpack map; every tensor in it is ExtType(TENSOR_EXT_CODE,
                                 msgpack [dtype, shape, nbytes])
      zero padding to ALIGN
      tensor 0 raw bytes, zero padding to ALIGN, tensor 1 raw bytes, padding, ...

The tensor extension holds the tensor's dtype (a little-endian numpy type string such as ``"<f4"``), shape
and byte length; its raw bytes follow the header in the same frame, in the order the extensions appear.
Keeping the bytes out of the msgpack stream is what lets the decoder return ``numpy.frombuffer`` views
of the frame buffer: msgpack would otherwise copy every extension payload into a new ``bytes`` object,
making decode cost grow with the tensor size. The padding keeps every tensor aligned for its dtype.
"""

from __future__ import annotations

import struct
import sys
from collections import deque
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import msgspec
import numpy as np

from nodes.errors import LocalProtocolError, RemoteProtocolError

Buffer = bytes | bytearray | memoryview

LENGTH_PREFIX = struct.Struct(">I")
HEADER_LENGTH = struct.Struct(">I")
_PREFIXES = struct.Struct(">II")  # length prefix and header length, packed in one call

# The largest frame body a decoder accepts by default. The decoder allocates the body buffer as soon as
# it has read a length prefix (so that the socket can fill it in place), so this bound is the memory one
# connection can make us commit with four bytes. 128 MiB holds the largest thing the nodes exchange with
# room to spare -- features of a batch of 32 at exit 1 of a CIFAR-sized model with 64 channels are
# 32*64*32*32*4 B = 8 MiB -- and the transport benchmark's 64 MiB payloads.
MAX_FRAME_SIZE = 128 * 1024 * 1024

# Until a peer has completed the hello/ready handshake (and shown the token, if one is required) it
# may only send small frames, so a stranger cannot make us allocate MAX_FRAME_SIZE per connection.
# A hello is a few hundred bytes; 64 KiB leaves room for long error messages.
HANDSHAKE_MAX_FRAME_SIZE = 64 * 1024

# msgpack extension type code of a tensor descriptor.
TENSOR_EXT_CODE = 1

# Tensors start at multiples of this many bytes from the start of the body (the largest itemsize we
# carry), so that numpy/torch views of them are aligned.
ALIGN = 8
# (The sizes and unpackers as module constants: the receive path runs for every message, and each
# ``STRUCT.size`` or ``STRUCT.unpack_from`` there is a global and an attribute lookup.)
_PREFIX_SIZE = LENGTH_PREFIX.size
_HEAD_SIZE = HEADER_LENGTH.size
_unpack_prefix = LENGTH_PREFIX.unpack_from
_unpack_head = HEADER_LENGTH.unpack_from

# A batch tensor has at most 4 dimensions (N, C, H, W); 8 leaves room and bounds descriptor parsing.
MAX_NDIM = 8

# Bytes are read into a scratch buffer (length prefixes, small frames) unless a body is being received
# in place. It starts at _SCRATCH_MIN -- a hello, a clock probe or a batch's predictions fit, and an
# idle connection, or a stranger's that never completes the handshake, holds no more -- and doubles each
# time one read fills it, up to _SCRATCH_MAX, so that a peer streaming small frames is read many frames
# per recv. (A full-size buffer from the start would make a few hundred idle connections cost tens of
# MiB, which the heap then keeps after they close.) :meth:`FrameDecoder.release_buffers` shrinks it back.
_SCRATCH_MIN = 4 * 1024
_SCRATCH_MAX = 256 * 1024

# After a frame at least this large, the next read takes only the next length prefix, so that the next
# body -- large ones tend to follow each other -- is received in place, as the transport promises,
# rather than its first 256 KiB into the scratch buffer and copied from there (a quarter of a 1 MiB
# frame copied twice). One more recv per frame costs microseconds; copying 64 KiB about as much.
_PREFIX_ONLY_AFTER = 64 * 1024

# Frame bodies at least this large are received into buffers the decoder recycles once the caller has
# dropped every view of them. A fresh buffer of a MiB or more comes from a fresh mmap (or from heap that
# malloc trimmed back), and its page faults -- the kernel zeroing every page -- cost about as much as
# receiving the bytes again; below 1 MiB malloc reuses its own freed memory anyway, so recycling would
# only pin memory.
_RECYCLE_MIN = 1024 * 1024

# How many such buffers the decoder keeps: as many as fit in _SPARE_BYTES, and at least two. A receiver
# usually holds the message it works on while the next ones arrive, and up to the transport's queue of
# decoded frames (8) can wait behind it, so with a single spare most frames would get a fresh buffer.
# 32 MiB holds that whole queue for frames of up to a few MiB -- the nodes' features are at most 8 MiB a
# batch -- and the "at least two" keeps recycling for the largest frames while pinning at most 2 x
# MAX_FRAME_SIZE per connection.
_SPARE_BYTES = 32 * 1024 * 1024
_MIN_SPARES = 2

_ZEROS = bytes(ALIGN)

# Headers without tensors of up to this many bytes (clock probes and replies, hello, ready, errors) have
# their length prefixes and padding remembered by the encoder, one entry per length.
_SMALL_HEADER = 4096

# Encoders and decoders remember this many tensor descriptors (dtype and shape) they have packed or
# parsed; a connection sees a handful (a batch of 32 and the last, smaller batch, per tensor).
_DESCRIPTOR_CACHE = 64

# Only plain numeric types, in little-endian byte order, travel; object arrays never do.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)
_DTYPES: Mapping[str, np.dtype[Any]] = MappingProxyType({name: np.dtype(name) for name in ALLOWED_DTYPES})


def _to_wire_array(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if not arr.flags.c_contiguous:
        arr = arr.copy(order="C")  # (np.ascontiguousarray would turn a 0-d array into 1-d)
    if arr.dtype.str not in ALLOWED_DTYPES:
        raise LocalProtocolError(
            f"cannot send a tensor of dtype {arr.dtype}; allowed: {sorted(ALLOWED_DTYPES)}"
        )
    if arr.ndim > MAX_NDIM:
        raise LocalProtocolError(f"cannot send a tensor with {arr.ndim} dimensions (at most {MAX_NDIM})")
    return arr


class FrameEncoder:
    """Encodes messages (``msgspec.Struct`` values) or header mappings as frames.

    msgspec packs the header in one call; an ``enc_hook`` turns each numpy array it meets into a tensor
    extension and collects the array, whose bytes then follow the header uncopied. One encoder per
    connection (the hook's list is its state).
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._small_ends: dict[int, tuple[bytes, bytes]] = {}
        self._max_frame_size = max_frame_size
        self._tensors: list[np.ndarray] = []
        self._encode = msgspec.msgpack.Encoder(enc_hook=self._hook).encode
        self._pack_descriptor = msgspec.msgpack.Encoder().encode
        self._descriptors: dict[tuple[np.dtype[Any], tuple[int, ...]], msgspec.msgpack.Ext] = {}

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        self._max_frame_size = value
        # For a header of n bytes without tensors: the length prefixes before it and the padding after
        # it, filled in by _frame once it has checked such a frame against the limit.
        self._small_ends.clear()

    def _hook(self, obj: object) -> object:
        if isinstance(obj, np.ndarray):
            # A stream repeats a handful of dtypes and shapes: each descriptor is packed once, keyed by
            # the dtype object (comparing those is cheap; building dtype.str is not). A key is stored
            # only for an array _to_wire_array accepted as it was, so a hit on a C-contiguous array
            # needs no further check.
            ext = self._descriptors.get((obj.dtype, obj.shape))
            if ext is not None and obj.flags.c_contiguous:
                self._tensors.append(obj)
                return ext
            arr = _to_wire_array(obj)
            self._tensors.append(arr)
            key = (arr.dtype, arr.shape)
            ext = self._descriptors.get(key)
            if ext is None:
                ext = msgspec.msgpack.Ext(
                    TENSOR_EXT_CODE, self._pack_descriptor((arr.dtype.str, arr.shape, arr.nbytes))
                )
                if len(self._descriptors) >= _DESCRIPTOR_CACHE:
                    self._descriptors.clear()
                self._descriptors[key] = ext
            return ext
        if isinstance(obj, np.generic):
            return obj.item()
        raise LocalProtocolError(f"cannot encode a value of type {type(obj).__name__} in a frame")

    def encode(self, obj: object) -> list[Buffer]:
        """``obj`` as one frame: a list of buffers to be written in order; tensor bytes are not copied
        (the list holds memoryviews of the arrays). :class:`LocalProtocolError` for values the frame
        cannot carry or a frame larger than ``max_frame_size``."""
        try:
            packed = self._encode(obj)
        except BaseException as exc:
            self._tensors.clear()  # (a kept array would stop a receive buffer's recycling)
            if isinstance(exc, (TypeError, ValueError, OverflowError)):
                raise LocalProtocolError(f"cannot encode frame header: {exc}") from exc
            raise
        if not self._tensors:  # the common small message: one bytes object, its prefixes looked up
            ends = self._small_ends.get(len(packed))
            if ends is not None:
                return [ends[0] + packed + ends[1]]
        return self._frame(packed)

    def _frame(self, packed: bytes) -> list[Buffer]:
        tensors = self._tensors
        try:  # (the finally drops the arrays: a kept reference would stop a receive buffer's recycling)
            n = len(packed)
            head_len = HEADER_LENGTH.size + n
            head_pad = -head_len % ALIGN
            body_len = head_len + head_pad
            out: list[Buffer] = [b""]  # (the first buffer, once body_len is known)
            for t in tensors:
                size = t.nbytes
                if size:
                    out.append(t.data.cast("B"))  # C-contiguous, so a flat byte view without a copy
                    if size % ALIGN:
                        out.append(_ZEROS[: -size % ALIGN])
                    body_len += size + (-size % ALIGN)
            if body_len > self.max_frame_size:
                raise LocalProtocolError(
                    f"frame of {body_len} bytes exceeds the limit of {self.max_frame_size} bytes"
                )
            first = out[0] = _PREFIXES.pack(body_len, n) + packed + _ZEROS[:head_pad]
            if not tensors and n <= _SMALL_HEADER:  # remember what goes around a header of this length
                self._small_ends[n] = (first[: _PREFIXES.size], _ZEROS[:head_pad])
            return out
        finally:
            if tensors:
                tensors.clear()


def encode_frame(header: Mapping[str, Any], *, max_frame_size: int = MAX_FRAME_SIZE) -> list[Buffer]:
    """Encode ``header`` (a mapping whose values may include numpy arrays, at any depth) as one frame;
    see :meth:`FrameEncoder.encode`."""
    return FrameEncoder(max_frame_size).encode(header)


def encode_frame_bytes(header: Mapping[str, Any], *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """:func:`encode_frame` joined into one ``bytes`` (copies; for tests and small messages)."""
    return b"".join(encode_frame(header, max_frame_size=max_frame_size))


_DESCRIPTOR = msgspec.msgpack.Decoder(tuple[str, tuple[int, ...], int])


def _parse_descriptor(data: Buffer) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    try:
        dtype_str, shape, nbytes = _DESCRIPTOR.decode(data)
    except msgspec.MsgspecError as exc:
        raise RemoteProtocolError(
            f"malformed tensor descriptor (expected [dtype, shape, nbytes]): {exc}"
        ) from exc
    dtype = _DTYPES.get(dtype_str)
    if dtype is None:
        raise RemoteProtocolError(f"tensor dtype {dtype_str!r} is not allowed")
    if len(shape) > MAX_NDIM:
        raise RemoteProtocolError(f"tensor shape must be a list of at most {MAX_NDIM} sizes")
    count = 1
    for size in shape:
        if size < 0:
            raise RemoteProtocolError(f"tensor shape {list(shape)!r} has a negative or non-integer size")
        count *= size
    if nbytes != count * dtype.itemsize:
        raise RemoteProtocolError(
            f"tensor of shape {list(shape)} and dtype {dtype_str} cannot be {nbytes!r} bytes"
        )
    return dtype, shape, nbytes


class BodyDecoder:
    """Decodes frame bodies (without their length prefix) into values of one type.

    ``type_`` is what the header must be: the :data:`~nodes.messages.Message` union for the nodes (msgspec
    then picks the message class by its ``"type"`` and checks every field), or ``dict[str, Any]`` for a
    plain mapping. Tensors come back as numpy arrays that are views of the body (no copy; writable when
    the body is). Every problem with the body is a :class:`RemoteProtocolError`.
    """

    def __init__(self, type_: Any = dict[str, Any]) -> None:
        self._decode = msgspec.msgpack.Decoder(type_, ext_hook=self._ext_hook).decode
        # descriptor bytes -> (dtype, shape or None when 1-d, byte length, element count)
        self._descriptors: dict[bytes, tuple[np.dtype[Any], tuple[int, ...] | None, int, int]] = {}
        self._mv: bytearray | memoryview | None = None  # the body being decoded, for _ext_hook
        self._offset = 0

    def _ext_hook(self, code: int, data: memoryview) -> np.ndarray:
        if code != TENSOR_EXT_CODE:
            raise RemoteProtocolError(f"unknown msgpack extension type {code}")
        mv = self._mv
        assert mv is not None
        key = bytes(data)
        tensor = self._descriptors.get(key)
        if tensor is None:  # (a stream repeats a handful of shapes: parse each once)
            dtype, full_shape, nbytes = _parse_descriptor(key)
            tensor = (dtype, full_shape if len(full_shape) != 1 else None, nbytes, nbytes // dtype.itemsize)
            if len(self._descriptors) >= _DESCRIPTOR_CACHE:
                self._descriptors.clear()
            self._descriptors[key] = tensor
        dtype, shape, nbytes, count = tensor
        offset = self._offset
        if offset + nbytes > len(mv):
            raise RemoteProtocolError(
                f"tensor data ({nbytes} bytes at offset {offset}) runs past the end of a {len(mv)}-byte frame"
            )
        self._offset = offset + nbytes + (-nbytes % ALIGN)
        if shape is None:  # 1-d (ids, predictions, entropies): frombuffer takes half np.ndarray's time
            return np.frombuffer(mv, dtype, count, offset)
        return np.ndarray(shape, dtype, buffer=mv, offset=offset)

    def decode(self, body: Buffer | np.ndarray) -> Any:
        mv: bytearray | memoryview
        if type(body) is bytearray:  # a small frame that arrived whole: sliced and viewed as it is
            mv = body
        else:
            mv = memoryview(body)  # type: ignore[arg-type]  # (numpy arrays export the buffer protocol)
            if mv.ndim != 1 or mv.format != "B":
                mv = mv.cast("B")
        total = len(mv)
        if total < _HEAD_SIZE:
            raise RemoteProtocolError(f"frame of {total} bytes is too short to hold a header length")
        head_end = _HEAD_SIZE + _unpack_head(mv)[0]
        if head_end > total:
            raise RemoteProtocolError(
                f"header length {head_end - _HEAD_SIZE} runs past the end of a {total}-byte frame"
            )
        self._mv = mv
        self._offset = head_end + (-head_end % ALIGN)
        try:
            value = self._decode(mv[_HEAD_SIZE:head_end])
        except RemoteProtocolError:
            raise
        except msgspec.ValidationError as exc:  # well-formed msgpack, but not a valid value of the type
            raise RemoteProtocolError(_invalid(mv, head_end, exc)) from exc
        except Exception as exc:  # malformed msgpack: DecodeError, UnicodeDecodeError, ...
            raise RemoteProtocolError(f"malformed msgpack header: {type(exc).__name__}: {exc}") from exc
        finally:
            self._mv = None
        if self._offset != total:
            raise RemoteProtocolError(
                f"frame is {total} bytes but its header and tensors account for {self._offset}"
            )
        return value


def _type_name(mv: bytearray | memoryview, head_end: int) -> str:
    """The ``"type"`` of a header that failed validation, for the error message ("?" if there is none)."""
    try:
        header = msgspec.msgpack.decode(mv[HEADER_LENGTH.size : head_end], ext_hook=lambda c, d: None)
    except Exception:  # (the header did decode once already; this is only for the error message)
        return "?"
    name = header.get("type") if isinstance(header, dict) else None
    return name if isinstance(name, str) else "?"


def _invalid(mv: bytearray | memoryview, head_end: int, exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if text.startswith("Invalid value") and text.endswith("at `$.type`"):
        return f"unknown message type {_type_name(mv, head_end)!r}"
    if text.startswith("Object contains unknown field"):
        return f"{_type_name(mv, head_end)} message has {text[len('Object contains ') :]}"
    if text.startswith("Object missing required field `type`") or text.startswith("Expected `object`"):
        return f"frame header is not a message: {text}"
    return f"invalid {_type_name(mv, head_end)} message: {text}"


def decode_frame(body: Buffer | np.ndarray) -> dict[str, Any]:
    """Decode one frame body (without its length prefix) into its header mapping.

    Tensors come back as numpy arrays that are views of ``body`` (no copy; writable when ``body`` is).
    Raises :class:`RemoteProtocolError` for anything malformed, including a header that is not a map
    with string keys.
    """
    header: dict[str, Any] = BodyDecoder(dict[str, Any]).decode(body)
    return header


class FrameDecoder:
    """Accumulates a byte stream and splits it into frame bodies; at most one frame is ever partial.

    Feed it with :meth:`receive_data` (an empty ``data`` means end of stream), or let the socket write
    straight into it with :meth:`get_buffer` and :meth:`buffer_updated`; a large frame body is then
    received in place, without a further copy. :meth:`next_frame` returns complete bodies (writable
    buffers, ready for :func:`decode_frame`) or ``None`` when more data is needed.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max_frame_size = 0
        self._scratch_limit = 0
        self.max_frame_size = max_frame_size
        self._buf = bytearray()  # bytes of the length prefix and of small frames still incomplete
        self._body: np.ndarray | None = None  # preallocated body of the frame being received
        self._spares: list[np.ndarray] = []  # large body buffers recycled across frames
        self._filled = 0
        self._frames: deque[np.ndarray | bytearray] = deque()
        self._set_scratch(_SCRATCH_MIN)
        self._prefix_only = False  # the last frame was large: read just the next prefix (see above)
        self._eof = False
        self._error: RemoteProtocolError | None = None

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    @max_frame_size.setter
    def max_frame_size(self, value: int) -> None:
        if not isinstance(value, int) or value < HEADER_LENGTH.size or value > 2**32 - 1:
            raise ValueError(
                f"max_frame_size must be an int in [{HEADER_LENGTH.size}, 2**32-1], got {value!r}"
            )
        self._max_frame_size = value
        # The scratch buffer grows to one frame of the limit in force at most: before the handshake
        # that keeps a stranger's at the handshake's small limit; after it, the limit is far larger.
        self._scratch_limit = max(_SCRATCH_MIN, min(_SCRATCH_MAX, value + _PREFIX_SIZE))

    def _set_scratch(self, size: int) -> None:
        # (replaced, never resized: a bytearray with a view on it cannot be, and one view serves every
        # read until the next change)
        self._scratch = bytearray(size)
        self._scratch_size = size  # (compared with every read's length)
        self._scratch_view = memoryview(self._scratch)
        self._prefix_view = self._scratch_view[:_PREFIX_SIZE]

    @property
    def retained_bytes(self) -> int:
        """Bytes of buffers kept for the next frames (scratch buffer, recycled bodies), excluding the
        frame being received and frames not yet taken."""
        return len(self._scratch) + sum(len(b) for b in self._spares)

    def release_buffers(self) -> None:
        """Give back what was kept for speed: shrink the scratch buffer to its initial size and drop the
        recycled body buffers (those a caller still views stay alive through the caller). For a
        connection that has gone quiet; receiving goes on correctly afterwards, the buffers simply grow
        again. Must not be called between :meth:`get_buffer` and its :meth:`buffer_updated`."""
        self._spares.clear()
        if self._scratch_size > _SCRATCH_MIN:
            self._set_scratch(_SCRATCH_MIN)

    @property
    def eof(self) -> bool:
        return self._eof

    @property
    def mid_frame(self) -> bool:
        """True when part of a frame has been received (EOF now would truncate it)."""
        return self._body is not None or bool(self._buf)

    def receive_data(self, data: Buffer) -> None:
        """Feed received bytes; ``b""`` marks the end of the stream."""
        if self._error is not None:
            raise self._error
        if self._eof:
            if len(data):
                raise LocalProtocolError("receive_data called after end of stream")
            return
        if not len(data):
            self._eof = True
            return
        self._feed(memoryview(data).cast("B"))

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """A writable buffer for the next bytes; pass the number written to :meth:`buffer_updated`."""
        if self._body is not None:
            return self._body.data[self._filled :].cast("B")
        if self._prefix_only:
            # (buffer_updated reads the scratch buffer from its start)
            return (
                self._prefix_view[: LENGTH_PREFIX.size - len(self._buf)] if self._buf else self._prefix_view
            )
        return self._scratch_view

    def buffer_updated(self, nbytes: int) -> int:
        """``nbytes`` bytes were written into the buffer last returned by :meth:`get_buffer`; returns
        :attr:`frames_pending` (what a transport wants to know next, without another call)."""
        if self._error is not None:
            raise self._error
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                self._frames.append(self._body)
                self._body = None
                self._filled = 0
            return len(self._frames)
        if nbytes > _PREFIX_SIZE and not self._buf:
            # The usual small message: one whole frame at the start of the scratch buffer. (This is
            # _feed's first round for that case, without its loop.)
            (length,) = _unpack_prefix(self._scratch)
            if length == nbytes - _PREFIX_SIZE and _HEAD_SIZE <= length <= self._max_frame_size:
                self._frames.append(self._scratch[_PREFIX_SIZE:nbytes])
                self._prefix_only = length >= _PREFIX_ONLY_AFTER
                if nbytes == self._scratch_size:
                    self._grow_scratch()
                return len(self._frames)
        self._feed(self._scratch_view[:nbytes])
        if nbytes == self._scratch_size:
            self._grow_scratch()
        return len(self._frames)

    def _grow_scratch(self) -> None:
        # A read filled the scratch buffer (its bytes are all taken out by now): the peer sends faster
        # than we read, so read more at once.
        size = min(self._scratch_size * 2, self._scratch_limit)
        if size > self._scratch_size:
            self._set_scratch(size)

    def next_frame(self) -> np.ndarray | bytearray | None:
        """The next complete frame body, or ``None`` if more bytes are needed (or the stream ended).

        A body is a writable buffer: a ``bytearray`` for a small frame that arrived whole, a uint8 numpy
        array for one received in place.

        Raises :class:`RemoteProtocolError` when the stream ended in the middle of a frame.
        """
        if self._frames:
            return self._frames.popleft()
        if self._error is not None:
            raise self._error
        if self._eof and self.mid_frame:
            got = self._filled if self._body is not None else len(self._buf)
            want = len(self._body) if self._body is not None else "a 4-byte length prefix"
            self._error = RemoteProtocolError(
                f"connection closed in the middle of a frame (received {got} bytes of {want})"
            )
            raise self._error
        return None

    @property
    def frames_pending(self) -> int:
        return len(self._frames)

    @property
    def frames(self) -> deque[np.ndarray | bytearray]:
        """The complete frame bodies not yet taken, oldest first (:meth:`next_frame` pops from it)."""
        return self._frames

    def _fail(self, message: str) -> None:
        self._error = RemoteProtocolError(message)
        raise self._error

    def _feed(self, data: memoryview) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            if self._body is not None:
                take = min(n - pos, len(self._body) - self._filled)
                self._body.data[self._filled : self._filled + take] = data[pos : pos + take]
                self._filled += take
                pos += take
                if self._filled == len(self._body):
                    self._frames.append(self._body)
                    self._body = None
                    self._filled = 0
                continue
            if self._buf or n - pos < LENGTH_PREFIX.size:  # a length prefix split across reads
                take = min(LENGTH_PREFIX.size - len(self._buf), n - pos)
                self._buf += data[pos : pos + take]
                pos += take
                if len(self._buf) < LENGTH_PREFIX.size:
                    return
                (length,) = LENGTH_PREFIX.unpack_from(self._buf, 0)
                self._buf.clear()
            else:
                (length,) = LENGTH_PREFIX.unpack_from(data, pos)
                pos += LENGTH_PREFIX.size
            self._prefix_only = length >= _PREFIX_ONLY_AFTER
            if length > self._max_frame_size:
                self._fail(f"peer announced a frame of {length} bytes; the limit is {self._max_frame_size}")
            if length < HEADER_LENGTH.size:
                self._fail(f"peer announced a frame of {length} bytes, too short to hold a header length")
            if length < _RECYCLE_MIN and pos + length <= n:
                # A small frame that is all here (the usual case for messages without large tensors):
                # one copy into a bytearray of its own, no preallocated body.
                self._frames.append(bytearray(data[pos : pos + length]))
                pos += length
                continue
            self._body = self._new_body(length)
            self._filled = 0

    def _new_body(self, length: int) -> np.ndarray:
        """A buffer for a frame body of ``length`` bytes: a recycled one when nobody uses it any more.

        Whether the caller still holds a frame, a decoded tensor or anything derived from one (a torch
        tensor from ``torch.from_numpy``, a memoryview) shows in a spare's reference count: every view
        keeps its base alive. So a buffer is overwritten only once nothing can see it.
        """
        if length < _RECYCLE_MIN:
            return np.empty(length, dtype=np.uint8)
        getrefcount = getattr(sys, "getrefcount", None)  # CPython only; elsewhere never recycle
        if getrefcount is None:
            return np.empty(length, dtype=np.uint8)
        spares = self._spares
        idle = -1  # the smallest spare nobody uses, to make room for a larger one
        for i in range(len(spares)):
            if getrefcount(spares[i]) == 2:  # the list's reference and getrefcount's argument
                if len(spares[i]) >= length:
                    return spares[i][:length]
                if idle < 0 or len(spares[i]) < len(spares[idle]):
                    idle = i
        fresh = np.empty(length, dtype=np.uint8)
        if len(spares) < _MIN_SPARES or sum(len(b) for b in spares) + length <= _SPARE_BYTES:
            spares.append(fresh)
        elif idle >= 0:
            spares[idle] = fresh
        return fresh[:length]
