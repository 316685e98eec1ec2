"""Fixtures for the nodes tests: a tiny multi-exit model saved to a temp checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from tests.programs import procs  # noqa: F401 -- the fixture, for the tests that start node programs


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-mem.pt", dataset="synthetic")
