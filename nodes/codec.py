"""Sans-IO frame codec: length-prefixed frames, a msgpack header, tensors carried out of band.

Nothing here touches a socket or an event loop (the h11 pattern): :func:`encode_frame` turns a header
mapping into a list of buffers to write, :class:`FrameDecoder` accepts bytes (``receive_data``) or lends
its own buffer to be filled (``get_buffer``/``buffer_updated``, which is what
:class:`asyncio.BufferedProtocol` and ``socket.recv_into`` want) and hands out complete frames, and
:func:`decode_frame` turns a frame back into the header mapping.

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

import msgpack
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

# A batch tensor has at most 4 dimensions (N, C, H, W); 8 leaves room and bounds descriptor parsing.
MAX_NDIM = 8

# Reading a length prefix into a scratch buffer of this size lets one recv pick up many small frames.
_SCRATCH_SIZE = 256 * 1024

# Frame bodies at least this large are received into a buffer the decoder recycles once the caller has
# dropped every view of it. A fresh buffer of tens of MiB is a fresh mmap whose page faults (and the
# kernel zeroing each page) cost about as much as copying the bytes again; below 1 MiB malloc reuses
# its own freed memory anyway, so recycling would only pin memory.
_RECYCLE_MIN = 1024 * 1024

_ZEROS = bytes(ALIGN)

# Only plain numeric types, in little-endian byte order, travel; object arrays never do.
ALLOWED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)
_DTYPES: Mapping[str, np.dtype[Any]] = MappingProxyType({name: np.dtype(name) for name in ALLOWED_DTYPES})


def _pad(n: int) -> int:
    return -n % ALIGN


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


def encode_frame(header: Mapping[str, Any], *, max_frame_size: int = MAX_FRAME_SIZE) -> list[Buffer]:
    """Encode ``header`` (a msgpack-able mapping whose values may include numpy arrays) as one frame.

    Returns the frame as a list of buffers to be written in order; tensor bytes are not copied (the
    list holds memoryviews of the arrays). Raises :class:`LocalProtocolError` for values msgpack cannot
    carry or a frame larger than ``max_frame_size``.
    """
    for value in header.values():
        if isinstance(value, np.ndarray):  # a message's tensors are top-level values
            return _encode_frame_with_tensors(header, max_frame_size)
    try:
        # Fast path: a header without tensors (or other numpy values) packs in one call, with no hook.
        packed = msgpack.packb(header, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # nested tensors, numpy scalars, or an error
        return _encode_frame_with_tensors(header, max_frame_size)
    head_len = HEADER_LENGTH.size + len(packed)
    pad = -head_len % ALIGN
    if head_len + pad > max_frame_size:
        raise LocalProtocolError(
            f"frame of {head_len + pad} bytes exceeds the limit of {max_frame_size} bytes"
        )
    return [_PREFIXES.pack(head_len + pad, len(packed)) + packed + _ZEROS[:pad]]


def _encode_frame_with_tensors(header: Mapping[str, Any], max_frame_size: int) -> list[Buffer]:
    tensors: list[np.ndarray] = []
    pack_descriptor = msgpack.Packer().pack

    def default(obj: object) -> object:
        if isinstance(obj, np.ndarray):
            arr = _to_wire_array(obj)
            tensors.append(arr)
            return msgpack.ExtType(TENSOR_EXT_CODE, pack_descriptor([arr.dtype.str, arr.shape, arr.nbytes]))
        if isinstance(obj, np.generic):
            return obj.item()
        raise LocalProtocolError(f"cannot encode a value of type {type(obj).__name__} in a frame")

    try:
        packed = msgpack.Packer(default=default, use_bin_type=True).pack(header)
    except LocalProtocolError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode frame header: {exc}") from exc
    head_len = HEADER_LENGTH.size + len(packed)
    body_len = head_len + _pad(head_len) + sum(t.nbytes + _pad(t.nbytes) for t in tensors)
    if body_len > max_frame_size:
        raise LocalProtocolError(f"frame of {body_len} bytes exceeds the limit of {max_frame_size} bytes")
    first = _PREFIXES.pack(body_len, len(packed)) + packed + _ZEROS[: _pad(head_len)]
    out: list[Buffer] = [first]
    for t in tensors:
        if t.nbytes:
            out.append(t.data.cast("B"))  # C-contiguous, so a flat byte view without a copy
        if _pad(t.nbytes):
            out.append(_ZEROS[: _pad(t.nbytes)])
    return out


def encode_frame_bytes(header: Mapping[str, Any], *, max_frame_size: int = MAX_FRAME_SIZE) -> bytes:
    """:func:`encode_frame` joined into one ``bytes`` (copies; for tests and small messages)."""
    return b"".join(encode_frame(header, max_frame_size=max_frame_size))


def _parse_descriptor(data: bytes) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    try:
        desc = msgpack.unpackb(data, raw=False, max_array_len=MAX_NDIM + 3)
    except Exception as exc:
        raise RemoteProtocolError(f"malformed tensor descriptor: {exc}") from exc
    if not (isinstance(desc, list) and len(desc) == 3):
        raise RemoteProtocolError("malformed tensor descriptor: expected [dtype, shape, nbytes]")
    dtype_str, shape, nbytes = desc
    dtype = _DTYPES.get(dtype_str) if isinstance(dtype_str, str) else None
    if dtype is None:
        raise RemoteProtocolError(f"tensor dtype {dtype_str!r} is not allowed")
    if not (isinstance(shape, list) and len(shape) <= MAX_NDIM):
        raise RemoteProtocolError(f"tensor shape must be a list of at most {MAX_NDIM} sizes")
    count = 1
    for s in shape:
        if type(s) is not int or s < 0:  # (msgpack gives plain ints; a bool is not a size)
            raise RemoteProtocolError(f"tensor shape {shape!r} has a negative or non-integer size")
        count *= s
    if type(nbytes) is not int or nbytes != count * dtype.itemsize:
        raise RemoteProtocolError(f"tensor of shape {shape} and dtype {dtype_str} cannot be {nbytes!r} bytes")
    return dtype, tuple(shape), nbytes


def decode_frame(body: Buffer | np.ndarray) -> dict[str, Any]:
    """Decode one frame body (without its length prefix) into its header mapping.

    Tensors come back as numpy arrays that are views of ``body`` (no copy; writable when ``body`` is).
    Raises :class:`RemoteProtocolError` for anything malformed.
    """
    mv = body.data.cast("B") if isinstance(body, np.ndarray) else memoryview(body).cast("B")
    total = len(mv)
    if total < HEADER_LENGTH.size:
        raise RemoteProtocolError(f"frame of {total} bytes is too short to hold a header length")
    (head_len,) = HEADER_LENGTH.unpack_from(mv, 0)
    head_end = HEADER_LENGTH.size + head_len
    if head_end > total:
        raise RemoteProtocolError(f"header length {head_len} runs past the end of a {total}-byte frame")
    offset = head_end + _pad(head_end)

    def ext_hook(code: int, data: bytes) -> np.ndarray:
        nonlocal offset
        if code != TENSOR_EXT_CODE:
            raise RemoteProtocolError(f"unknown msgpack extension type {code}")
        dtype, shape, nbytes = _parse_descriptor(data)
        if offset + nbytes > total:
            raise RemoteProtocolError(
                f"tensor data ({nbytes} bytes at offset {offset}) runs past the end of a {total}-byte frame"
            )
        arr: np.ndarray = np.ndarray(shape, dtype, buffer=mv, offset=offset)
        offset += nbytes + (-nbytes % ALIGN)
        return arr

    try:
        header = msgpack.unpackb(mv[HEADER_LENGTH.size : head_end], raw=False, ext_hook=ext_hook)
    except RemoteProtocolError:
        raise
    except Exception as exc:  # msgpack raises a zoo of types (ExtraData, FormatError, ValueError, ...)
        raise RemoteProtocolError(f"malformed msgpack header: {type(exc).__name__}: {exc}") from exc
    if not isinstance(header, dict):
        raise RemoteProtocolError("frame header is not a map with string keys")
    for key in header:
        if type(key) is not str:
            raise RemoteProtocolError("frame header is not a map with string keys")
    if offset != total:
        raise RemoteProtocolError(f"frame is {total} bytes but its header and tensors account for {offset}")
    return header


class FrameDecoder:
    """Accumulates a byte stream and splits it into frame bodies; at most one frame is ever partial.

    Feed it with :meth:`receive_data` (an empty ``data`` means end of stream), or let the socket write
    straight into it with :meth:`get_buffer` and :meth:`buffer_updated`; a large frame body is then
    received in place, without a further copy. :meth:`next_frame` returns complete bodies (as writable
    uint8 numpy arrays, ready for :func:`decode_frame`) or ``None`` when more data is needed.
    """

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._max_frame_size = 0
        self.max_frame_size = max_frame_size
        self._buf = bytearray()  # bytes of the length prefix and of small frames still incomplete
        self._body: np.ndarray | None = None  # preallocated body of the frame being received
        self._spare: np.ndarray | None = None  # the large body buffer recycled across frames
        self._filled = 0
        self._frames: deque[np.ndarray] = deque()
        self._scratch = bytearray(_SCRATCH_SIZE)
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
        return memoryview(self._scratch)

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` bytes were written into the buffer last returned by :meth:`get_buffer`."""
        if self._error is not None:
            raise self._error
        if self._body is not None:
            self._filled += nbytes
            if self._filled == len(self._body):
                self._frames.append(self._body)
                self._body = None
                self._filled = 0
            return
        self._feed(memoryview(self._scratch)[:nbytes])

    def next_frame(self) -> np.ndarray | None:
        """The next complete frame body, or ``None`` if more bytes are needed (or the stream ended).

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
            need = LENGTH_PREFIX.size - len(self._buf)
            if need > 0:
                take = min(need, n - pos)
                self._buf += data[pos : pos + take]
                pos += take
                if len(self._buf) < LENGTH_PREFIX.size:
                    return
            (length,) = LENGTH_PREFIX.unpack_from(self._buf, 0)
            if length > self._max_frame_size:
                self._fail(f"peer announced a frame of {length} bytes; the limit is {self._max_frame_size}")
            if length < HEADER_LENGTH.size:
                self._fail(f"peer announced a frame of {length} bytes, too short to hold a header length")
            self._buf.clear()
            self._body = self._new_body(length)
            self._filled = 0

    def _new_body(self, length: int) -> np.ndarray:
        """A buffer for a frame body of ``length`` bytes: the recycled one when nobody uses it any more.

        Whether the caller still holds a frame, a decoded tensor or anything derived from one (a torch
        tensor from ``torch.from_numpy``, a memoryview) shows in the spare's reference count: every view
        keeps its base alive. So a buffer is overwritten only once nothing can see it.
        """
        if length < _RECYCLE_MIN:
            return np.empty(length, dtype=np.uint8)
        getrefcount = getattr(sys, "getrefcount", None)  # CPython only; elsewhere never recycle
        if (
            self._spare is not None
            and len(self._spare) >= length
            and getrefcount is not None
            and getrefcount(self._spare) == 2
        ):  # our attribute and getrefcount's argument
            return self._spare[:length]
        self._spare = np.empty(length, dtype=np.uint8)
        return self._spare[:length]
