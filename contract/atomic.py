"""The one atomic file write: readers see the old file or the whole new one, never part of it."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; on success it is synced and renamed over ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is left untouched.
    The file is made 0644 (``mkstemp`` makes 0600): checkpoints, logs and results are meant to be shared.
    Missing parent folders are created.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)
        encoding = "utf-8" if mode == "w" else None
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` atomically."""
    with atomic_open(path, "wb") as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json_atomic(
    path: str | Path, data: Any, *, indent: int | None = 1, allow_nan: bool = False
) -> None:
    """Write ``data`` as JSON (and a final newline) to ``path`` atomically.

    Strict JSON by default (NaN and infinities raise ``ValueError`` before anything is replaced): other
    programs read these files, and JSON has no NaN.
    """
    with atomic_open(path, "w") as fh:
        json.dump(data, fh, indent=indent, allow_nan=allow_nan)
        fh.write("\n")
