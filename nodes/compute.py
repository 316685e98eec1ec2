"""The model work of the edge and cloud nodes: load a checkpoint, split it, check inputs, run a part.

Inputs from the network are checked against the model before they reach torch, so that a tensor of the
wrong shape closes the offending connection with a clear message (:class:`BadInput`) instead of raising
deep inside a convolution.
"""

from __future__ import annotations

import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from contract.rules import exits_locally
from models import ModelError
from models.checkpoint import CheckpointMeta, load_model
from models.devices import resolve_device, synchronize
from models.entropy import normalized_entropy
from models.partition import CloudPart, EdgePart, partition
from models.protocol import MultiExitModel, model_device
from nodes.errors import RemoteProtocolError
from nodes.messages import Configure, Error

# A batch larger than this is refused: it is far above the paper's 32 and bounds the activation memory
# one message can make a node allocate (the frame size limit bounds only the input bytes).
MAX_BATCH = 1024


class BadInput(RemoteProtocolError):
    """A well-formed message whose tensors do not fit the model (wrong shape, dtype or batch size)."""


@dataclass(frozen=True, eq=False)
class ModelParts:
    """A checkpoint split at ``exit``: what the edge and the cloud run, on which ``device``, plus the
    shapes they exchange (``feature_shape``: after the batch dimension, any number of dimensions)."""

    kind: str
    exit: int
    edge: EdgePart
    cloud: CloudPart
    meta: CheckpointMeta
    image_shape: tuple[int, int, int]
    feature_shape: tuple[int, ...]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __post_init__(self) -> None:
        if self.exit < 0:
            raise ValueError(f"exit must be >= 0, got {self.exit}")


def load_parts(
    checkpoint: str | Path, exit: int, *, spec: str | None = None, device: str = "cpu"
) -> ModelParts:
    """Load ``checkpoint`` (a model built by ``spec``, for one not of this package) onto ``device`` and
    split it at local exit ``exit`` (0: everything runs in the cloud).

    Raises :class:`models.ModelError` (a checkpoint, spec, device or exit the user must fix).
    """
    return split_parts(*_load(checkpoint, spec, resolve_device(device)), exit)


def _load(
    checkpoint: str | Path, spec: str | None, device: torch.device
) -> tuple[MultiExitModel, CheckpointMeta]:
    """The model of ``checkpoint`` (built by ``spec``), moved onto ``device``, and its metadata."""
    model, meta = load_model(checkpoint, spec)
    return model.to(device), meta


def split_parts(model: MultiExitModel, meta: CheckpointMeta, exit: int) -> ModelParts:
    """``model`` (loaded with ``meta``, on its device) split at local exit ``exit``; the parts share
    its parameters."""
    edge, cloud = partition(model, exit)
    return ModelParts(
        kind=meta.config.kind,
        exit=exit,
        edge=edge,
        cloud=cloud,
        meta=meta,
        image_shape=meta.input.image_shape,
        feature_shape=edge.feature_shape(),
        device=model_device(cast(nn.Module, model)),
    )


#: Models a node keeps loaded for :class:`PartsCache`. The paper's grid uses nine checkpoints (SEM-1..8
#: and MEM, whose eight exits share one loaded model); a shipped model holds about 1 MiB of parameters,
#: so a full cache adds a few tens of MiB to the node -- the edge's memory is a reported figure, and a
#: node that serves a study carries the models it ran before (see docs/nodes.md).
MODELS_CACHED = 16

_FileKey = tuple[str, int, int]  # (resolved path, mtime in ns, size): a file rewritten in place is new


class PartsCache:
    """:class:`ModelParts` by (checkpoint file, exit), for a node that is reconfigured between runs.

    A checkpoint is loaded once (while its file is unchanged) and split at each exit asked for; the
    parts of one file share its parameters. At most ``size`` files stay loaded, the least recently used
    dropped first. Owned by one node (no state at module level).
    """

    def __init__(self, size: int = MODELS_CACHED, *, spec: str | None = None, device: str = "cpu") -> None:
        """``spec``: the factory of the node's ``--model-spec`` (checkpoints of this package's models
        need none); ``device``: where the models run (:class:`models.ModelError` if it is missing)."""
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._size = size
        self._spec = spec
        self._device = resolve_device(device)
        self._models: OrderedDict[_FileKey, tuple[MultiExitModel, CheckpointMeta]] = OrderedDict()
        self._parts: dict[tuple[_FileKey, int], ModelParts] = {}

    def __len__(self) -> int:
        """How many checkpoint files are loaded."""
        return len(self._models)

    def get(self, checkpoint: str | Path, exit: int) -> ModelParts:
        """The parts of ``checkpoint`` at ``exit``, loading the file if needed; raises
        :class:`models.ModelError` as :func:`load_parts` does."""
        path = Path(checkpoint)
        try:
            st = os.stat(path)
        except OSError:
            return load_parts(path, exit, spec=self._spec)  # (which says what is wrong with the file)
        key: _FileKey = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        parts = self._parts.get((key, exit))
        if parts is not None:
            self._models.move_to_end(key)
            return parts
        loaded = self._models.get(key)
        if loaded is None:
            loaded = _load(path, self._spec, self._device)
        parts = split_parts(*loaded, exit)  # (raises for an exit the model lacks: nothing is kept then)
        self._models[key] = loaded
        self._models.move_to_end(key)
        self._parts[(key, exit)] = parts
        while len(self._models) > self._size:
            dropped, _ = self._models.popitem(last=False)
            for k in [k for k in self._parts if k[0] == dropped]:
                del self._parts[k]
        return parts


