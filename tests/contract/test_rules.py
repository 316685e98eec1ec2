"""The rules on shared values: each stated once, and what they accept."""

from __future__ import annotations

import math

import numpy as np
import pytest

from contract.rules import (
    THRESHOLD_MAX,
    THRESHOLD_MIN,
    check_batch_size,
    check_model_exit,
    check_threshold,
    exits_locally,
)


@pytest.mark.parametrize("value", [0, 0.0, 0.3, 1, 1.0])
def test_thresholds_in_the_unit_interval_are_taken(value: float) -> None:
    assert check_threshold(value) == float(value)


@pytest.mark.parametrize("value", [-0.01, 1.01, math.nan, math.inf, True, "0.3", None])
def test_other_thresholds_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match=r"normalized entropy in \[0, 1\]"):
        check_threshold(value)


@pytest.mark.parametrize(
    ("model", "exit", "message"),
    [
        ("cnn", 3, "must be one of standard, sem, mem"),
        ("standard", 3, "only the cloud exit"),
        ("sem", None, "a sem model needs a local exit K in 1..8"),
        ("mem", 9, "exit 9 is out of range: mem models have local exits 1..8"),
        ("mem", 0, "exit 0 is out of range"),
        ("sem", True, "out of range"),
        ("sem", 3.0, "out of range"),
    ],
)
def test_model_and_exit(model: str, exit: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_model_exit(model, exit)


def test_model_and_exit_that_run() -> None:
    for model, exit in (("standard", None), ("sem", 1), ("mem", 8)):
        check_model_exit(model, exit)


def test_the_exit_rule_is_strict() -> None:
    eps = np.array([0.0, 0.1, 0.3, 0.5, math.nan], dtype=np.float32)
    assert exits_locally(eps, 0.3).tolist() == [True, True, False, False, False]
    assert not exits_locally(eps, 0.0).any()  # T = 0: every sample goes to the cloud
    assert exits_locally(eps, 1.0).tolist() == [True, True, True, True, False]  # no head: never local


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "32", None])
def test_a_batch_size_that_is_not_a_positive_integer_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="the batch size must be an integer ≥ 1"):
        check_batch_size(value)
    assert check_batch_size(32) == 32


def test_the_nodes_messages_refuse_the_thresholds_the_rule_refuses() -> None:
    """The wire's Threshold type takes its bounds from the rule, so a node refuses what the harness does."""
    import msgspec

    from nodes.messages import Configure

    base = {"checkpoint": "mem.pt", "exit": 5}
    ok = msgspec.convert({**base, "threshold": THRESHOLD_MAX}, Configure)
    assert ok.threshold == check_threshold(THRESHOLD_MAX)
    for outside in (THRESHOLD_MIN - 0.01, THRESHOLD_MAX + 0.01):
        with pytest.raises(msgspec.ValidationError, match="threshold"):
            msgspec.convert({**base, "threshold": outside}, Configure)
