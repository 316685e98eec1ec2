"""Split a model at its active local exit into the part the edge runs and the part the cloud runs.

Edge: blocks 1..k, exit head k and the normalized entropy. Cloud: blocks k+1..9 and the cloud head.
Feeding the edge's features to the cloud part gives exactly the full model's cloud-exit output.

Exit 0 is the paper's baseline deployment (the standard CNN "traditionally deployed at the central
cloud"): the edge has no layers and no exit head, and forwards every (normalized) input to the cloud.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from models.cnn import NUM_BLOCKS, MultiExitCNN
from models.errors import ModelError


class EdgePart(nn.Module):
    """Blocks 1..k and exit head k: ``forward(x)`` gives ``(features, logits)``.

    With exit 0 there is no head and ``logits`` is ``None``: every sample goes to the cloud.
    """

    def __init__(self, model: MultiExitCNN, exit: int) -> None:
        super().__init__()
        self.exit = exit
        self.config = model.config
        self.blocks = nn.Sequential(*list(model.blocks)[:exit])
        self.head: nn.Module | None = model.heads[str(exit)] if exit else None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.blocks(x)
        return features, (self.head(features) if self.head is not None else None)

    def prepare(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 images (N, C, H, W) as received from the test node → normalized float input."""
        t = torch.as_tensor(images)
        c, s = self.config.in_channels, self.config.image_size
        if t.dtype != torch.uint8 or t.ndim != 4 or tuple(t.shape[1:]) != (c, s, s):
            raise ModelError(
                f"this model takes uint8 images of shape (N, {c}, {s}, {s}); got {t.dtype} {tuple(t.shape)}"
            )
        mean = torch.tensor(self.config.input_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.config.input_std, dtype=torch.float32).view(1, -1, 1, 1)
        return (t.to(torch.float32) / 255.0 - mean) / std

    def feature_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the features this part sends to the cloud."""
        size = self.config.image_size
        if self.exit == 0:
            return (self.config.in_channels, size, size)
        for k in range(1, self.exit + 1):
            if k in self.config.pool_after:
                size //= 2
        return (self.config.widths[self.exit - 1], size, size)


class CloudPart(nn.Module):
    """Blocks k+1..9 and the cloud head: ``forward(features)`` gives the cloud-exit logits."""

    def __init__(self, model: MultiExitCNN, exit: int) -> None:
        super().__init__()
        self.exit = exit
        self.blocks = nn.Sequential(*list(model.blocks)[exit:])
        self.head = model.cloud_head

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.blocks(features))


def partition(model: MultiExitCNN, exit: int) -> tuple[EdgePart, CloudPart]:
    """The edge and cloud parts of ``model`` with local exit ``exit`` active, both in eval mode.

    ``exit=0`` (any model) puts no layer on the edge. The parts share parameters with ``model``.
    """
    available = model.config.local_exits
    if exit != 0 and exit not in available:
        if not available:
            raise ModelError(
                f"the {model.config.name} model has no local exit: use exit 0 (everything runs in the cloud)"
            )
        raise ModelError(
            f"exit {exit} is not available in {model.config.name}: it has local exit(s) "
            f"{', '.join(map(str, available))} (and the cloud exit after block {NUM_BLOCKS})"
        )
    model.eval()
    return EdgePart(model, exit).eval(), CloudPart(model, exit).eval()
