"""Checks of single values, shared by the contract's types: each raises ``ValueError`` whose message
starts with the field's name, so that a reader can put the field's place in the document before it."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from typing import Any, ClassVar, TypeVar

from contract.errors import SchemaError
from contract.rules import is_number

T = TypeVar("T")


def number(name: str, value: object, *, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a float, refused unless it is a finite number in [lo, hi]."""
    if is_number(value) and (lo is None or value >= lo) and (hi is None or value <= hi):
        return float(value)
    if lo is not None and hi is not None:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    if lo is not None:
        raise ValueError(f"{name} must be a number ≥ {lo:g}, got {value!r}")
    if hi is not None:
        raise ValueError(f"{name} must be a number ≤ {hi:g}, got {value!r}")
    raise ValueError(f"{name} must be a number, got {value!r}")


def optional_number(
    name: str, value: object, *, lo: float | None = None, hi: float | None = None
) -> float | None:
    """As :func:`number`, with None (JSON null: not measured, not applicable) allowed."""
    if value is None:
        return None
    if not is_number(value):
        raise ValueError(f"{name} must be a number or null, got {value!r}")
    return number(name, value, lo=lo, hi=hi)


def count(name: str, value: object, *, minimum: int = 0) -> int:
    """``value`` as an int, refused unless it is an integer ≥ ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return value


def optional_count(name: str, value: object, *, minimum: int = 0) -> int | None:
    return None if value is None else count(name, value, minimum=minimum)


def text(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def mapping(name: str, value: object) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{name} must be an object, got {type(value).__name__}")
    return value


def optional_mapping(name: str, value: object) -> Mapping[str, Any] | None:
    return None if value is None else mapping(name, value)


def numbers(name: str, values: object) -> tuple[float, ...]:
    """A list of finite numbers as a tuple of floats."""
    if not isinstance(values, list | tuple) or not all(is_number(v) for v in values):
        raise ValueError(f"{name} must be a list of finite numbers")
    return tuple(float(v) for v in values)


# --- reading documents -----------------------------------------------------------------------------------


def place(where: str, name: str) -> str:
    """``runs[0].summary`` + ``samples`` → ``runs[0].summary.samples``."""
    return f"{where}.{name}" if where else name


def obj(where: str, value: object) -> Mapping[str, Any]:
    """``value`` as a JSON object, or :class:`SchemaError` naming ``where``."""
    if not isinstance(value, Mapping):
        raise SchemaError(f"{where or 'the top level'} must be a JSON object, got {type(value).__name__}")
    return value


def need(where: str, data: Mapping[str, Any], key: str) -> Any:
    """``data[key]``, or :class:`SchemaError` saying which field is missing."""
    if key not in data:
        raise SchemaError(f"missing field {place(where, key)}")
    return data[key]


def build(where: str, make: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``make(*args, **kwargs)``, its ``ValueError`` turned into a :class:`SchemaError` at ``where``."""
    try:
        return make(*args, **kwargs)
    except ValueError as exc:
        raise SchemaError(place(where, str(exc))) from exc


def read_plain(cls: type[T], data: object, where: str, optional: Collection[str] = ()) -> T:
    """A dataclass whose fields are plain JSON values, from the object at ``where``: a field missing
    there is refused unless it is in ``optional`` (then it keeps its default)."""
    d = obj(where, data)
    values = {}
    for c in fields(cls):  # type: ignore[arg-type]
        if c.name in d:
            values[c.name] = d[c.name]
        elif c.name not in optional:
            raise SchemaError(f"missing field {place(where, c.name)}")
    return build(where, cls, **values)


def plain_json(instance: Any) -> dict[str, Any]:
    """A dataclass of plain JSON values as the object it is read from by :func:`read_plain`."""
    return {c.name: getattr(instance, c.name) for c in fields(instance)}


P = TypeVar("P", bound="PlainJson")


class PlainJson:
    """Base of a frozen dataclass whose fields are plain JSON values: its JSON object has one member per
    field; ``OPTIONAL`` names the fields a document may leave out (they keep their defaults)."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    def to_json(self) -> dict[str, Any]:
        return plain_json(self)

    @classmethod
    def from_json(cls: type[P], data: object, where: str) -> P:
        return read_plain(cls, data, where, cls.OPTIONAL)


def rest(data: Mapping[str, Any], known: Collection[str]) -> dict[str, Any]:
    """The fields of ``data`` a type does not model, kept as written so that rewriting a file loses none."""
    return {k: v for k, v in data.items() if k not in known}
