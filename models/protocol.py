"""What the harness needs of a multi-exit model: stages, exit heads after some of them, the input it takes.

A multi-exit model is an ``nn.Module`` that is a sequence of *stages* with an *exit head* after some of
them and a *final head* after the last::

    uint8 images (N, C, S, S) ─normalize─▶ stage 1 ─▶ stage 2 ─▶ … ─▶ stage n ─▶ final head ─▶ logits
                                              │           │
                                        exit head 1  exit head 2   (local exits: the heads present)

For local exit k the edge runs stages 1..k and exit head k, the cloud stages k+1..n and the final head;
the edge sends the cloud the output of stage k (the *features* at cut k). Exit 0 puts no stage on the
edge: the cloud gets the normalized input. The features are float32 tensors of any shape after the
batch dimension; :func:`feature_shapes` finds them by running the stages once.

A model implements :class:`MultiExitModel` (structural typing: no base class to inherit):

- ``stages``: the stages in order (an ``nn.ModuleList``, so their parameters belong to the model);
- ``exit_heads``: local exit k → the head after stage k, for k in 1..n-1 (and at most 8, the exits the
  results files know); no heads: the model runs in the cloud only (exit 0);
- ``final_head``: the head after stage n, the cloud's exit;
- ``input_spec``: the :class:`InputSpec` it was built for (channels, size, classes, normalization);
- ``forward(x)``: the logits of every exit as ``{"1": …, "2": …, "cloud": …}`` for a normalized batch
  (what training back-propagates); it must equal running the stages and heads in turn, which
  :func:`check_partition` verifies whenever a checkpoint is loaded.

A user's model enters through a *factory*, named by a spec ``package.module:function`` (``--model-spec``):
``function(input_spec)`` returns a fresh model for that input. Training calls it with the dataset's
input and stores the spec and the input in the checkpoint; loading calls it again with the stored
input and loads the weights. A checkpoint never makes the loader import code by itself: a spec that is
not one of :data:`BUILTIN_SPECS` must be given by the user and must equal the one recorded.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn

from contract.names import CLOUD, LOCAL_EXITS, ModelKind
from models.errors import ModelError
from models.options import check_spec

#: Factories of this package, which a checkpoint may name without the user repeating its spec: importing
#: them runs no code from outside the project.
BUILTIN_SPECS: tuple[str, ...] = (
    "models.torchvision_exits:resnet18",
    "models.torchvision_exits:mobilenet_v2",
)
#: Samples of the partition check: enough to catch a stage the forward skips, few enough to cost
#: milliseconds at load.
CHECK_SAMPLES = 4
#: Partition-check tolerance: the parts run the same kernels as the whole model, but a user's forward
#: may fuse or reorder float operations.
CHECK_RTOL = 1e-4
CHECK_ATOL = 1e-5


class PartitionError(ModelError):
    """A model whose stages and heads, run in turn, do not give its own forward's outputs."""


