"""Two real architectures as multi-exit models: ResNet-18 and MobileNetV2 with BranchyNet-style exits.

The layer layouts are torchvision's (``torchvision.models.resnet18``: BasicBlocks [2, 2, 2, 2] with
widths w, 2w, 4w, 8w; ``torchvision.models.mobilenet_v2``: its inverted-residual table and channel
rounding), written out in this file rather than imported: the torchvision wheels PyPI has for torch
2.13.0 are CUDA builds whose compiled operators do not load into the CPU torch these machines pin
(``import torchvision`` fails), and the models need none of torchvision's operators.

Adapted to 28×28 single-channel images (any :class:`~models.protocol.InputSpec` works) and narrowed so
that an epoch of Fashion-MNIST trains in minutes on one CPU thread (docs/models.md has the figures):

- the stems keep full resolution (3×3 convolution, stride 1, no max-pool), as CIFAR-sized ResNets do;
- ResNet-18 at width 16 (torchvision: 64), about 0.7 M parameters; MobileNetV2 at width multiplier
  0.35 with its last 1×1 convolution narrowed in proportion, about 0.2 M parameters.

Each network is four stages; an exit head follows each of stages 1–3, the final head stage 4. A head is
BranchyNet's branch: a 3×3 convolution → BatchNorm → ReLU, global average pooling, a linear classifier.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from models.protocol import InputSpec, run_exits

#: The stages after which the local exit heads sit (stage 4 feeds the final head).
EXITS: tuple[int, ...] = (1, 2, 3)
RESNET_WIDTH = 16
MOBILENET_WIDTH_MULT = 0.35


class BranchHead(nn.Sequential):
    """BranchyNet's exit branch: conv3×3 → BatchNorm → ReLU → global average pool → linear."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(channels, num_classes),
        )


class FinalHead(nn.Sequential):
    """The networks' own classifier: global average pool → (dropout, MobileNetV2) → linear."""

    def __init__(self, channels: int, num_classes: int, dropout: float = 0.0) -> None:
        layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers, nn.Linear(channels, num_classes))


class MultiExitNet(nn.Module):
    """Stages, exit heads after some of them and a final head: a :class:`~models.protocol.MultiExitModel`."""

    def __init__(
        self,
        name: str,
        input_spec: InputSpec,
        stages: Sequence[nn.Module],
        heads: Mapping[int, nn.Module],
        final_head: nn.Module,
    ) -> None:
        super().__init__()
        self.name = name
        self._input_spec = input_spec
        self.stage_list = nn.ModuleList(stages)
        self.heads = nn.ModuleDict({str(k): head for k, head in heads.items()})
        self.head = final_head

    @property
    def stages(self) -> Sequence[nn.Module]:
        return list(self.stage_list)

    @property
    def exit_heads(self) -> dict[int, nn.Module]:
        return {int(k): head for k, head in self.heads.items()}

    @property
    def final_head(self) -> nn.Module:
        return self.head

    @property
    def input_spec(self) -> InputSpec:
        return self._input_spec

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Logits of every exit (``"1"``, ``"2"``, ``"3"``, ``"cloud"``) of a normalized batch."""
        return run_exits(self, x)


# -- ResNet-18 -----------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet BasicBlock: two 3×3 convolutions with a residual (projected when the shape
    changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        result: Tensor = self.relu(out + self.downsample(x))
        return result


def _resnet_layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))


def resnet18(input_spec: InputSpec, width: int = RESNET_WIDTH) -> MultiExitNet:
    """ResNet-18 (torchvision's layout, widths ``width``·(1, 2, 4, 8)) with exits after layers 1–3.

    Stage 1 is the stem and layer1 (full resolution), stages 2–4 are layer2–layer4 (each halves it).
    """
    w = width
    stem = nn.Sequential(
        nn.Conv2d(input_spec.channels, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)
    )
    stages = [
        nn.Sequential(stem, _resnet_layer(w, w, 1)),
        _resnet_layer(w, 2 * w, 2),
        _resnet_layer(2 * w, 4 * w, 2),
        _resnet_layer(4 * w, 8 * w, 2),
    ]
    widths = (w, 2 * w, 4 * w)
    heads = {k: BranchHead(widths[k - 1], input_spec.num_classes) for k in EXITS}
    model = MultiExitNet("resnet18", input_spec, stages, heads, FinalHead(8 * w, input_spec.num_classes))
    for m in model.modules():  # (torchvision's initialisation)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


# -- MobileNetV2 ---------------------------------------------------------------------------------------


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: to a multiple of ``divisor``, never more than 10 % below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """torchvision's MobileNetV2 block: expand (1×1), depthwise 3×3, project (1×1, linear), with a
    residual when the shape is kept."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(c_in * expand)
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [_conv_bn(c_in, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.conv(x)
        return x + out if self.use_res else out


#: torchvision's table (expansion t, channels c, repeats n, stride s), with the strides of a 28×28
#: input: 28 → 14 → 7 → 4, the 160-channel group kept at 4×4 (torchvision halves a 224 input five times).
MOBILENET_SETTINGS: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 1),
    (6, 320, 1, 1),
)
#: The groups of the table each stage holds: exits after 14×14 (24 ch), 7×7 (32) and 4×4 (96).
MOBILENET_STAGES: tuple[tuple[int, ...], ...] = ((0, 1), (2,), (3, 4), (5, 6))


def mobilenet_v2(input_spec: InputSpec, width_mult: float = MOBILENET_WIDTH_MULT) -> MultiExitNet:
    """MobileNetV2 (torchvision's table and rounding at ``width_mult``) with exits after stages 1–3.

    Stage 1 is the stem and the 16- and 24-channel groups, stage 2 the 32-channel group, stage 3 the 64-
    and 96-channel groups, stage 4 the rest and the last 1×1 convolution (1280·``width_mult`` channels).
    """
    c = make_divisible(32 * width_mult)
    groups: list[list[nn.Module]] = []
    widths: list[int] = []
    for t, ch, n, s in MOBILENET_SETTINGS:
        out = make_divisible(ch * width_mult)
        blocks: list[nn.Module] = []
        for i in range(n):
            blocks.append(InvertedResidual(c, out, s if i == 0 else 1, t))
            c = out
        groups.append(blocks)
        widths.append(out)
    last = make_divisible(1280 * width_mult)
    stages: list[nn.Module] = []
    for j, members in enumerate(MOBILENET_STAGES):
        layers = [m for g in members for m in groups[g]]
        if j == 0:
            layers.insert(0, _conv_bn(input_spec.channels, make_divisible(32 * width_mult), 3))
        if j == len(MOBILENET_STAGES) - 1:
            layers.append(_conv_bn(c, last, 1))
        stages.append(nn.Sequential(*layers))
    heads = {k: BranchHead(widths[MOBILENET_STAGES[k - 1][-1]], input_spec.num_classes) for k in EXITS}
    final = FinalHead(last, input_spec.num_classes, dropout=0.2)
    model = MultiExitNet("mobilenet_v2", input_spec, stages, heads, final)
    for m in model.modules():  # (torchvision's initialisation)
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    return model
