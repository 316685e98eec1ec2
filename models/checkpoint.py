"""Checkpoints that load without executing code, and the shipped zoo.

A checkpoint is a ``torch.save`` of plain data only — format tag, the class that built the model, its
config (the paper's CNN) or its factory's spec and input (any other multi-exit model), dataset, training
metadata and the state dict — so :func:`load_model` can use ``torch.load(weights_only=True)``. Every
load checks that the model splits at each of its exits into parts that give its own output.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from contract.atomic import atomic_open
from contract.names import CHECKPOINT_FORMAT, DEFAULT_DATASET
from models.cnn import ModelConfig, MultiExitCNN, build_model
from models.errors import CheckpointError, ModelError
from models.protocol import (
    BUILTIN_SPECS,
    InputSpec,
    MultiExitModel,
    SpecConfig,
    build_from_spec,
    check_model,
    check_partition,
    class_path,
    model_name,
)

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
#: The shipped checkpoints of models other than the paper's CNN (``models.torchvision_exits``), one folder
#: per dataset: apart from the CNN's, whose folder holds the paper's grid of models and training logs.
ARCHITECTURES_DIR = ZOO_DIR / "architectures"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself. ``config`` is the paper CNN's :class:`ModelConfig`, or for a
    model built by a factory (``--model-spec``) its :class:`SpecConfig` (spec, class, input, exits)."""

    path: Path
    config: ModelConfig | SpecConfig
    dataset: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str | None:
        """The factory that built the model (None: the paper's CNN)."""
        return self.config.spec if isinstance(self.config, SpecConfig) else None

    @property
    def input(self) -> InputSpec:
        """The input the model takes."""
        cfg = self.config
        if isinstance(cfg, SpecConfig):
            return cfg.input
        return InputSpec(cfg.in_channels, cfg.image_size, cfg.num_classes, cfg.input_mean, cfg.input_std)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    dataset: str,
    extra: dict[str, Any] | None = None,
    spec: str | None = None,
) -> Path:
    """Write ``model`` to ``path`` atomically (temp file + rename). ``extra`` must be plain JSON-like data.

    ``model`` is the paper's CNN, or (with ``spec``, the factory that built it) any
    :class:`~models.protocol.MultiExitModel`. The class that built it is recorded either way.
    """
    path = Path(path)
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "model_class": class_path(model)}
    if spec is None:
        if not isinstance(model, MultiExitCNN):
            raise ModelError(f"a {type(model).__name__} is saved with the spec of the factory that built it")
        payload["config"] = model.config.to_dict()
    else:
        built = check_model(model)
        payload["model"] = SpecConfig(
            spec=spec,
            model_class=class_path(model),
            input=built.input_spec,
            local_exits=tuple(built.exit_heads),
            num_stages=len(built.stages),
            name=model_name(model),
        ).to_dict()
    payload |= {
        "dataset": dataset,
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path) -> tuple[MultiExitCNN, CheckpointMeta]:
    """Load a checkpoint of the paper's CNN into a model in eval mode; raises :class:`CheckpointError`
    with the reason (also for a checkpoint of another model: :func:`load_model` loads any)."""
    model, meta = _load(Path(path), None, cnn_only=True)
    assert isinstance(model, MultiExitCNN)
    return model, meta


def load_model(path: str | Path, spec: str | None = None) -> tuple[MultiExitModel, CheckpointMeta]:
    """Load any multi-exit model's checkpoint in eval mode, on the CPU, with its partition checked.

    A checkpoint of a model built by a factory names the factory; it is imported only when it is one of
    :data:`~models.protocol.BUILTIN_SPECS` or the user gave the same ``spec`` (``--model-spec``): a file
    never makes us import code. Raises :class:`CheckpointError` (the file) or :class:`ModelError` (the
    spec, the model it builds, a partition that does not give the model's output).
    """
    return _load(Path(path), spec)


