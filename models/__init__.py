"""Multi-exit models: the paper's CNN and any other behind one protocol; datasets, partition, entropy,
training, checkpoints, devices.

This namespace holds what needs no torch -- the errors and the datasets, which the test node loads
without ever running a model -- so that importing it costs what numpy costs. Everything that runs the
network imports torch (about 2 s) and is imported from its module:

- ``models.protocol``: the multi-exit model protocol (``MultiExitModel``, ``InputSpec``), model specs
  (``build_from_spec``) and the partition check (``check_partition``);
- ``models.cnn``: ``ModelConfig``, ``MultiExitCNN``, ``build_model``, ``parse_model_choice``;
- ``models.torchvision_exits``: ResNet-18 and MobileNetV2 with exit heads (``resnet18``, ``mobilenet_v2``);
- ``models.partition``: ``EdgePart``, ``CloudPart``, ``partition``;
- ``models.devices``: ``resolve_device``, ``synchronize``, ``describe_device``;
- ``models.entropy``: ``normalized_entropy``;
- ``models.checkpoint``: ``save_checkpoint``, ``load_model``, ``load_checkpoint``, ``default_checkpoint``,
  ``check_matches``, ``CheckpointMeta``, ``ZOO_DIR``;
- ``models.train`` and ``models.calibration``: the training and threshold-calibration programs.

``models.options`` checks the spelling of ``--model-spec`` and the device options without torch.
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