@dataclass(frozen=True)
class InputSpec:
    """The input a model takes: uint8 images (N, channels, size, size), scaled to [0, 1] and normalized
    per channel with ``mean`` and ``std``; and the number of classes its heads predict."""

    channels: int = 1
    size: int = 28
    num_classes: int = 10
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.5,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.channels < 1 or self.size < 1 or self.num_classes < 2:
            raise ValueError("an input needs channels ≥ 1, size ≥ 1 and num_classes ≥ 2")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError("mean and std need one value per input channel")
        if min(self.std) <= 0:
            raise ValueError("std values must be positive")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.channels, self.size, self.size)

    def normalize(self, images: Tensor) -> Tensor:
        """uint8 images (N, C, H, W) → float32 model input on the images' device; :class:`ModelError`
        when they are not this input's dtype and shape."""
        c, s = self.channels, self.size
        if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ModelError(
                f"this model takes uint8 images of shape (N, {c}, {s}, {s}); "
                f"got {images.dtype} {tuple(images.shape)}"
            )
        mean = torch.tensor(self.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
        return (images.to(torch.float32) / 255.0 - mean) / std

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "size": self.size,
            "num_classes": self.num_classes,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputSpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown input fields: {', '.join(sorted(unknown))}")
        return cls(**data)


@runtime_checkable
class MultiExitModel(Protocol):
    """A multi-exit ``nn.Module`` (see the module's docstring for the contract)."""

    @property
    def stages(self) -> Sequence[nn.Module]: ...
    @property
    def exit_heads(self) -> Mapping[int, nn.Module]: ...
    @property
    def final_head(self) -> nn.Module: ...
    @property
    def input_spec(self) -> InputSpec: ...
    def __call__(self, x: Tensor) -> dict[str, Tensor]: ...
    def eval(self) -> Any: ...
    def to(self, device: torch.device) -> Any: ...
    def state_dict(self) -> dict[str, Any]: ...
    def parameters(self) -> Iterator[nn.Parameter]: ...


def kind_of(local_exits: Sequence[int]) -> ModelKind:
    """The paper's name for a layout of local exits: none ``standard``, one ``sem``, several ``mem``."""
    return "standard" if not local_exits else "sem" if len(local_exits) == 1 else "mem"


@dataclass(frozen=True)
class SpecConfig:
    """What a checkpoint of a model built by a factory records: its spec, the class it built, the input
    it was built for and its exits (so that a checkpoint can be matched before any code is imported)."""

    spec: str
    model_class: str
    input: InputSpec
    local_exits: tuple[int, ...]
    num_stages: int
    name: str

    def __post_init__(self) -> None:
        check_spec(self.spec)
        object.__setattr__(self, "local_exits", tuple(sorted(int(k) for k in self.local_exits)))
        if self.num_stages < 1 or any(k not in LOCAL_EXITS or k >= self.num_stages for k in self.local_exits):
            raise ValueError(f"local exits {self.local_exits} do not fit {self.num_stages} stages")

    @property
    def kind(self) -> ModelKind:
        return kind_of(self.local_exits)

    @property
    def exit(self) -> int | None:
        """The one local exit of a ``sem``-kind model (None otherwise), as ``ModelConfig.exit``."""
        return self.local_exits[0] if self.kind == "sem" else None

    @property
    def exit_keys(self) -> tuple[str, ...]:
        return (*(str(k) for k in self.local_exits), CLOUD)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "model_class": self.model_class,
            "input": self.input.to_dict(),
            "local_exits": list(self.local_exits),
            "num_stages": self.num_stages,
            "name": self.name,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SpecConfig:
        values = dict(data)
        values["input"] = InputSpec.from_dict(values["input"])
        unknown = set(values) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown model fields: {', '.join(sorted(unknown))}")
        return cls(**values)


Factory = Callable[[InputSpec], Any]


def resolve_spec(spec: str) -> Factory:
    """The factory ``spec`` names, imported; :class:`ModelError` saying what is missing."""
    try:
        check_spec(spec)
    except ValueError as exc:
        raise ModelError(f"--model-spec: {exc}") from None
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"--model-spec {spec}: cannot import {module_name} ({exc})") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ModelError(f"--model-spec {spec}: {module_name} has no function {attr}")
    return cast(Factory, factory)


def build_from_spec(spec: str, input_spec: InputSpec) -> MultiExitModel:
    """``factory(input_spec)`` for the factory ``spec`` names, checked against the protocol."""
    factory = resolve_spec(spec)
    model = check_model(factory(input_spec), where=f"the model {spec} built")
    if model.input_spec != input_spec:
        raise ModelError(f"the model {spec} built takes {model.input_spec}, not the {input_spec} asked for")
    return model


def check_model(obj: object, *, where: str = "the model") -> MultiExitModel:
    """``obj`` if it implements :class:`MultiExitModel`, else :class:`ModelError` saying what is wrong."""
    if not isinstance(obj, nn.Module):
        raise ModelError(f"{where} is a {type(obj).__name__}, not a torch nn.Module")
    missing = [a for a in ("stages", "exit_heads", "final_head", "input_spec") if not hasattr(obj, a)]
    if missing:
        raise ModelError(f"{where} lacks {', '.join(missing)} (see models/protocol.py)")
    model = cast(MultiExitModel, obj)
    stages = list(model.stages)
    if not stages or not all(isinstance(s, nn.Module) for s in stages):
        raise ModelError(f"{where}: stages must be a non-empty sequence of nn.Modules")
    if not isinstance(model.input_spec, InputSpec):
        raise ModelError(f"{where}: input_spec must be a models.protocol.InputSpec")
    if not isinstance(model.final_head, nn.Module):
        raise ModelError(f"{where}: final_head must be an nn.Module")
    heads = model.exit_heads
    usable = [k for k in LOCAL_EXITS if k < len(stages)]
    for k, head in heads.items():
        if isinstance(k, bool) or not isinstance(k, int) or k not in usable:
            raise ModelError(
                f"{where}: exit head {k!r} does not follow a stage that has another after it "
                f"(local exits are 1..{usable[-1] if usable else 0} for {len(stages)} stages, at most "
                f"{LOCAL_EXITS[-1]})"
            )
        if not isinstance(head, nn.Module):
            raise ModelError(f"{where}: exit head {k} must be an nn.Module")
    owned = {id(m) for m in obj.modules()}
    named = (*((f"stage {i}", s) for i, s in enumerate(stages, 1)), ("final head", model.final_head))
    for what, module in named:
        if id(module) not in owned:
            raise ModelError(f"{where}: its {what} is not a submodule, so its weights would not be saved")
    return model


