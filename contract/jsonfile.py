"""Reading a JSON document from a file, with one message per way it can fail."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from contract.errors import SchemaError


def read_json(path: str | Path) -> Any:
    """The decoded JSON of ``path``; :class:`SchemaError` naming the file when it is missing, unreadable,
    not text or not JSON."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SchemaError(f"{path}: no such file") from exc
    except UnicodeDecodeError as exc:
        raise SchemaError(f"{path}: not a text (JSON) file") from exc
    except OSError as exc:
        raise SchemaError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from exc


T = TypeVar("T")


def read_document(path: str | Path, parse: Callable[[Any], T]) -> T:
    """``parse`` of the JSON in ``path``; every :class:`SchemaError` names the file."""
    data = read_json(path)
    try:
        return parse(data)
    except SchemaError as exc:
        raise SchemaError(f"{path}: {exc}") from exc
