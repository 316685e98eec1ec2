from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from models.entropy import normalized_entropy


def test_uniform_is_one_and_one_hot_is_zero() -> None:
    eps = normalized_entropy(torch.tensor([[0.0] * 10, [1000.0] + [-1000.0] * 9]))
    assert eps[0].item() == pytest.approx(1.0, abs=1e-6)
    assert eps[1].item() == 0.0
    assert not torch.isnan(eps).any()


def test_matches_definition() -> None:
    p = torch.tensor([0.7, 0.2, 0.1])
    expected = -(p * p.log()).sum().item() / math.log(3)
    assert normalized_entropy(p.log().unsqueeze(0)).item() == pytest.approx(expected, rel=1e-6)


@given(st.lists(st.floats(-1e4, 1e4), min_size=2, max_size=20))
def test_always_in_unit_interval(row: list[float]) -> None:
    eps = normalized_entropy(torch.tensor([row]))
    assert 0.0 <= eps.item() <= 1.0


def test_rejects_bad_shape() -> None:
    with pytest.raises(ValueError, match="classes"):
        normalized_entropy(torch.zeros(3))
