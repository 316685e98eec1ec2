"""The paper's CNN with local exits: datasets, the network, its partition, entropy, training, checkpoints.

This namespace holds what needs no torch -- the errors and the datasets, which the test node loads
without ever running a model -- so that importing it costs what numpy costs. Everything that runs the
network imports torch (about 2 s) and is imported from its module:

- ``models.cnn``: ``ModelConfig``, ``MultiExitCNN``, ``build_model``, ``parse_model_choice``;
- ``models.partition``: ``EdgePart``, ``CloudPart``, ``partition``;
- ``models.entropy``: ``normalized_entropy``;
- ``models.checkpoint``: ``save_checkpoint``, ``load_checkpoint``, ``default_checkpoint``,
  ``check_matches``, ``CheckpointMeta``, ``ZOO_DIR``;
- ``models.train`` and ``models.calibration``: the training and threshold-calibration programs.

The names the other packages share with this one (model kinds, exits, datasets, schema ids) are in
``contract.names``.
"""

from models.datasets import ImageDataset, load_dataset, synthetic_dataset
from models.errors import CheckpointError, DatasetError, ModelError

__all__ = [
    "CheckpointError",
    "DatasetError",
    "ImageDataset",
    "ModelError",
    "load_dataset",
    "synthetic_dataset",
]
