"""Checkpoints that load without executing code, and the shipped zoo.

A checkpoint is a ``torch.save`` of plain data only — format tag, model config, dataset, training
metadata and the state dict — so :func:`load_checkpoint` can use ``torch.load(weights_only=True)``.
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
from typing import Any

import torch

from contract.atomic import atomic_open
from contract.names import CHECKPOINT_FORMAT, DEFAULT_DATASET
from models.cnn import ModelConfig, MultiExitCNN, build_model
from models.errors import CheckpointError

ZOO_DIR = Path(__file__).resolve().parent / "zoo"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself."""

    path: Path
    config: ModelConfig
    dataset: str
    sha256: str
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    model: MultiExitCNN, path: str | Path, *, dataset: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``model`` to ``path`` atomically (temp file + rename). ``extra`` must be plain JSON-like data."""
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": model.config.to_dict(),
        "dataset": dataset,
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_open(path, "wb") as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path) -> tuple[MultiExitCNN, CheckpointMeta]:
    """Load a checkpoint into a model in eval mode; raises :class:`CheckpointError` with the reason."""
    path = Path(path)
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
    try:
        config = ModelConfig.from_dict(payload["config"])
        model = build_model(config)
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: the weights do not match the stored model config: {exc}") from exc
    model.eval()
    meta = CheckpointMeta(
        path=path,
        config=config,
        dataset=str(payload.get("dataset", "")),
        sha256=hashlib.sha256(blob).hexdigest(),
        extra=dict(payload.get("extra") or {}),
    )
    return model, meta


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
