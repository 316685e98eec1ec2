"""An edge that switches exits on a model whose features at a cut are not a (C, H, W) map."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models import synthetic_dataset
from models.checkpoint import save_checkpoint
from models.protocol import feature_shapes
from models.train import input_spec_of
from nodes.compute import PartsCache, run_edge
from nodes.multiexit import ExitSet, feature_bytes, measure_profile
from tests.models.tiny_model import build_flat

SPEC = "tests.models.tiny_model:build_flat"
DATA = synthetic_dataset(n=64, seed=3)


@pytest.fixture(scope="module")
def flat_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_flat(input_spec_of(DATA))
    path = tmp_path_factory.mktemp("flat") / "flatnet.pt"
    return save_checkpoint(model, path, dataset="synthetic", spec=SPEC)


def test_a_profile_of_a_model_with_flat_features(flat_checkpoint: Path) -> None:
    exits = ExitSet.load(PartsCache(spec=SPEC), flat_checkpoint, (1, 2), 2)
    shapes = feature_shapes(build_flat(input_spec_of(DATA)))
    assert len(shapes[2]) == 1 and len(shapes[1]) == 3  # a vector at exit 2, a map at exit 1
    profile = measure_profile(exits, DATA.images, 0.5, batch_size=32, labels=DATA.labels, repeats=2)
    assert profile.exit_numbers == (1, 2)
    for k in (1, 2):
        out = run_edge(exits.at(k), DATA.images, 0.5)
        assert feature_bytes(exits.at(k)) == 4 * math.prod(shapes[k]) == out.features[0].nbytes
        assert profile.at(k).feature_bytes == out.features[0].nbytes
        assert profile.at(k).local_rate == out.local.mean()
