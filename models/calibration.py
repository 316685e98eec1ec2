"""Exit thresholds for a target accuracy (the paper leaves the choice of T "beyond the scope").

On a validation split held out of the training set (:class:`models.datasets.ValidationSplit`; never the
test set), each local exit gets the largest T such that the samples with normalized entropy ε < T are
classified at that exit with at least the target accuracy — the T that sends the most samples out at
the edge while the local exits stay as accurate as asked. Optionally each exit head's logits are first
divided by a temperature fitted on the same split, which makes ε a better-ranked confidence without
changing any prediction.

``python -m models.calibration --checkpoint mem.pt --target-accuracy 0.95 --out mem.calibration.json``
writes a :class:`CalibrationFile` (schema ``localexit-calibration/1``) for the edge.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import Tensor
from torch.nn import functional as F

from contract.atomic import write_json_atomic
from contract.cli import Parser
from contract.errors import LocalExitError
from contract.names import (
    CALIBRATION_FAMILY,
    CALIBRATION_SCHEMA,
    CALIBRATION_VERSION,
    DATASETS,
    schema_version,
)
from contract.rules import check_threshold
from models.checkpoint import load_model
from models.datasets import ImageDataset, ValidationSplit, load_dataset
from models.entropy import normalized_entropy
from models.errors import ModelError
from models.protocol import MultiExitModel, local_exits, model_name

log = logging.getLogger(__name__)

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Search range of a temperature: outside it an exit head is either certain of everything or of nothing,
and the fit says more about the validation split than about the head."""
_GOLDEN = (math.sqrt(5) - 1) / 2


# --- temperature scaling -------------------------------------------------------------------------------


def _check_logits(logits: Tensor, labels: Tensor) -> None:
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, classes ≥ 2), got shape {tuple(logits.shape)}")
    if labels.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ValueError(f"need one label per row of logits, got {tuple(labels.shape)} for {logits.shape[0]}")


def fit_temperature(logits: Tensor, labels: Tensor, *, tol: float = 1e-5) -> float:
    """The temperature T minimizing the negative log-likelihood of ``softmax(logits / T)`` on ``labels``.

    Method: golden-section search on log T within :data:`TEMPERATURE_BOUNDS`. The NLL is convex in 1/T
    (log-sum-exp of a linear function minus a linear one), so it has one minimum along log T too, and
    the search finds it to ``tol`` (in log T) deterministically, with no learning rate to tune. A result
    at a bound means the minimum lies beyond it (e.g. an exit that is right on every sample wants T → 0).
    """
    _check_logits(logits, labels)
    z = logits.detach().to(torch.float64)
    y = labels.detach().to(torch.int64)

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(z / math.exp(log_t), y))

    lo, hi = (math.log(b) for b in TEMPERATURE_BOUNDS)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll(a), nll(b)
    while hi - lo > tol:
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll(b)
    return math.exp((lo + hi) / 2)


# --- thresholds ----------------------------------------------------------------------------------------


def threshold_for_target(entropies: ArrayLike, correct: ArrayLike, target_accuracy: float) -> float | None:
    """The largest T in [0, 1] with accuracy ≥ ``target_accuracy`` over the samples whose ε < T.

    Exact on the sorted entropies: a T selects the k most confident samples exactly when it lies in
    (ε₍ₖ₎, ε₍ₖ₊₁₎], so the candidates are the prefixes that end where the entropy changes (tied samples
    exit together), and the largest T for prefix k is ε₍ₖ₊₁₎ (1 for all samples). Accuracy is not
    monotone in T, so a smaller T may miss the target; this is the T that lets the most samples exit.
    None when no non-empty prefix reaches the target (T = 0 then sends every sample to the cloud).
    """
    e = np.asarray(entropies, dtype=np.float64)
    c = np.asarray(correct, dtype=bool)
    if e.ndim != 1 or c.shape != e.shape or e.size == 0:
        raise ValueError(f"need as many correctness flags as entropies, got {c.shape} and {e.shape}")
    if not (np.all(np.isfinite(e)) and e.min() >= 0 and e.max() <= 1):
        raise ValueError("normalized entropies must lie in [0, 1]")
    if not 0 < target_accuracy <= 1:
        raise ValueError(f"the target accuracy must be in (0, 1], got {target_accuracy!r}")
    order = np.argsort(e, kind="stable")
    e, c = e[order], c[order]
    accuracy = np.cumsum(c) / np.arange(1, e.size + 1)
    upper = np.append(e[1:], 1.0)  # the largest T that selects prefix k (index k - 1)
    selectable = e < upper  # false inside a run of ties, and for all samples when one has ε = 1
    ok = np.flatnonzero(selectable & (accuracy >= target_accuracy))
    return float(upper[ok[-1]]) if ok.size else None


