"""The project's exception root and the error of the contract itself.

``LocalExitError`` lives here, in the package every other one imports and that imports none of them
(nor torch), so each package derives its own base class from it without a cycle or a heavy import.
"""

from __future__ import annotations


class LocalExitError(Exception):
    """Root of every error the project raises on purpose; entry points print it without a traceback."""


class SchemaError(LocalExitError):
    """A document does not follow its schema: an unknown or newer version, a missing field, a value of the
    wrong type or range. The message names the field (``runs[0].summary.samples``) but not the file: the
    package that read the file adds its path and translates to its own error."""
