"""The messages the three nodes exchange, as frozen dataclasses, and their mapping to frame headers.

Every message travels as one frame (see :mod:`nodes.codec`) whose header is ``{"type": <name>,
<field>: <value>, ...}``; array fields travel as tensors. Constructing a message with bad fields raises
``ValueError`` (our bug); :func:`message_from_header` turns the same problems in a received header into
:class:`RemoteProtocolError` (the peer's).

Timestamps are ``time.monotonic_ns()`` of the node that stamps them (``CLOCK_MONOTONIC``, shared by all
processes and network namespaces of one host); see :mod:`nodes.timing` for the procedure definitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from nodes.errors import RemoteProtocolError

PROTOCOL_VERSION = 1

ROLES = ("test", "edge", "cloud")
EXIT_SOURCES = ("edge", "cloud")


def _check_int(name: str, value: object, *, minimum: int | None = 0) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{name} must be an int, got {type(value).__name__}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _check_opt_int(name: str, value: object, *, minimum: int | None = 0) -> None:
    if value is not None:
        _check_int(name, value, minimum=minimum)


def _check_str(name: str, value: object, *, optional: bool = False, choices: tuple[str, ...] = ()) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if choices and value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _check_opt_float(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__}")


def _check_array(
    name: str, value: object, dtype: str, ndim: int | None = None, length: int | None = None
) -> None:
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise ValueError(f"{name} must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {value.shape}")
    if length is not None and (value.ndim == 0 or value.shape[0] != length):
        raise ValueError(f"{name} must have {length} rows, got shape {value.shape}")


@dataclass(frozen=True)
class Hello:
    """First message of a client. ``model``/``exit``/``threshold`` are the configuration the client
    expects the server to run (``None``: no expectation); the server refuses a mismatch. ``session``
    is, from the test node to the edge, the session id the cloud assigned to the test node."""

    role: str
    version: int = PROTOCOL_VERSION
    model: str | None = None
    exit: int | None = None
    threshold: float | None = None
    token: str | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        _check_str("role", self.role, choices=ROLES)
        _check_int("version", self.version)
        _check_str("model", self.model, optional=True)
        _check_opt_int("exit", self.exit)
        _check_opt_float("threshold", self.threshold)
        _check_str("token", self.token, optional=True)
        _check_str("session", self.session, optional=True)


@dataclass(frozen=True)
class Ready:
    """A server's answer to an accepted :class:`Hello`: the configuration in force, and (from the cloud
    to a test node) the session id under which the edge forwards that test node's samples."""

    role: str
    version: int
    model: str
    exit: int
    threshold: float | None = None
    session: str | None = None

    def __post_init__(self) -> None:
        _check_str("role", self.role, choices=ROLES)
        _check_int("version", self.version)
        _check_str("model", self.model)
        _check_int("exit", self.exit)
        _check_opt_float("threshold", self.threshold)
        _check_str("session", self.session, optional=True)


@dataclass(frozen=True, eq=False)
class Batch:
    """Test -> edge: a batch of uint8 images (N, C, H, W) with their sample ids (labels stay home)."""

    batch_id: int
    sample_ids: np.ndarray
    images: np.ndarray
    t_sent_ns: int

    def __post_init__(self) -> None:
        _check_int("batch_id", self.batch_id)
        _check_array("sample_ids", self.sample_ids, "int64", 1)
        _check_array("images", self.images, "uint8", 4, len(self.sample_ids))
        _check_int("t_sent_ns", self.t_sent_ns, minimum=None)


@dataclass(frozen=True, eq=False)
class Predictions:
    """Edge -> test (confident samples) or cloud -> test (the rest).

    ``entropy`` is the normalized entropy at the local exit (the value compared with the threshold),
    ``cloud_entropy`` that of the cloud exit (cloud predictions only). The edge stamps
    ``t_edge_recv_ns``/``t_edge_done_ns``; the cloud passes them on and adds its own two stamps.
    """

    batch_id: int
    source: str
    sample_ids: np.ndarray
    preds: np.ndarray
    entropy: np.ndarray
    t_edge_recv_ns: int
    t_edge_done_ns: int
    t_cloud_recv_ns: int | None = None
    t_cloud_done_ns: int | None = None
    cloud_entropy: np.ndarray | None = None

    def __post_init__(self) -> None:
        _check_int("batch_id", self.batch_id)
        _check_str("source", self.source, choices=EXIT_SOURCES)
        _check_array("sample_ids", self.sample_ids, "int64", 1)
        n = len(self.sample_ids)
        _check_array("preds", self.preds, "int64", 1, n)
        _check_array("entropy", self.entropy, "float32", 1, n)
        for name in ("t_edge_recv_ns", "t_edge_done_ns"):
            _check_int(name, getattr(self, name), minimum=None)
        for name in ("t_cloud_recv_ns", "t_cloud_done_ns"):
            _check_opt_int(name, getattr(self, name), minimum=None)
        if self.source == "cloud" and (self.t_cloud_recv_ns is None or self.t_cloud_done_ns is None):
            raise ValueError("cloud predictions must carry t_cloud_recv_ns and t_cloud_done_ns")
        if self.cloud_entropy is not None:
            _check_array("cloud_entropy", self.cloud_entropy, "float32", 1, n)


