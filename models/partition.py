"""Split a multi-exit model at its active local exit into the part the edge runs and the part the cloud runs.

Edge: stages 1..k, exit head k and the normalized entropy. Cloud: stages k+1..n and the final head.
Feeding the edge's features to the cloud part gives exactly the full model's final output. Any
:class:`models.protocol.MultiExitModel` splits this way; for the paper's CNN the stages are its nine
blocks and the final head its cloud head.

Exit 0 is the paper's baseline deployment (the standard CNN "traditionally deployed at the central
cloud"): the edge has no layers and no exit head, and forwards every (normalized) input to the cloud.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.errors import ModelError
from models.protocol import MultiExitModel, cut_shape, local_exits, model_name


class EdgePart(nn.Module):
    """Stages 1..k and exit head k: ``forward(x)`` gives ``(features, logits)``.

    With exit 0 there is no head and ``logits`` is ``None``: every sample goes to the cloud.
    """

    def __init__(self, model: MultiExitModel, exit: int) -> None:
        super().__init__()
        self.exit = exit
        self.input_spec = model.input_spec
        #: The paper CNN's ``ModelConfig`` (None for another model).
        self.config: Any = getattr(model, "config", None)
        self.blocks = nn.Sequential(*list(model.stages)[:exit])
        self.head: nn.Module | None = model.exit_heads[exit] if exit else None
        self._feature_shape: tuple[int, ...] | None = None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        features = self.blocks(x)
        return features, (self.head(features) if self.head is not None else None)

    def prepare(self, images: np.ndarray | Tensor) -> Tensor:
        """uint8 images (N, C, H, W) as received from the test node → normalized float input, on the
        device the images are on."""
        return self.input_spec.normalize(torch.as_tensor(images))

    def feature_shape(self) -> tuple[int, ...]:
        """Shape (after the batch dimension) of the features this part sends to the cloud, e.g. (C, H, W)."""
        if self._feature_shape is None:
            self._feature_shape = cut_shape(self.blocks, self.input_spec, what=f"exit {self.exit}")
        return self._feature_shape


class CloudPart(nn.Module):
    """Stages k+1..n and the final head: ``forward(features)`` gives the final exit's logits."""

    def __init__(self, model: MultiExitModel, exit: int) -> None:
        super().__init__()
        self.exit = exit
        self.blocks = nn.Sequential(*list(model.stages)[exit:])
        self.head = model.final_head

    def forward(self, features: Tensor) -> Tensor:
        logits: Tensor = self.head(self.blocks(features))
        return logits


def partition(model: MultiExitModel, exit: int) -> tuple[EdgePart, CloudPart]:
    """The edge and cloud parts of ``model`` with local exit ``exit`` active, both in eval mode.

    ``exit=0`` (any model) puts no layer on the edge. The parts share parameters with ``model``.
    """
    available = local_exits(model)
    name = model_name(model)
    if exit != 0 and exit not in available:
        if not available:
            raise ModelError(f"the {name} model has no local exit: use exit 0 (everything runs in the cloud)")
        raise ModelError(
            f"exit {exit} is not available in {name}: it has local exit(s) "
            f"{', '.join(map(str, available))} (and the cloud exit after stage {len(model.stages)})"
        )
    model.eval()
    return EdgePart(model, exit).eval(), CloudPart(model, exit).eval()
