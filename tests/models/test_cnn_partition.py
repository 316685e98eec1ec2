from __future__ import annotations

from typing import Any

import pytest
import torch

from contract.names import CLOUD, LOCAL_EXITS
from models import ModelError
from models.cnn import ModelConfig, build_model, parse_model_choice
from models.partition import partition

TINY: dict[str, Any] = {"widths": (4, 4, 6, 6, 8, 8, 8, 8, 8), "pool_after": (1, 2, 4)}


def test_exit_heads_per_kind() -> None:
    assert build_model(ModelConfig(kind="standard", **TINY)).config.exit_keys == (CLOUD,)
    assert build_model(ModelConfig(kind="sem", exit=3, **TINY)).config.exit_keys == ("3", CLOUD)
    mem = build_model(ModelConfig(kind="mem", **TINY))
    assert mem.config.exit_keys == (*map(str, LOCAL_EXITS), CLOUD)
    out = mem(torch.randn(5, 1, 28, 28))
    assert set(out) == set(mem.config.exit_keys)
    assert all(v.shape == (5, 10) for v in out.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "sem"}, "needs an exit"),
        ({"kind": "sem", "exit": 9}, "needs an exit"),
        ({"kind": "mem", "exit": 2}, "takes no fixed exit"),
        ({"kind": "cnn"}, "must be one of"),
        ({"kind": "mem", "widths": (4,) * 8}, "9 positive"),
        ({"kind": "mem", "pool_after": (1, 2, 3, 4, 5)}, "shrink"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("kind", "exit"), [("sem", 1), ("sem", 4), ("sem", 8), ("mem", 1), ("mem", 5), ("mem", 8)]
)
def test_partition_equals_full_model(kind: str, exit: int) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(kind=kind, exit=exit if kind == "sem" else None, **TINY)  # type: ignore[arg-type]
    model = build_model(cfg)
    # make BatchNorm running stats non-trivial so a wrong eval/train mode would show
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    edge, cloud = partition(model, exit)
    x = torch.randn(7, 1, 28, 28)
    with torch.inference_mode():
        full = model(x)
        features, logits = edge(x)
        assert features.shape[1:] == edge.feature_shape()
        assert torch.equal(logits, full[str(exit)])
        assert torch.equal(cloud(features), full[CLOUD])


def test_partition_exit_zero_sends_everything_to_cloud() -> None:
    model = build_model(ModelConfig(kind="standard", **TINY))
    edge, cloud = partition(model, 0)
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        features, logits = edge(x)
        assert logits is None
        assert torch.equal(features, x)
        assert torch.equal(cloud(features), model(x)[CLOUD])


def test_partition_rejects_missing_exit() -> None:
    with pytest.raises(ModelError, match="not available in sem-3"):
        partition(build_model(ModelConfig(kind="sem", exit=3, **TINY)), 5)
    with pytest.raises(ModelError, match="no local exit"):
        partition(build_model(ModelConfig(kind="standard", **TINY)), 2)


def test_edge_prepare_checks_shape_and_dtype() -> None:
    edge, _ = partition(build_model(ModelConfig(kind="mem", **TINY)), 2)
    ok = edge.prepare(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert ok.dtype == torch.float32
    assert torch.allclose(ok, torch.full_like(ok, -1.0))  # (0 - 0.5) / 0.5
    with pytest.raises(ModelError, match="uint8 images of shape"):
        edge.prepare(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ModelError, match="uint8 images of shape"):
        edge.prepare(torch.zeros(2, 1, 28, 28))


def test_parse_model_choice() -> None:
    assert parse_model_choice("sem", 3).exit == 3
    assert parse_model_choice("mem", 5).kind == "mem"
    assert parse_model_choice("standard", None).kind == "standard"
    with pytest.raises(ModelError, match="out of range"):
        parse_model_choice("mem", 9)
    with pytest.raises(ModelError, match="a sem model needs a local exit"):
        parse_model_choice("sem", None)
    with pytest.raises(ModelError, match="must be one of standard, sem, mem"):
        parse_model_choice("resnet", 1)
    assert parse_model_choice("standard", 9).kind == "standard"  # its one exit, named by its block
