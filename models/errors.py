"""The errors of ``models/``, rooted in the project's ``contract.LocalExitError``."""

from __future__ import annotations

from contract.errors import LocalExitError


class ModelError(LocalExitError):
    """A model, checkpoint or dataset problem the user can fix (bad exit index, missing file, ...)."""


class DatasetError(ModelError):
    """A dataset is missing or malformed."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt or does not match what was asked for."""


class DeviceError(ModelError):
    """A device (``cuda``, ``cuda:N``) this machine does not have, or a device name that means none."""
