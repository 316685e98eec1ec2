"""Where each exit cuts: its threshold T and the temperature its logits are divided by before the entropy.

A plain ``--threshold T`` is one T for every exit at temperature 1 (the paper's rule). A calibration
file (``harness calibrate``, :mod:`models.calibration`) gives each exit its own T, found after dividing
that exit head's logits by its own temperature; the edge must apply both, or the thresholds mean
something else than they were calibrated for. The file is for one checkpoint: its recorded sha256 must
be the checkpoint's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contract.rules import check_threshold


@dataclass(frozen=True)
class ExitThresholds:
    """T and temperature per exit: ``uniform`` for every exit (a plain ``--threshold``), or the file's
    ``thresholds``/``temperatures`` (``calibration``: the file, ``calibration_sha256``: its bytes' hash)."""

    uniform: float | None = None
    thresholds: Mapping[int, float] = field(default_factory=dict)
    temperatures: Mapping[int, float] = field(default_factory=dict)
    calibration: str | None = None
    calibration_sha256: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", dict(self.thresholds))
        object.__setattr__(self, "temperatures", dict(self.temperatures))
        if (self.uniform is None) == (self.calibration is None):
            raise ValueError("thresholds come from one --threshold or from one calibration file")
        if self.uniform is not None:
            check_threshold(self.uniform)

    @classmethod
    def of(cls, threshold: float) -> ExitThresholds:
        """One threshold for every exit, logits as they are."""
        return cls(uniform=threshold)

    def threshold(self, exit: int) -> float:
        """T at ``exit`` (ValueError: a calibration without that exit)."""
        if self.uniform is not None:
            return self.uniform
        if exit not in self.thresholds:
            raise ValueError(
                f"the calibration file {self.calibration} has no threshold for exit {exit} "
                f"(it has {', '.join(map(str, sorted(self.thresholds)))})"
            )
        return self.thresholds[exit]

    def temperature(self, exit: int) -> float:
        """What ``exit``'s logits are divided by before the entropy (1: as they are)."""
        return self.temperatures.get(exit, 1.0)

    def check(self, exits: tuple[int, ...] | list[int]) -> None:
        """ValueError unless every exit of ``exits`` (0: no local exit, nothing to cut) has a threshold."""
        for k in exits:
            if k > 0:
                self.threshold(k)

    def describe(self, exits: tuple[int, ...] | list[int]) -> dict[str, Any]:
        """What a run records: the file and its hash (None for a plain threshold) and the T and
        temperature in force at each of ``exits``."""
        return {
            "file": self.calibration,
            "sha256": self.calibration_sha256,
            "thresholds": {str(k): self.threshold(k) for k in exits if k > 0},
            "temperatures": {str(k): self.temperature(k) for k in exits if k > 0},
        }


def read_calibration(path: str | Path, checkpoint_sha256: str) -> ExitThresholds:
    """The thresholds and temperatures of calibration file ``path``, which must have been made for the
    checkpoint whose sha256 is ``checkpoint_sha256``. ValueError says what is wrong, with the file's name.

    An exit the calibration found no T for gets T = 0 (every sample to the cloud), as the file says."""
    from models.calibration import CalibrationFile  # (torch: only for an edge that is given a file)
    from models.errors import ModelError

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read calibration file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(blob)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        cal = CalibrationFile.from_json(data)
    except (ValueError, ModelError) as exc:
        raise ValueError(f"{path} is not a usable calibration file: {exc}") from exc
    if cal.checkpoint_sha256 != checkpoint_sha256:
        raise ValueError(
            f"the calibration file {path} was made for another checkpoint (sha256 "
            f"{cal.checkpoint_sha256[:12]}…, this one is {checkpoint_sha256[:12]}…): calibrate this "
            "checkpoint (python -m harness calibrate)"
        )
    return ExitThresholds(
        thresholds={int(k): cal.threshold(k) for k in cal.thresholds},
        temperatures={int(k): cal.temperature(k) for k in cal.temperatures},
        calibration=str(path),
        calibration_sha256=hashlib.sha256(blob).hexdigest(),
    )
