"""The paper's CNN (§3, Fig. 1–3): nine convolutional blocks with local exit heads.

One file for the whole model family, as nanoGPT does: a frozen config and the module that it builds.

- block = 2 × (conv3×3 → BatchNorm → ReLU), then 2×2 average pooling after the blocks in ``pool_after``;
- exit head ("fully connected block") = global average pool → linear;
- ``standard`` has the cloud exit only, ``sem`` one local exit after block k plus the cloud exit, ``mem``
  local exits after every block 1..8 plus the cloud exit (one of them is active at inference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from contract.names import CLOUD, LOCAL_EXITS, MODEL_KINDS, NUM_BLOCKS, ModelKind
from contract.rules import check_model_exit
from models.errors import ModelError
from models.protocol import InputSpec

# Default profile, chosen for small CPU machines: one Fashion-MNIST epoch (60 000 images, batch 128, all
# nine exits of a MEM trained) must stay under about 2 minutes on 2 cores (docs/design-notes.md has
# the timings against other pooling layouts). Pooling after blocks 1, 2 and 4
# (28→14→7→3) keeps most of the depth on small maps where it is cheap; widths doubling twice give
# ~0.28 M parameters (~1.1 MB of float32 per checkpoint), enough for ≥ 90 % test accuracy at the cloud
# exit after a few epochs and small enough that the ten shipped checkpoints stay under ~15 MB.
DEFAULT_WIDTHS: tuple[int, ...] = (16, 16, 32, 32, 32, 32, 64, 64, 64)
DEFAULT_POOL_AFTER: tuple[int, ...] = (1, 2, 4)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model; stored inside every checkpoint."""

    kind: ModelKind
    exit: int | None = None
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    pool_after: tuple[int, ...] = DEFAULT_POOL_AFTER
    in_channels: int = 1
    num_classes: int = 10
    image_size: int = 28
    # Per-channel input normalisation, applied to images scaled to [0, 1] (set from the training data).
    input_mean: tuple[float, ...] = (0.5,)
    input_std: tuple[float, ...] = (0.5,)
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {', '.join(MODEL_KINDS)}, not {self.kind!r}")
        if self.kind == "sem":
            if self.exit is None or self.exit not in LOCAL_EXITS:
                raise ValueError(f"a sem model needs an exit in 1..{LOCAL_EXITS[-1]}, not {self.exit!r}")
        elif self.exit is not None:
            raise ValueError(f"a {self.kind} model takes no fixed exit (got {self.exit})")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "pool_after", tuple(sorted(int(p) for p in self.pool_after)))
        object.__setattr__(self, "input_mean", tuple(float(v) for v in self.input_mean))
        object.__setattr__(self, "input_std", tuple(float(v) for v in self.input_std))
        if len(self.widths) != NUM_BLOCKS or min(self.widths) < 1:
            raise ValueError(f"widths must be {NUM_BLOCKS} positive channel counts, got {self.widths}")
        if any(p < 1 or p > NUM_BLOCKS for p in self.pool_after) or len(set(self.pool_after)) != len(
            self.pool_after
        ):
            raise ValueError(
                f"pool_after must name distinct blocks in 1..{NUM_BLOCKS}, got {self.pool_after}"
            )
        if self.image_size // (2 ** len(self.pool_after)) < 1:
            raise ValueError(f"{len(self.pool_after)} poolings shrink a {self.image_size}px image to nothing")
        if self.in_channels < 1 or self.num_classes < 2:
            raise ValueError("in_channels must be ≥ 1 and num_classes ≥ 2")
        if len(self.input_mean) != self.in_channels or len(self.input_std) != self.in_channels:
            raise ValueError("input_mean and input_std need one value per input channel")
        if min(self.input_std) <= 0:
            raise ValueError("input_std values must be positive")

    @property
    def local_exits(self) -> tuple[int, ...]:
        """The local exits this model has heads for."""
        if self.kind == "standard":
            return ()
        if self.kind == "sem":
            assert self.exit is not None  # guaranteed by __post_init__
            return (self.exit,)
        return LOCAL_EXITS

    @property
    def exit_keys(self) -> tuple[str, ...]:
        """Names of all exits, in network order: local exits as "1".."8", then "cloud"."""
        return (*(str(k) for k in self.local_exits), CLOUD)

    @property
    def name(self) -> str:
        """Short display name: ``standard``, ``sem-3`` or ``mem``."""
        return f"sem-{self.exit}" if self.kind == "sem" else self.kind

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["pool_after"] = list(self.pool_after)
        d["input_mean"] = list(self.input_mean)
        d["input_std"] = list(self.input_std)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {', '.join(sorted(unknown))}")
        return cls(**data)