@dataclass(frozen=True, eq=False)
class Features:
    """Edge -> cloud: the intermediate features of the samples that did not exit locally."""

    session: str
    batch_id: int
    sample_ids: np.ndarray
    features: np.ndarray
    entropy: np.ndarray
    t_edge_recv_ns: int
    t_edge_done_ns: int

    def __post_init__(self) -> None:
        _check_str("session", self.session)
        _check_int("batch_id", self.batch_id)
        _check_array("sample_ids", self.sample_ids, "int64", 1)
        n = len(self.sample_ids)
        _check_array("features", self.features, "float32", None, n)
        _check_array("entropy", self.entropy, "float32", 1, n)
        _check_int("t_edge_recv_ns", self.t_edge_recv_ns, minimum=None)
        _check_int("t_edge_done_ns", self.t_edge_done_ns, minimum=None)


@dataclass(frozen=True)
class Error:
    """Either direction: what went wrong, by which node; the sender closes the connection after it
    unless ``fatal`` is false (e.g. the edge telling a test node that one batch could not be forwarded)."""

    code: str
    message: str
    node: str
    batch_id: int | None = None
    fatal: bool = True

    def __post_init__(self) -> None:
        _check_str("code", self.code)
        _check_str("message", self.message)
        _check_str("node", self.node, choices=ROLES)
        _check_opt_int("batch_id", self.batch_id)
        if not isinstance(self.fatal, bool):
            raise ValueError("fatal must be a bool")


@dataclass(frozen=True)
class Shutdown:
    """A client is done with this connection (the server closes it after replying to what is queued)."""

    reason: str = "done"

    def __post_init__(self) -> None:
        _check_str("reason", self.reason)


@dataclass(frozen=True)
class ClockProbe:
    """NTP-style probe: the sender's clock when it was sent."""

    seq: int
    t_sent_ns: int

    def __post_init__(self) -> None:
        _check_int("seq", self.seq)
        _check_int("t_sent_ns", self.t_sent_ns, minimum=None)


@dataclass(frozen=True)
class ClockReply:
    """Answer to a :class:`ClockProbe`: the probe's stamp plus the responder's receive and reply stamps."""

    seq: int
    t_sent_ns: int
    t_recv_ns: int
    t_reply_ns: int

    def __post_init__(self) -> None:
        _check_int("seq", self.seq)
        for name in ("t_sent_ns", "t_recv_ns", "t_reply_ns"):
            _check_int(name, getattr(self, name), minimum=None)


Message = Hello | Ready | Batch | Predictions | Features | Error | Shutdown | ClockProbe | ClockReply

MESSAGE_TYPES: Mapping[str, type[Message]] = MappingProxyType(
    {
        "hello": Hello,
        "ready": Ready,
        "batch": Batch,
        "predictions": Predictions,
        "features": Features,
        "error": Error,
        "shutdown": Shutdown,
        "clock_probe": ClockProbe,
        "clock_reply": ClockReply,
    }
)
_TYPE_NAMES: Mapping[type, str] = MappingProxyType({cls: name for name, cls in MESSAGE_TYPES.items()})
_FIELDS: Mapping[type, tuple[str, ...]] = MappingProxyType(
    {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in MESSAGE_TYPES.values()}
)


def message_to_header(msg: Message) -> dict[str, Any]:
    """The frame header of ``msg``: its type name plus its fields (arrays stay numpy arrays)."""
    header: dict[str, Any] = {"type": _TYPE_NAMES[type(msg)]}
    for name in _FIELDS[type(msg)]:
        header[name] = getattr(msg, name)
    return header


def message_from_header(header: Mapping[str, Any]) -> Message:
    """Build the message a received header describes; :class:`RemoteProtocolError` if it is invalid."""
    name = header.get("type")
    cls = MESSAGE_TYPES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise RemoteProtocolError(f"unknown message type {name!r}")
    extra = set(header) - set(_FIELDS[cls]) - {"type"}
    if extra:
        raise RemoteProtocolError(f"{name} message has unknown fields {sorted(extra)}")
    kwargs = {k: v for k, v in header.items() if k != "type"}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"invalid {name} message: {exc}") from exc
