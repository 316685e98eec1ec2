"""The rules on shared values, each stated once.

A value is checked where it enters a process -- a command line, a configuration, a file, a message --
and those places call these functions; code past that point trusts it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeGuard

from contract.names import LOCAL_EXITS, MODEL_KINDS

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


#: The exit threshold T is compared with a normalized entropy, which lies in [0, 1].
THRESHOLD_MIN = 0.0
THRESHOLD_MAX = 1.0
#: A batch holds at least one image.
MIN_BATCH_SIZE = 1


def is_number(value: object) -> TypeGuard[int | float]:
    """A finite JSON number (booleans are not numbers here, though Python says they are)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_threshold(value: object) -> float:
    """The exit threshold T as a float; ``ValueError`` unless it is a number in [0, 1] (T is compared
    with a normalized entropy, which lies in [0, 1])."""
    if is_number(value) and THRESHOLD_MIN <= value <= THRESHOLD_MAX:
        return float(value)
    raise ValueError(
        f"the exit threshold T is a normalized entropy in [{THRESHOLD_MIN:g}, {THRESHOLD_MAX:g}], got {value!r}"
    )


def check_batch_size(value: object) -> int:
    """The batch size as an int; ``ValueError`` unless it is an integer ≥ 1."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIN_BATCH_SIZE:
        return value
    raise ValueError(f"the batch size must be an integer ≥ {MIN_BATCH_SIZE}, got {value!r}")


def check_model_exit(model: object, exit: object) -> None:
    """``ValueError`` unless ``exit`` is a local exit ``model`` can run with: none for ``standard`` (it
    has the cloud exit only), one of 1..8 for ``sem`` and ``mem`` (the exit in force)."""
    if model not in MODEL_KINDS:
        raise ValueError(f"the model must be one of {', '.join(MODEL_KINDS)}, not {model!r}")
    last = LOCAL_EXITS[-1]
    if model == "standard":
        if exit is not None:
            raise ValueError(f"the standard model has only the cloud exit, so no local exit (got {exit!r})")
    elif exit is None:
        raise ValueError(f"a {model} model needs a local exit K in 1..{last}")
    elif isinstance(exit, bool) or not isinstance(exit, int) or exit not in LOCAL_EXITS:
        raise ValueError(f"exit {exit!r} is out of range: {model} models have local exits 1..{last}")


def exits_locally(entropy: NDArray[np.floating], threshold: float) -> NDArray[np.bool_]:
    """The paper's exit rule: which samples leave at the local exit, those whose normalized entropy
    ε < T. Strict, so T = 0 sends every sample to the cloud; a NaN ε (no exit head) never exits."""
    return entropy < threshold