def _load(path: Path, spec: str | None, *, cnn_only: bool = False) -> tuple[MultiExitModel, CheckpointMeta]:
    blob, payload = _read(path)
    recorded = payload.get("model")
    if cnn_only and recorded is not None:
        what = (
            f"{recorded.get('name')} model built by {recorded.get('spec')}"
            if isinstance(recorded, dict)
            else "other model"
        )
        raise CheckpointError(f"{path} holds a {what}, not the paper's CNN")
    try:
        if recorded is None:
            if spec is not None:
                raise CheckpointError(
                    f"{path} holds the paper's CNN, not a model built by {spec}: drop --model-spec"
                )
            cnn_config = ModelConfig.from_dict(payload["config"])
            config: ModelConfig | SpecConfig = cnn_config
            model: nn.Module = build_model(cnn_config)
        else:
            config = SpecConfig.from_dict(recorded)
            if spec is None and config.spec not in BUILTIN_SPECS:
                raise CheckpointError(
                    f"{path} holds a model built by {config.spec}: pass --model-spec {config.spec} to load it "
                    "(a checkpoint never makes the harness import code by itself)"
                )
            if spec is not None and spec != config.spec:
                raise CheckpointError(f"{path} holds a model built by {config.spec}, not by {spec}")
            model = cast(nn.Module, build_from_spec(config.spec, config.input))
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not match the stored model config: {exc}") from exc
    check_partition(model)  # type: ignore[arg-type]  # (eval mode, as the nodes run it)
    meta = CheckpointMeta(
        path=path,
        config=config,
        dataset=str(payload.get("dataset", "")),
        sha256=hashlib.sha256(blob).hexdigest(),
        extra=dict(payload.get("extra") or {}),
    )
    return model, meta  # type: ignore[return-value]


def _read(path: Path) -> tuple[bytes, dict[str, Any]]:
    """The file's bytes and its payload of plain data."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"checkpoint {path} not found; train one with `python -m harness train` or omit --checkpoint "
            "to use the shipped one"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    try:
        with warnings.catch_warnings():
            # (torch warns about the pickle protocol of files it then refuses: the refusal says enough)
            warnings.simplefilter("ignore")
            payload = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as exc:
        raise _invalid(path, _load_failure(blob, exc)) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise _invalid(path, f"its format is {got!r}, not {CHECKPOINT_FORMAT!r}")
    return blob, payload


def _invalid(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {path} is not a valid localexit checkpoint ({reason}); use one written by "
        "`python -m harness train`, or omit --checkpoint to use the shipped one"
    )


#: Python objects a ``weights_only`` load refuses are named in torch's message as ``GLOBAL module.name``.
_REFUSED_GLOBAL_RE = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(blob: bytes, exc: BaseException) -> str:
    """A short reason for a failed load, in our words.

    Deliberately not torch's message: for a refused file that advises loading it again with
    ``weights_only=False``, which would run whatever code the file holds.
    """
    if not blob:
        return "the file is empty"
    if isinstance(exc, EOFError):
        return "the file ends early: truncated?"
    if isinstance(exc, pickle.UnpicklingError):
        found = _REFUSED_GLOBAL_RE.search(str(exc))
        if found:
            return f"it holds Python objects ({found.group(1)}), which a checkpoint of plain data never does"
        return "not a file written by torch.save"
    if isinstance(exc, (RuntimeError, zipfile.BadZipFile)):
        return "its archive is damaged or truncated"
    return f"unreadable: {type(exc).__name__}"


def zoo_name(kind: str, exit: int | None) -> str:
    """File stem of a shipped checkpoint: ``standard``, ``sem-3`` or ``mem``."""
    return f"sem-{exit}" if kind == "sem" else kind


def default_checkpoint(kind: str, exit: int | None, dataset: str = DEFAULT_DATASET) -> Path:
    """Path of the shipped checkpoint for a model choice (trained on ``dataset``)."""
    path = ZOO_DIR / dataset / f"{zoo_name(kind, exit)}.pt"
    if not path.is_file():
        raise CheckpointError(
            f"no shipped {zoo_name(kind, exit)} checkpoint for {dataset} at {path}; train one with "
            f"`python -m harness train --model {kind}{f' --exit {exit}' if kind == 'sem' else ''} "
            f"--dataset {dataset}` and pass it with --checkpoint"
        )
    return path


def check_matches(meta: CheckpointMeta, kind: str, exit: int | None, dataset: str | None = None) -> None:
    """Refuse a checkpoint that is not the model (or dataset) the user asked for."""
    cfg = meta.config
    if cfg.kind != kind or (kind == "sem" and cfg.exit != exit):
        raise CheckpointError(
            f"{meta.path} holds a {cfg.name} model, but --model {kind}"
            f"{f' --exit {exit}' if exit is not None else ''} was asked for"
        )
    if kind == "mem" and exit is not None and exit not in cfg.local_exits:
        raise CheckpointError(f"{meta.path}: exit {exit} is not among its exits {cfg.local_exits}")
    if dataset is not None and meta.dataset and meta.dataset != dataset:
        raise CheckpointError(f"{meta.path} was trained on {meta.dataset}, not on {dataset}")