def local_exits(model: MultiExitModel) -> tuple[int, ...]:
    """The model's local exits, in order."""
    return tuple(sorted(model.exit_heads))


def model_name(model: object) -> str:
    """A display name: the paper CNN's config name, a model's ``name`` attribute, or its class name."""
    config = getattr(model, "config", None)
    name = getattr(config, "name", None) or getattr(model, "name", None)
    return name if isinstance(name, str) else type(model).__name__


def class_path(model: object) -> str:
    """``module.QualName`` of ``model``'s class, as recorded in checkpoints."""
    cls = type(model)
    return f"{cls.__module__}.{cls.__qualname__}"


def run_exits(model: MultiExitModel, x: Tensor) -> dict[str, Tensor]:
    """Logits of every exit of a normalized batch ``x``, by running the stages and heads in turn."""
    out: dict[str, Tensor] = {}
    heads = model.exit_heads
    for k, stage in enumerate(model.stages, start=1):
        x = stage(x)
        if k in heads:
            out[str(k)] = heads[k](x)
    out[CLOUD] = model.final_head(x)
    return out


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter or buffer (the CPU for one that has neither)."""
    for t in (*model.parameters(), *model.buffers()):
        return t.device
    return torch.device("cpu")


def cut_shape(stages: nn.Module, spec: InputSpec, *, what: str = "the cut") -> tuple[int, ...]:
    """Shape (after the batch dimension) of what ``stages`` make of one blank image of ``spec``, found by
    running them in eval mode; :class:`ModelError` unless it is a float32 tensor (what the nodes send)."""
    was_training = stages.training
    stages.eval()
    try:
        with torch.inference_mode():
            x = torch.zeros((1, *spec.image_shape), dtype=torch.float32, device=model_device(stages))
            y = stages(x)
    finally:
        stages.train(was_training)
    if not isinstance(y, Tensor) or y.dtype != torch.float32:
        got = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise ModelError(f"the features at {what} are {got}, not a float32 tensor")
    return tuple(y.shape[1:])


def feature_shapes(model: MultiExitModel) -> dict[int, tuple[int, ...]]:
    """Shape (after the batch dimension) of the features at each cut: 0 (the normalized input) and every
    local exit; :class:`ModelError` for features that are not float32 (what the nodes send)."""
    stages = list(model.stages)
    return {
        k: cut_shape(nn.Sequential(*stages[:k]), model.input_spec, what=f"exit {k}")
        for k in (0, *local_exits(model))
    }


def check_partition(model: MultiExitModel, *, seed: int = 0) -> None:
    """:class:`PartitionError` unless, at every exit, the edge part and the cloud part together give the
    whole model's output (its ``forward``) on a few random images; leaves the model in eval mode."""
    from models.partition import partition  # (partition builds on this module)

    assert isinstance(model, nn.Module)
    model.eval()
    spec = model.input_spec
    gen = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (CHECK_SAMPLES, *spec.image_shape), generator=gen, dtype=torch.uint8)
    name = model_name(model)
    with torch.inference_mode():
        x = spec.normalize(images.to(model_device(model)))
        full = model(x)
        if not isinstance(full, Mapping) or CLOUD not in full:
            raise PartitionError(f"{name}: forward must return a dict of logits with a {CLOUD!r} entry")
        for exit in (0, *local_exits(model)):
            edge, cloud = partition(model, exit)
            features, logits = edge(x)
            pairs = [(CLOUD, cloud(features))]
            if logits is not None:
                pairs.append((str(exit), logits))
            for key, got in pairs:
                want = full.get(key)
                if (
                    want is None
                    or got.shape != want.shape
                    or not torch.allclose(got, want, rtol=CHECK_RTOL, atol=CHECK_ATOL)
                ):
                    diff = (
                        f"differs by up to {(got - want).abs().max().item():.3g}"
                        if want is not None and got.shape == want.shape
                        else f"has shape {tuple(got.shape)}, forward gives "
                        + ("nothing" if want is None else str(tuple(want.shape)))
                    )
                    raise PartitionError(
                        f"{name} does not split at exit {exit}: the {key} exit's output of the edge and "
                        f"cloud parts {diff} from the model's forward; its forward must run the stages "
                        "and heads in turn (models/protocol.py)"
                    )


__all__ = [
    "BUILTIN_SPECS",
    "InputSpec",
    "MultiExitModel",
    "PartitionError",
    "SpecConfig",
    "build_from_spec",
    "check_model",
    "check_partition",
    "check_spec",
    "class_path",
    "cut_shape",
    "feature_shapes",
    "kind_of",
    "local_exits",
    "model_name",
    "resolve_spec",
    "run_exits",
]
