"""The spelling of the model options -- ``--model-spec``, ``--device`` and its kin -- checked without torch,
so that the harness refuses a misspelt option before it loads torch or starts anything."""

from __future__ import annotations

import re

DEFAULT_DEVICE = "cpu"
_DEVICE_RE = re.compile(r"cpu|cuda(:(0|[1-9][0-9]*))?")
_SPEC_RE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")


def check_device_name(text: object) -> str:
    """``text`` if it names a device as the options take it (``cpu``, ``cuda``, ``cuda:N``), else
    ``ValueError``. Whether this machine has it is :func:`models.devices.resolve_device`'s question."""
    if not isinstance(text, str) or not _DEVICE_RE.fullmatch(text):
        raise ValueError(f"a device is cpu, cuda or cuda:N (N = 0, 1, …), not {text!r}")
    return text


def check_spec(spec: object) -> str:
    """``spec`` if it reads ``package.module:factory``, else ``ValueError``."""
    if not isinstance(spec, str) or not _SPEC_RE.fullmatch(spec):
        raise ValueError(f"a model spec reads package.module:factory (e.g. mypkg.nets:build), not {spec!r}")
    return spec
