"""The devices a node or a training runs its model on: ``cpu``, ``cuda`` or ``cuda:N``.

The spelling is checked without torch (the harness validates its options before it imports torch);
:func:`resolve_device` checks that the device exists here, so that a missing GPU is one clear error
before anything starts. Nothing here needs a CUDA build of torch: on a CPU-only torch every ``cuda``
device is simply missing.

``python -m models.devices DEVICE...`` prints, as one JSON line, each device as this machine has it
(:func:`describe_device`) or why it has not (``{"error": …}``): with ``--hosts`` the harness runs it on the
host of each node, whose devices are the ones that count.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from models.errors import DeviceError
from models.options import check_device_name

if TYPE_CHECKING:
    import torch


def resolve_device(text: str, *, option: str = "--device") -> torch.device:
    """The torch device ``text`` names, when this machine has it; :class:`DeviceError` otherwise."""
    import torch

    try:
        check_device_name(text)
    except ValueError as exc:
        raise DeviceError(f"{option}: {exc}") from None
    device = torch.device(text)
    if device.type == "cpu":
        return device
    if not torch.cuda.is_available():
        why = (
            f"this torch ({torch.__version__}) is built without CUDA"
            if torch.version.cuda is None
            else "torch sees no CUDA device (no GPU, or its driver is not loaded)"
        )
        raise DeviceError(f"{option} {text}: no CUDA device here: {why}; use {option} cpu")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        raise DeviceError(
            f"{option} {text}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}"
        )
    return torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)


def synchronize(device: torch.device) -> None:
    """Wait until ``device`` has run everything queued on it (CUDA runs kernels asynchronously, so a
    clock read without this would time their launch, not their work); nothing to do on the CPU."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)


def describe_device(device: torch.device) -> dict[str, Any]:
    """What a results file records of a device: its name, its memory and, for a GPU, the CUDA version."""
    import torch

    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {
            "device": str(device),
            "name": props.name,
            "memory_mib": round(props.total_memory / 2**20),
            "cuda": torch.version.cuda,
        }
    import psutil

    return {"device": "cpu", "name": cpu_model(), "memory_mib": round(psutil.virtual_memory().total / 2**20)}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or ``platform.processor()`` where that is unavailable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def describe_devices(texts: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each device of ``texts`` as this machine has it, or ``{"error": why not}``."""
    out: dict[str, dict[str, Any]] = {}
    for text in texts:
        try:
            out[text] = describe_device(resolve_device(text, option="device"))
        except DeviceError as exc:
            out[text] = {"error": str(exc)}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m models.devices DEVICE...``: one JSON line (exit status 0 even for a missing device:
    the answer says which, and the caller words the error for its own option)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or any(a.startswith("-") for a in args):
        print("usage: python -m models.devices DEVICE... (cpu, cuda, cuda:N)", file=sys.stderr)
        return 2
    print(json.dumps(describe_devices(args), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
