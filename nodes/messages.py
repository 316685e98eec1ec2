"""The messages the three nodes exchange, as frozen ``msgspec.Struct`` types, and their frame headers.

Every message travels as one frame (see :mod:`nodes.codec`) whose msgpack header is the message's
struct encoded as a map, ``{"type": <name>, <field>: <value>, ...}`` (fields still at their default are
left out); array fields travel as tensors. msgspec decodes a received header straight into the message
type named by ``"type"`` and checks every scalar field against its annotation (type, range, choices)
in C, so a valid message costs no Python validation per field. What annotations cannot say -- the
dtype, rank and length of the arrays, and rules across fields -- is checked in ``__post_init__``, which
runs both when we construct a message (``ValueError``: our bug) and when one is decoded
(:class:`RemoteProtocolError`: the peer's). Scalar fields of a message we construct are checked by
mypy, not at run time: msgspec does not type-check ``__init__`` arguments.

Timestamps are ``time.monotonic_ns()`` of the node that stamps them (``CLOCK_MONOTONIC``, shared by all
processes and network namespaces of one host); see :mod:`nodes.timing` for the procedure definitions.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

import msgspec
import numpy as np

from contract.names import ExitSource
from contract.rules import THRESHOLD_MAX, THRESHOLD_MIN

#: Version 2 added :class:`Configure` and the checkpoint fields of :class:`Ready`; a node refuses a
#: hello of another version with a message naming both (see :mod:`nodes.handshake`).
PROTOCOL_VERSION = 2

Role = Literal["test", "edge", "cloud"]
ROLES: tuple[str, ...] = get_args(Role)
NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
Threshold = Annotated[float, msgspec.Meta(ge=THRESHOLD_MIN, le=THRESHOLD_MAX)]


def _check_array(
    name: str, value: object, dtype: np.dtype[Any], ndim: int | None = None, length: int | None = None
) -> None:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype}, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    if length is not None and (value.ndim == 0 or value.shape[0] != length):
        raise ValueError(f"{name} must have {length} rows, got shape {value.shape}")


_UINT8 = np.dtype("uint8")
_INT64 = np.dtype("int64")
_FLOAT32 = np.dtype("float32")


class _Message(msgspec.Struct, frozen=True, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Base of every message: frozen, tagged by ``"type"``, unknown fields refused."""


class _ArrayMessage(_Message, frozen=True, eq=False):
    """A message carrying arrays: compared by identity (array equality is elementwise)."""


class Hello(_Message, frozen=True, tag="hello"):
    """First message of a client. ``model``/``exit``/``threshold`` are the configuration the client
    expects the server to run (``None``: no expectation); the server refuses a mismatch. ``session``
    is, from the test node to the edge, the session id the cloud assigned to the test node."""

    role: Role
    version: NonNegInt = PROTOCOL_VERSION
    model: str | None = None
    exit: NonNegInt | None = None
    threshold: float | None = None
    token: str | None = None
    session: str | None = None
    # From the test node: when its process started (its monotonic clock), which is time 0 of a run's
    # link schedule; an edge with the oracle exit policy places each batch on the schedule by it.
    started_ns: int | None = None


class Ready(_Message, frozen=True, tag="ready"):
    """A server's answer to an accepted :class:`Hello` or :class:`Configure`: the configuration in
    force (``checkpoint``: the file's path as the node opened it, ``sha256``: its digest), and (from the
    cloud to a test node) the session id under which the edge forwards that test node's samples."""

    role: Role
    version: NonNegInt
    model: str
    exit: NonNegInt
    threshold: float | None = None
    session: str | None = None
    checkpoint: str | None = None
    sha256: str | None = None
    clock_domain: str | None = None  # which clock its stamps are on (nodes.timing.clock_domain)


class Configure(_Message, frozen=True, tag="configure"):
    """Test -> cloud, then test -> edge, between runs: run the model of ``checkpoint`` split at
    ``exit`` (the edge: with ``threshold``) from now on. ``model`` and ``sha256``, when given, are what
    the sender expects the checkpoint to hold; the node refuses a checkpoint that differs.

    Answered with :class:`Ready` (the configuration now in force) or a non-fatal :class:`Error` (the
    previous configuration stays in force). The node's command-line configuration is only the first
    one. Sent on a connection that passed the handshake (so the token applies), and only when nothing
    is in flight: the node refuses it while another test node is connected.
    """

    checkpoint: str
    exit: NonNegInt
    threshold: Threshold | None = None
    model: str | None = None
    sha256: str | None = None