class ConvBlock(nn.Sequential):
    """2 × (conv3×3 → BatchNorm → ReLU), optionally followed by 2×2 average pooling."""

    def __init__(self, c_in: int, c_out: int, pool: bool) -> None:
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers += [
                nn.Conv2d(c, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        if pool:
            layers.append(nn.AvgPool2d(2))
        super().__init__(*layers)


class ExitHead(nn.Sequential):
    """The paper's fully connected block: global average pool → linear, giving class logits."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


class MultiExitCNN(nn.Module):
    """Nine conv blocks with exit heads after the blocks of ``config.local_exits`` and a cloud head.

    A :class:`models.protocol.MultiExitModel`: its stages are the blocks, its final head the cloud head.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_channels, *config.widths)
        self.blocks = nn.ModuleList(
            ConvBlock(widths[i], widths[i + 1], pool=(i + 1) in config.pool_after) for i in range(NUM_BLOCKS)
        )
        self.heads = nn.ModuleDict(
            {str(k): ExitHead(config.widths[k - 1], config.num_classes) for k in config.local_exits}
        )
        self.cloud_head = ExitHead(config.widths[-1], config.num_classes)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Logits of every exit for a batch ``x`` (N, C, H, W): the training view, no sample exits early."""
        out: dict[str, Tensor] = {}
        for k, block in enumerate(self.blocks, start=1):
            x = block(x)
            if str(k) in self.heads:
                out[str(k)] = self.heads[str(k)](x)
        out[CLOUD] = self.cloud_head(x)
        return out

    # -- models.protocol.MultiExitModel --------------------------------------------------------------
    @property
    def stages(self) -> Sequence[nn.Module]:
        return list(self.blocks)

    @property
    def exit_heads(self) -> dict[int, nn.Module]:
        return {int(k): head for k, head in self.heads.items()}

    @property
    def final_head(self) -> nn.Module:
        return self.cloud_head

    @property
    def input_spec(self) -> InputSpec:
        cfg = self.config
        return InputSpec(
            channels=cfg.in_channels,
            size=cfg.image_size,
            num_classes=cfg.num_classes,
            mean=cfg.input_mean,
            std=cfg.input_std,
        )

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) → float32 model input, with the config's mean and std."""
        mean = torch.tensor(self.config.input_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.config.input_std, dtype=torch.float32).view(1, -1, 1, 1)
        return (images.to(torch.float32) / 255.0 - mean) / std


def build_model(config: ModelConfig) -> MultiExitCNN:
    """A freshly initialised model for ``config``."""
    return MultiExitCNN(config)


def parse_model_choice(kind: str, exit: int | None) -> ModelConfig:
    """Validate a user's ``--model``/``--exit`` choice and give the default-profile config for it.

    For ``mem`` the exit is the one active at inference, so it is checked here but not stored. The
    standard model's one exit may also be named by its block (``--exit 9``).
    """
    try:
        check_model_exit(kind, None if kind == "standard" and exit == NUM_BLOCKS else exit)
    except ValueError as exc:
        raise ModelError(f"--model/--exit: {exc}") from None
    if kind == "standard":
        return ModelConfig(kind="standard")
    return ModelConfig(kind="sem", exit=exit) if kind == "sem" else ModelConfig(kind="mem")
