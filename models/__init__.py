"""The paper's CNN with local exits: builders, partition, entropy, datasets, training and checkpoints."""

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