class Batch(_ArrayMessage, frozen=True, tag="batch"):
    """Test -> edge: a batch of uint8 images (N, C, H, W) with their sample ids (labels stay home)."""

    batch_id: NonNegInt
    sample_ids: np.ndarray
    images: np.ndarray
    t_sent_ns: int

    def __post_init__(self) -> None:
        _check_array("sample_ids", self.sample_ids, _INT64, 1)
        _check_array("images", self.images, _UINT8, 4, len(self.sample_ids))


class Predictions(_ArrayMessage, frozen=True, tag="predictions"):
    """Edge -> test (confident samples) or cloud -> test (the rest).

    ``entropy`` is the normalized entropy at the local exit (the value compared with the threshold),
    ``cloud_entropy`` that of the cloud exit (cloud predictions only). The edge stamps
    ``t_edge_recv_ns``/``t_edge_done_ns``; the cloud passes them on and adds its own two stamps.
    """

    batch_id: NonNegInt
    source: ExitSource
    sample_ids: np.ndarray
    preds: np.ndarray
    entropy: np.ndarray
    t_edge_recv_ns: int
    t_edge_done_ns: int
    t_cloud_recv_ns: int | None = None
    t_cloud_done_ns: int | None = None
    cloud_entropy: np.ndarray | None = None
    # Set by an edge whose exit policy is not fixed (nodes.policy), on its own predictions only: the
    # exit this batch was cut at, and why (the policy's name and its estimates when it chose).
    exit: NonNegInt | None = None
    decision: dict[str, float | str | None] | None = None

    def __post_init__(self) -> None:
        _check_array("sample_ids", self.sample_ids, _INT64, 1)
        n = len(self.sample_ids)
        _check_array("preds", self.preds, _INT64, 1, n)
        _check_array("entropy", self.entropy, _FLOAT32, 1, n)
        if self.source == "cloud" and (self.t_cloud_recv_ns is None or self.t_cloud_done_ns is None):
            raise ValueError("cloud predictions must carry t_cloud_recv_ns and t_cloud_done_ns")
        if self.cloud_entropy is not None:
            _check_array("cloud_entropy", self.cloud_entropy, _FLOAT32, 1, n)


class Features(_ArrayMessage, frozen=True, tag="features"):
    """Edge -> cloud: the intermediate features of the samples that did not exit locally.

    ``exit`` is the exit the batch was cut at (None: the exit the cloud is configured with, as every
    batch of a fixed-exit edge is); ``ack`` asks the cloud for a :class:`Received` once it has computed
    the batch, from which an adaptive edge estimates the link.
    """

    session: str
    batch_id: NonNegInt
    sample_ids: np.ndarray
    features: np.ndarray
    entropy: np.ndarray
    t_edge_recv_ns: int
    t_edge_done_ns: int
    exit: NonNegInt | None = None
    ack: bool = False

    def __post_init__(self) -> None:
        _check_array("sample_ids", self.sample_ids, _INT64, 1)
        n = len(self.sample_ids)
        _check_array("features", self.features, _FLOAT32, None, n)
        _check_array("entropy", self.entropy, _FLOAT32, 1, n)


class Error(_Message, frozen=True, tag="error"):
    """Either direction: what went wrong, by which node; the sender closes the connection after it
    unless ``fatal`` is false (e.g. the edge telling a test node that one batch could not be forwarded)."""

    code: str
    message: str
    node: str  # one of ROLES (checked below: callers pass the name of the node they run as)
    batch_id: NonNegInt | None = None
    fatal: bool = True

    def __post_init__(self) -> None:
        if self.node not in ROLES:
            raise ValueError(f"node must be one of {ROLES}, got {self.node!r}")


class Shutdown(_Message, frozen=True, tag="shutdown"):
    """A client is done with this connection (the server closes it after replying to what is queued)."""

    reason: str = "done"


class ClockProbe(_Message, frozen=True, tag="clock_probe"):
    """NTP-style probe: the sender's clock when it was sent."""

    seq: NonNegInt
    t_sent_ns: int


class ClockReply(_Message, frozen=True, tag="clock_reply"):
    """Answer to a :class:`ClockProbe`: the probe's stamp plus the responder's receive and reply stamps."""

    seq: NonNegInt
    t_sent_ns: int
    t_recv_ns: int
    t_reply_ns: int


class Received(_Message, frozen=True, tag="received"):
    """Cloud -> edge, for :class:`Features` sent with ``ack``: when the cloud started and finished
    computing the batch (its clock). The edge subtracts the difference from the round trip it saw."""

    batch_id: NonNegInt
    t_cloud_recv_ns: int
    t_cloud_done_ns: int


# (Union[...] rather than |: the name must also be usable as a runtime type for msgspec on Python 3.10)
Message = Union[  # noqa: UP007
    Hello, Ready, Configure, Batch, Predictions, Features, Error, Shutdown, ClockProbe, ClockReply, Received
]
