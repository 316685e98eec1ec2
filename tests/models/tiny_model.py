"""A user's own multi-exit model, as a researcher would write one, for the tests of ``--model-spec``.

Not a test module (pytest does not collect it): the node processes import it by its spec,
``tests.models.tiny_model:build``, from the repository root.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from models.protocol import InputSpec, run_exits


def _head(channels: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))


class TinyNet(nn.Module):
    """Three stages (conv, conv, an MLP on the flattened map), exits after stages 1 and 2."""

    name = "tinynet"

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec
        side = spec.size // 4
        self.convs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(spec.channels, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2)
                ),
                nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.Flatten(), nn.Linear(6 * side * side, 16), nn.ReLU()),
            ]
        )
        self.branches = nn.ModuleList([_head(4, spec.num_classes), _head(6, spec.num_classes)])
        self.classifier = nn.Linear(16, spec.num_classes)

    @property
    def stages(self) -> Sequence[nn.Module]:
        return list(self.convs)

    @property
    def exit_heads(self) -> dict[int, nn.Module]:
        return {1: self.branches[0], 2: self.branches[1]}

    @property
    def final_head(self) -> nn.Module:
        return self.classifier

    @property
    def input_spec(self) -> InputSpec:
        return self.spec

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return run_exits(self, x)


class SkippingNet(TinyNet):
    """A model whose forward gives a final output its stages and heads, run in turn, do not (as a
    forward with a shortcut around the cut would), so that no edge/cloud split reproduces it."""

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        out = run_exits(self, x)
        out["cloud"] = out["cloud"] + 1.0
        return out


class FlatNet(TinyNet):
    """A model whose features at its second exit are a flat vector (N, 16), not a (C, H, W) map: the
    protocol lets a stage return a tensor of any shape."""

    name = "flatnet"

    def __init__(self, spec: InputSpec) -> None:
        nn.Module.__init__(self)  # (TinyNet's layers are not built: these replace them)
        self.spec = spec
        self.convs = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(spec.channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)),
                nn.Sequential(nn.Flatten(), nn.Linear(4 * (spec.size // 2) ** 2, 16), nn.ReLU()),
                nn.Sequential(nn.Linear(16, 12), nn.ReLU()),
            ]
        )
        self.branches = nn.ModuleList([_head(4, spec.num_classes), nn.Linear(16, spec.num_classes)])
        self.classifier = nn.Linear(12, spec.num_classes)


def build_flat(spec: InputSpec) -> FlatNet:
    """``--model-spec tests.models.tiny_model:build_flat``: flat features at exit 2."""
    return FlatNet(spec)


def build(spec: InputSpec) -> TinyNet:
    """The factory ``--model-spec tests.models.tiny_model:build`` names."""
    return TinyNet(spec)


def build_skipping(spec: InputSpec) -> SkippingNet:
    return SkippingNet(spec)


def build_not_a_model(spec: InputSpec) -> nn.Module:
    return nn.Linear(spec.channels, spec.num_classes)