def configure_parts(cache: PartsCache, msg: Configure, *, node: str, others: int = 0) -> ModelParts | Error:
    """The parts ``msg`` asks the node ``node`` to run, or the non-fatal :class:`Error` to answer with
    (``others`` test nodes still connected, whose runs would change under them; a checkpoint that cannot
    be loaded or split at that exit, or that is not the ``model`` or ``sha256`` the sender expects).
    Loads the checkpoint, so it blocks: a node calls it between runs."""
    if others:
        return Error(
            "busy",
            f"the {node} node cannot be reconfigured while {others} other test node(s) are "
            "connected: their runs would change under them",
            node,
            fatal=False,
        )

    def refuse(code: str, why: str) -> Error:
        text = f"the {node} node cannot run {msg.checkpoint} at exit {msg.exit}: {why}"
        return Error(code, text, node, fatal=False)

    if node == "edge" and msg.threshold is None:
        return refuse("configure", "the edge needs a threshold")
    try:
        parts = cache.get(msg.checkpoint, msg.exit)
    except ModelError as exc:
        return refuse("bad-checkpoint", str(exc))
    if msg.model is not None and parts.kind != msg.model:
        return refuse("config-mismatch", f"it holds a {parts.kind} model, not {msg.model}")
    if msg.sha256 is not None and parts.meta.sha256 != msg.sha256:
        return refuse(
            "config-mismatch",
            f"its SHA-256 is {parts.meta.sha256[:12]}…, not the {msg.sha256[:12]}… expected "
            "(the file changed since it was checked)",
        )
    return parts


@dataclass(frozen=True, eq=False)
class EdgeOutput:
    """The edge's verdict on one batch: per-sample prediction and entropy, the local mask, features."""

    preds: np.ndarray  # int64 (N,)
    entropy: np.ndarray  # float32 (N,), NaN when the edge has no exit head (exit 0)
    local: np.ndarray  # bool (N,): ε < T
    features: np.ndarray  # float32 (N, C, H, W), the input of the cloud part


def _check_batch(name: str, arr: np.ndarray, dtype: str, shape: tuple[int, ...]) -> None:
    if arr.dtype != np.dtype(dtype) or arr.ndim != 1 + len(shape) or tuple(arr.shape[1:]) != shape:
        raise BadInput(
            f"{name} of dtype {arr.dtype} and shape {tuple(arr.shape)} do not fit the model, "
            f"which takes {np.dtype(dtype)} (N, {', '.join(map(str, shape))})"
        )
    if not 1 <= arr.shape[0] <= MAX_BATCH:
        raise BadInput(f"{name} hold {arr.shape[0]} samples; a batch must hold 1..{MAX_BATCH}")


def run_edge(parts: ModelParts, images: np.ndarray, threshold: float, temperature: float = 1.0) -> EdgeOutput:
    """Normalize uint8 ``images``, run blocks 1..k and exit head k, and split by ε < ``threshold``,
    ε taken of the head's logits divided by ``temperature`` (a calibration's; predictions unchanged).

    On a GPU the images move to it once, as uint8, and the results come back once; the device is
    synchronized before returning, so that the caller's clock times the compute, not its launch.
    """
    _check_batch("images", images, "uint8", parts.image_shape)
    device = parts.device
    with torch.inference_mode():
        x = parts.edge.prepare(torch.from_numpy(images).to(device))
        features, logits = parts.edge(x)
        n = images.shape[0]
        if logits is None:  # exit 0: no head on the edge, every sample goes to the cloud
            preds = np.full(n, -1, dtype=np.int64)
            entropy = np.full(n, math.nan, dtype=np.float32)
            local = np.zeros(n, dtype=bool)
        else:
            eps = normalized_entropy(logits if temperature == 1.0 else logits / temperature)
            preds = logits.argmax(dim=1).cpu().numpy().astype(np.int64, copy=False)
            entropy = eps.cpu().numpy().astype(np.float32, copy=False)
            local = exits_locally(entropy, threshold)
        feats = features.contiguous().cpu().numpy()
        synchronize(device)
    return EdgeOutput(preds=preds, entropy=entropy, local=local, features=feats)


def run_cloud(parts: ModelParts, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run stages k+1..n and the final head on ``features``: (preds int64, cloud-exit entropy float32),
    the features moved to the parts' device once and the device synchronized before returning."""
    _check_batch("features", features, "float32", parts.feature_shape)
    device = parts.device
    with torch.inference_mode():
        logits = parts.cloud(torch.from_numpy(features).to(device))
        preds = logits.argmax(dim=1).cpu().numpy().astype(np.int64, copy=False)
        entropy = normalized_entropy(logits).cpu().numpy().astype(np.float32, copy=False)
        synchronize(device)
    return preds, entropy


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch threads (None: torch's default). Called once, by the node's entry point."""
    if threads is not None:
        torch.set_num_threads(threads)
