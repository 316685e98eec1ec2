"""The three processes of the paper's testbed (test, edge, cloud) and the framed-tensor protocol they speak.

Programs: ``python -m nodes.cloud``, ``python -m nodes.edge``, ``python -m nodes.test`` (see ``--help``).
"""

from nodes.codec import (
    HANDSHAKE_MAX_FRAME_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    decode_frame,
    encode_frame,
    encode_frame_bytes,
)
from nodes.errors import (
    HandshakeError,
    LocalProtocolError,
    NodeError,
    NodeTimeout,
    PeerError,
    ProtocolError,
    RemoteProtocolError,
    UsageError,
)
from nodes.messages import (
    PROTOCOL_VERSION,
    Batch,
    ClockProbe,
    ClockReply,
    Error,
    Features,
    Hello,
    Message,
    Predictions,
    Ready,
    Shutdown,
)
from nodes.protocol import CLOSED, NEED_DATA, Connection
from nodes.records import RecordsResult, write_records
from nodes.timing import BatchStamps, ClockEstimate, clock_offset, procedures_ms
from nodes.transport import FramedStream, Listener, open_stream

__all__ = [
    "CLOSED",
    "HANDSHAKE_MAX_FRAME_SIZE",
    "MAX_FRAME_SIZE",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "Batch",
    "BatchStamps",
    "ClockEstimate",
    "ClockProbe",
    "ClockReply",
    "Connection",
    "Error",
    "Features",
    "FrameDecoder",
    "FramedStream",
    "HandshakeError",
    "Hello",
    "Listener",
    "LocalProtocolError",
    "Message",
    "NodeError",
    "NodeTimeout",
    "PeerError",
    "Predictions",
    "ProtocolError",
    "Ready",
    "RecordsResult",
    "RemoteProtocolError",
    "Shutdown",
    "UsageError",
    "clock_offset",
    "decode_frame",
    "encode_frame",
    "encode_frame_bytes",
    "open_stream",
    "procedures_ms",
    "write_records",
]
