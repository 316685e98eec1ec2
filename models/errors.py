"""The project's exception root and the errors of ``models/``.

``LocalExitError`` lives here because ``models`` depends on no other package of the project, so every
package can derive its own base class from it without an import cycle.
"""


class LocalExitError(Exception):
    """Root of every error the project raises on purpose; entry points print it without a traceback."""


class ModelError(LocalExitError):
    """A model, checkpoint or dataset problem the user can fix (bad exit index, missing file, ...)."""


class DatasetError(ModelError):
    """A dataset is missing or malformed."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt or does not match what was asked for."""
