"""Sans-IO message connection: frames in, messages out; messages in, buffers out.

:class:`Connection` joins :class:`nodes.codec.FrameDecoder` with the message layer, in the manner of
``h11.Connection``: ``receive_data``/``get_buffer``/``buffer_updated`` take bytes, :meth:`next_event`
returns the next :class:`~nodes.messages.Message`, :data:`NEED_DATA` or :data:`CLOSED`, and
:meth:`send` returns the buffers to write. Tests join two of them in memory.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sized

from nodes.codec import (
    HANDSHAKE_MAX_FRAME_SIZE,
    MAX_FRAME_SIZE,
    BodyDecoder,
    Buffer,
    FrameDecoder,
    FrameEncoder,
)
from nodes.errors import LocalProtocolError
from nodes.messages import Message


class Sentinel(enum.Enum):
    NEED_DATA = "need-data"
    CLOSED = "closed"


NEED_DATA = Sentinel.NEED_DATA
CLOSED = Sentinel.CLOSED

Event = Message | Sentinel


class Connection:
    """One side of a message connection, with no I/O.

    Starts with the small :data:`~nodes.codec.HANDSHAKE_MAX_FRAME_SIZE` limit on received frames; call
    :meth:`handshake_done` once the peer is known, which raises it to ``max_frame_size``.
    """

    def __init__(self, *, max_frame_size: int = MAX_FRAME_SIZE, handshake_limit: bool = True) -> None:
        self._max_frame_size = max_frame_size
        first = min(HANDSHAKE_MAX_FRAME_SIZE, max_frame_size) if handshake_limit else max_frame_size
        self._decoder = FrameDecoder(first)
        self._bodies = BodyDecoder(Message)
        self._encoder = FrameEncoder(max_frame_size)
        # (bound once: next_event runs for every message)
        self._frames = self._decoder.frames
        self._next_frame = self._decoder.next_frame
        self._decode = self._bodies.decode
        self._send_closed = False
        self._handshaken = not handshake_limit

    def handshake_done(self) -> None:
        self._decoder.max_frame_size = self._max_frame_size
        self._handshaken = True

    @property
    def handshaken(self) -> bool:
        """True once :meth:`handshake_done` was called (or the connection started without the limit)."""
        return self._handshaken

    def release_buffers(self) -> None:
        """Give back the receive buffers kept for speed (see :meth:`FrameDecoder.release_buffers`)."""
        self._decoder.release_buffers()

    @property
    def retained_bytes(self) -> int:
        """Bytes of receive buffers kept for the next frames (see :attr:`FrameDecoder.retained_bytes`)."""
        return self._decoder.retained_bytes

    @property
    def max_frame_size(self) -> int:
        return self._max_frame_size

    # -- receiving ---------------------------------------------------------------------------------
    def receive_data(self, data: Buffer) -> None:
        """Feed bytes received from the peer; ``b""`` means the peer closed its side."""
        self._decoder.receive_data(data)

    @property
    def get_buffer(self) -> Callable[[int], memoryview]:
        """The decoder's ``get_buffer(sizehint)`` itself (a transport calls it for every read, so no
        wrapper of ours sits in between)."""
        return self._decoder.get_buffer

    @property
    def buffer_updated(self) -> Callable[[int], int]:
        """The decoder's ``buffer_updated(nbytes)`` itself (it returns :attr:`frames_pending`)."""
        return self._decoder.buffer_updated

    def next_event(self) -> Event:
        """The next message, :data:`NEED_DATA`, or :data:`CLOSED` after a clean end of stream.

        Raises :class:`~nodes.errors.RemoteProtocolError` for anything the peer got wrong.
        """
        if self._frames:  # a complete frame waits (next_frame's first case, without the call)
            message: Message = self._decode(self._frames.popleft())
            return message
        frame = self._next_frame()
        if frame is None:
            return CLOSED if self._decoder.eof else NEED_DATA
        message = self._decode(frame)
        return message

    @property
    def frames_pending(self) -> int:
        return self._decoder.frames_pending

    @property
    def frames(self) -> Sized:
        """The complete frames not yet turned into messages (to test for emptiness or count them)."""
        return self._frames

    # -- sending -----------------------------------------------------------------------------------
    def send(self, msg: Message) -> list[Buffer]:
        """The buffers that carry ``msg``, to be written in order (tensor bytes are not copied)."""
        if self._send_closed:
            raise LocalProtocolError("cannot send after send_eof()")
        return self._encoder.encode(msg)

    def send_eof(self) -> None:
        """Mark our side closed; further :meth:`send` calls raise :class:`LocalProtocolError`."""
        self._send_closed = True