def calibrate_thresholds(
    entropies: Mapping[str, ArrayLike], correct: Mapping[str, ArrayLike], target_accuracy: float
) -> dict[str, float | None]:
    """:func:`threshold_for_target` for each exit (keys ``"1"``..``"8"``)."""
    if set(entropies) != set(correct):
        raise ValueError(
            f"exits differ: entropies for {sorted(entropies)}, correctness for {sorted(correct)}"
        )
    return {k: threshold_for_target(entropies[k], correct[k], target_accuracy) for k in entropies}


# --- the file ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationFile:
    """Per local exit: the threshold for the target accuracy and the temperature to divide logits by.

    ``thresholds[k]`` is None where no T reached the target (:meth:`threshold` gives 0 then: every sample
    goes to the cloud). ``temperatures[k]`` is 1 without temperature scaling; the edge must divide the
    exit's logits by it before computing ε, as the thresholds were found that way. ``validation`` is the
    split's definition (:meth:`ValidationSplit.describe`, plus ``held_out``: whether the checkpoint says
    it was trained without it) and ``achieved`` what each threshold gave on it.
    """

    target_accuracy: float
    thresholds: Mapping[str, float | None]
    temperatures: Mapping[str, float]
    checkpoint_sha256: str
    validation: Mapping[str, Any]
    temperature_scaling: bool = False
    model: str = ""
    achieved: Mapping[str, Mapping[str, float | None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", dict(self.thresholds))
        object.__setattr__(self, "temperatures", dict(self.temperatures))
        if not 0 < self.target_accuracy <= 1:
            raise ValueError(f"the target accuracy must be in (0, 1], got {self.target_accuracy!r}")
        if set(self.thresholds) != set(self.temperatures) or not self.thresholds:
            raise ValueError("need a threshold and a temperature for the same, non-empty set of exits")
        for k, t in self.thresholds.items():
            if t is not None:
                try:
                    check_threshold(t)
                except ValueError as exc:
                    raise ValueError(f"exit {k}: {exc}") from None
        for k, temp in self.temperatures.items():
            if not (math.isfinite(temp) and temp > 0):
                raise ValueError(f"exit {k}: a temperature must be above 0, got {temp!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.checkpoint_sha256):
            raise ValueError(f"checkpoint_sha256 must be 64 hex digits, got {self.checkpoint_sha256!r}")

    def threshold(self, exit: int | str) -> float:
        """T for ``exit``: 0 where no T reached the target."""
        if str(exit) not in self.thresholds:
            raise ModelError(f"the calibration has no exit {exit} (it has {', '.join(self.thresholds)})")
        t = self.thresholds[str(exit)]
        return 0.0 if t is None else t

    def temperature(self, exit: int | str) -> float:
        if str(exit) not in self.temperatures:
            raise ModelError(f"the calibration has no exit {exit} (it has {', '.join(self.temperatures)})")
        return self.temperatures[str(exit)]

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": CALIBRATION_SCHEMA,
            "target_accuracy": self.target_accuracy,
            "thresholds": dict(self.thresholds),
            "temperatures": dict(self.temperatures),
            "temperature_scaling": self.temperature_scaling,
            "checkpoint": {"sha256": self.checkpoint_sha256, "model": self.model},
            "validation": dict(self.validation),
            "achieved": {k: dict(v) for k, v in self.achieved.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CalibrationFile:
        version = schema_version(data.get("schema"), CALIBRATION_FAMILY)
        if version is None:
            raise ModelError(f"not a calibration file (schema {data.get('schema')!r})")
        if version > CALIBRATION_VERSION:
            raise ModelError(
                f"calibration file version {version} is newer than this program reads "
                f"({CALIBRATION_VERSION}); upgrade localexit"
            )
        try:
            return cls(
                target_accuracy=float(data["target_accuracy"]),
                thresholds={str(k): None if v is None else float(v) for k, v in data["thresholds"].items()},
                temperatures={str(k): float(v) for k, v in data["temperatures"].items()},
                checkpoint_sha256=str(data["checkpoint"]["sha256"]),
                model=str(data["checkpoint"].get("model", "")),
                validation=dict(data["validation"]),
                temperature_scaling=bool(data.get("temperature_scaling", False)),
                achieved={str(k): dict(v) for k, v in data.get("achieved", {}).items()},
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ModelError(f"malformed calibration file: {exc!r}") from exc

    def write(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_json(), allow_nan=False)


def load_calibration(path: str | Path) -> CalibrationFile:
    """Read a calibration file; :class:`ModelError` with the reason if it cannot be used."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelError(f"cannot read calibration file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ModelError(f"{path} is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path} is not a calibration file")
    return CalibrationFile.from_json(data)


# --- calibrating a checkpoint --------------------------------------------------------------------------


@torch.inference_mode()
def local_exit_logits(model: MultiExitModel, data: ImageDataset, batch_size: int = 500) -> dict[str, Tensor]:
    """Logits of every local exit for every sample of ``data`` (the cloud exit is not calibrated)."""
    model.eval()
    keys = [str(k) for k in local_exits(model)]
    parts: dict[str, list[Tensor]] = {k: [] for k in keys}
    for start in range(0, len(data), batch_size):
        x = model.input_spec.normalize(torch.from_numpy(data.images[start : start + batch_size]))
        out = model(x)
        for k in keys:
            parts[k].append(out[k])
    return {k: torch.cat(v) for k, v in parts.items()}


def calibrate_model(
    model: MultiExitModel, data: ImageDataset, target_accuracy: float, *, temperature_scaling: bool = False
) -> tuple[dict[str, float | None], dict[str, float], dict[str, dict[str, float | None]]]:
    """Thresholds, temperatures and what the thresholds achieve on ``data`` (the validation split)."""
    if not local_exits(model):
        raise ModelError(f"a {model_name(model)} model has no local exit to calibrate")
    labels = torch.from_numpy(data.labels)
    entropies: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    temperatures: dict[str, float] = {}
    for k, logits in local_exit_logits(model, data).items():
        temperatures[k] = fit_temperature(logits, labels) if temperature_scaling else 1.0
        # the same float32 entropies the edge computes, so a T taken from them compares identically there
        entropies[k] = normalized_entropy(logits / temperatures[k]).numpy()
        correct[k] = (logits.argmax(1) == labels).numpy()
    thresholds = calibrate_thresholds(entropies, correct, target_accuracy)
    achieved: dict[str, dict[str, float | None]] = {}
    for k, t in thresholds.items():
        local = entropies[k] < (0.0 if t is None else t)
        achieved[k] = {
            "local_fraction": float(local.mean()),
            "local_accuracy": float(correct[k][local].mean()) if local.any() else None,
            "exit_accuracy": float(correct[k].mean()),
        }
    return thresholds, temperatures, achieved


def calibrate_checkpoint(
    checkpoint: str | Path,
    target_accuracy: float,
    *,
    split: ValidationSplit | None = None,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    temperature_scaling: bool = False,
    model_spec: str | None = None,
    samples: int | None = None,
) -> CalibrationFile:
    """Calibrate a checkpoint's local exits on the validation split of its dataset's training split.

    Any multi-exit model's checkpoint (:func:`models.checkpoint.load_model`; ``model_spec`` as
    ``--model-spec``). ``samples``: only the first that many of the validation split (a quick look).

    The file's ``validation.held_out`` is true when the checkpoint records, as ``extra["train"]
    ["validation"] = {"fraction": F, "seed": S}``, that it was trained without this very split.
    """
    if not 0 < target_accuracy <= 1:
        raise ModelError(f"the target accuracy must be in (0, 1], got {target_accuracy!r}")
    split = split or ValidationSplit()
    model, meta = load_model(checkpoint, model_spec)
    name = dataset or meta.dataset
    if not name:
        raise ModelError(f"{checkpoint} does not say which dataset it was trained on; pass --dataset")
    train = load_dataset(name, "train", data_dir)
    _, validation = split.split(train)
    described = split.describe(train)
    if samples is not None:
        if samples < 1:
            raise ModelError(f"--samples must be at least 1, got {samples}")
        validation = validation.subset(samples)
        described |= {"samples": len(validation), "first_samples_only": True}
    trained_on = (meta.extra.get("train") or {}).get("validation")
    held_out = trained_on == {"fraction": split.fraction, "seed": split.seed}
    if not held_out:
        log.warning(
            "%s was trained on the whole training split, validation samples included: the thresholds "
            "will be optimistic (train with this validation split held out for honest ones)",
            checkpoint,
        )
    thresholds, temperatures, achieved = calibrate_model(
        model, validation, target_accuracy, temperature_scaling=temperature_scaling
    )
    return CalibrationFile(
        target_accuracy=target_accuracy,
        thresholds=thresholds,
        temperatures=temperatures,
        checkpoint_sha256=meta.sha256,
        model=meta.config.name,
        validation={**described, "held_out": held_out},
        temperature_scaling=temperature_scaling,
        achieved=achieved,
    )


def build_parser(prog: str = "python -m models.calibration") -> argparse.ArgumentParser:
    p = Parser(prog=prog, description="Choose each local exit's threshold T for a target accuracy.")
    p.add_argument("--checkpoint", type=Path, required=True, help="the model to calibrate")
    p.add_argument(
        "--model-spec",
        metavar="MODULE:FACTORY",
        help="the factory that built the checkpoint's model, when it is not one the project ships",
    )
    p.add_argument("--samples", type=int, help="calibrate on the first N validation samples only")
    p.add_argument(
        "--target-accuracy", type=float, required=True, help="accuracy the local exits must keep, e.g. 0.95"
    )
    p.add_argument("--out", type=Path, required=True, help="the calibration file to write (JSON)")
    p.add_argument("--temperature-scaling", action="store_true", help="fit a temperature per exit head first")
    p.add_argument("--validation-fraction", type=float, default=ValidationSplit.fraction)
    p.add_argument("--validation-seed", type=int, default=ValidationSplit.seed)
    p.add_argument("--dataset", choices=DATASETS, help="default: the one the checkpoint was trained on")
    p.add_argument("--data-dir", type=Path, help="dataset folder (default: the Debian package's folder)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "python -m models.calibration") -> int:
    args = build_parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        try:
            split = ValidationSplit(args.validation_fraction, args.validation_seed)
        except ValueError as exc:
            raise ModelError(str(exc)) from exc
        cal = calibrate_checkpoint(
            args.checkpoint,
            args.target_accuracy,
            split=split,
            dataset=args.dataset,
            data_dir=args.data_dir,
            temperature_scaling=args.temperature_scaling,
            model_spec=args.model_spec,
            samples=args.samples,
        )
        cal.write(args.out)
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out}: {exc.strerror}", file=sys.stderr)
        return 2
    for k, t in cal.thresholds.items():
        a = cal.achieved[k]
        if t is None:
            print(f"exit {k}: no T reaches {cal.target_accuracy:.2%} (T = 0: every sample goes to the cloud)")
            continue
        print(
            f"exit {k}: T = {t:.4f}, temperature {cal.temperatures[k]:.3g}: {a['local_fraction']:.1%} of "
            f"{cal.validation['samples']} validation samples exit locally at {a['local_accuracy']:.2%}"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
