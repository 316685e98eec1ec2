"""The model work of the edge and cloud nodes: load a checkpoint, split it, check inputs, run a part.

Inputs from the network are checked against the model before they reach torch, so that a tensor of the
wrong shape closes the offending connection with a clear message (:class:`BadInput`) instead of raising
deep inside a convolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models import CheckpointMeta, CloudPart, EdgePart, load_checkpoint, normalized_entropy, partition
from nodes.errors import RemoteProtocolError

# A batch larger than this is refused: it is far above the paper's 32 and bounds the activation memory
# one message can make a node allocate (the frame size limit bounds only the input bytes).
MAX_BATCH = 1024


class BadInput(RemoteProtocolError):
    """A well-formed message whose tensors do not fit the model (wrong shape, dtype or batch size)."""


@dataclass(frozen=True, eq=False)
class ModelParts:
    """A checkpoint split at ``exit``: what the edge and the cloud run, plus the shapes they exchange."""

    kind: str
    exit: int
    edge: EdgePart
    cloud: CloudPart
    meta: CheckpointMeta
    image_shape: tuple[int, int, int]
    feature_shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        if self.exit < 0:
            raise ValueError(f"exit must be >= 0, got {self.exit}")


def load_parts(checkpoint: str | Path, exit: int) -> ModelParts:
    """Load ``checkpoint`` and split it at local exit ``exit`` (0: everything runs in the cloud).

    Raises :class:`models.ModelError` (a checkpoint or exit the user must fix).
    """
    model, meta = load_checkpoint(checkpoint)
    edge, cloud = partition(model, exit)
    cfg = meta.config
    return ModelParts(
        kind=cfg.kind,
        exit=exit,
        edge=edge,
        cloud=cloud,
        meta=meta,
        image_shape=(cfg.in_channels, cfg.image_size, cfg.image_size),
        feature_shape=edge.feature_shape(),
    )


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


def run_edge(parts: ModelParts, images: np.ndarray, threshold: float) -> EdgeOutput:
    """Normalize uint8 ``images``, run blocks 1..k and exit head k, and split by ε < ``threshold``."""
    _check_batch("images", images, "uint8", parts.image_shape)
    with torch.inference_mode():
        x = parts.edge.prepare(torch.from_numpy(images))
        features, logits = parts.edge(x)
        n = images.shape[0]
        if logits is None:  # exit 0: no head on the edge, every sample goes to the cloud
            preds = np.full(n, -1, dtype=np.int64)
            entropy = np.full(n, math.nan, dtype=np.float32)
            local = np.zeros(n, dtype=bool)
        else:
            eps = normalized_entropy(logits)
            preds = logits.argmax(dim=1).numpy().astype(np.int64, copy=False)
            entropy = eps.numpy().astype(np.float32, copy=False)
            local = entropy < threshold
        feats = features.contiguous().numpy()
    return EdgeOutput(preds=preds, entropy=entropy, local=local, features=feats)


def run_cloud(parts: ModelParts, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run blocks k+1..9 and the cloud head on ``features``: (preds int64, cloud-exit entropy float32)."""
    _check_batch("features", features, "float32", parts.feature_shape)
    with torch.inference_mode():
        logits = parts.cloud(torch.from_numpy(features))
        preds = logits.argmax(dim=1).numpy().astype(np.int64, copy=False)
        entropy = normalized_entropy(logits).numpy().astype(np.float32, copy=False)
    return preds, entropy


def set_threads(threads: int | None) -> None:
    """Use ``threads`` torch threads (None: torch's default). Called once, by the node's entry point."""
    if threads is not None:
        torch.set_num_threads(threads)
