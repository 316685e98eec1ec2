"""The paper's CNN with local exits: builders, partition, entropy, datasets, training and checkpoints.

The names below are loaded on first use (PEP 562), so that a program that needs only the datasets, the
errors or ``models.atomic`` -- the test node -- never imports torch: that import alone takes about 2 s,
and the harness starts the test node after the edge and the cloud are ready, so it adds to every run.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.checkpoint import (
        CHECKPOINT_FORMAT,
        ZOO_DIR,
        CheckpointMeta,
        check_matches,
        default_checkpoint,
        load_checkpoint,
        save_checkpoint,
    )
    from models.cnn import (
        CLOUD,
        LOCAL_EXITS,
        MODEL_KINDS,
        NUM_BLOCKS,
        ModelConfig,
        MultiExitCNN,
        build_model,
        parse_model_choice,
    )
    from models.datasets import DATASETS, ImageDataset, load_dataset, synthetic_dataset
    from models.entropy import exits_locally, normalized_entropy
    from models.errors import CheckpointError, DatasetError, LocalExitError, ModelError
    from models.partition import CloudPart, EdgePart, partition

#: Where each public name lives.
_LAZY = {
    "models.checkpoint": (
        "CHECKPOINT_FORMAT",
        "ZOO_DIR",
        "CheckpointMeta",
        "check_matches",
        "default_checkpoint",
        "load_checkpoint",
        "save_checkpoint",
    ),
    "models.cnn": (
        "CLOUD",
        "LOCAL_EXITS",
        "MODEL_KINDS",
        "NUM_BLOCKS",
        "ModelConfig",
        "MultiExitCNN",
        "build_model",
        "parse_model_choice",
    ),
    "models.datasets": (
        "DATASETS",
        "ImageDataset",
        "load_dataset",
        "synthetic_dataset",
    ),
    "models.entropy": (
        "exits_locally",
        "normalized_entropy",
    ),
    "models.errors": (
        "CheckpointError",
        "DatasetError",
        "LocalExitError",
        "ModelError",
    ),
    "models.partition": (
        "CloudPart",
        "EdgePart",
        "partition",
    ),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


class _Package(types.ModuleType):
    """The import system records every loaded submodule as an attribute of its package. Where a public
    name is also the name of the submodule it lives in (``partition``), the name must stay the function,
    as it was when this package imported everything at once."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _WHERE.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "CHECKPOINT_FORMAT",
    "CLOUD",
    "DATASETS",
    "LOCAL_EXITS",
    "MODEL_KINDS",
    "NUM_BLOCKS",
    "ZOO_DIR",
    "CheckpointError",
    "CheckpointMeta",
    "CloudPart",
    "DatasetError",
    "EdgePart",
    "ImageDataset",
    "LocalExitError",
    "ModelConfig",
    "ModelError",
    "MultiExitCNN",
    "build_model",
    "check_matches",
    "default_checkpoint",
    "exits_locally",
    "load_checkpoint",
    "load_dataset",
    "normalized_entropy",
    "parse_model_choice",
    "partition",
    "save_checkpoint",
    "synthetic_dataset",
]
