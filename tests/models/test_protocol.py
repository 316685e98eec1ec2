"""The multi-exit model protocol: the paper's CNN and a user's model split, save, load and train alike."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from contract.names import CLOUD
from models import CheckpointError, ModelError, synthetic_dataset
from models.checkpoint import ARCHITECTURES_DIR, load_checkpoint, load_model, save_checkpoint
from models.cnn import ModelConfig, build_model
from models.partition import partition
from models.protocol import (
    InputSpec,
    PartitionError,
    build_from_spec,
    check_model,
    check_partition,
    feature_shapes,
    resolve_spec,
)
from models.train import input_spec_of, main

SPEC = "tests.models.tiny_model:build"
TINY: dict[str, Any] = {"widths": (4, 4, 6, 6, 8, 8, 8, 8, 8), "pool_after": (1, 2, 4)}
INPUT = InputSpec(channels=1, size=28, num_classes=10, mean=(0.5,), std=(0.25,))


def _trained_bn(model: torch.nn.Module) -> None:
    """BatchNorm running statistics away from their initial values, so a wrong mode would show."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 28, 28) * 2 + 0.5)
    model.eval()


def test_paper_cnn_implements_the_protocol() -> None:
    model = build_model(ModelConfig(kind="mem", **TINY))
    check_model(model)
    assert len(model.stages) == 9 and sorted(model.exit_heads) == list(range(1, 9))
    # pooling after blocks 1, 2 and 4: 28 → 14 → 7 → 3
    shapes = feature_shapes(model)
    assert shapes[0] == (1, 28, 28) and shapes[1] == (4, 14, 14) and shapes[3] == (6, 7, 7)
    assert shapes[4] == (6, 3, 3) and shapes[8] == (8, 3, 3)
    check_partition(model)


def test_user_model_splits_at_every_exit() -> None:
    torch.manual_seed(0)
    model = build_from_spec(SPEC, INPUT)
    _trained_bn(model)  # type: ignore[arg-type]
    x = torch.randn(5, 1, 28, 28)
    with torch.inference_mode():
        full = model(x)
        for exit, shape in ((0, (1, 28, 28)), (1, (4, 14, 14)), (2, (6, 7, 7))):
            edge, cloud = partition(model, exit)
            features, logits = edge(x)
            assert tuple(features.shape[1:]) == edge.feature_shape() == shape
            assert torch.equal(cloud(features), full[CLOUD])
            if exit:
                assert logits is not None and torch.equal(logits, full[str(exit)])
    with pytest.raises(ModelError, match=r"exit 3 is not available in tinynet: it has local exit\(s\) 1, 2"):
        partition(model, 3)


def test_user_model_checkpoint_needs_its_spec(tmp_path: Path) -> None:
    model = build_from_spec(SPEC, INPUT)
    _trained_bn(model)  # type: ignore[arg-type]
    path = save_checkpoint(model, tmp_path / "tiny.pt", dataset="synthetic", spec=SPEC)  # type: ignore[arg-type]
    payload = torch.load(path, weights_only=True)
    assert payload["model_class"] == "tests.models.tiny_model.TinyNet"
    assert payload["model"]["spec"] == SPEC
    # a file never makes the loader import code: the user names the factory
    with pytest.raises(CheckpointError, match=f"pass --model-spec {SPEC}"):
        load_model(path)
    with pytest.raises(CheckpointError, match=r"not by tests\.models\.tiny_model:build_skipping"):
        load_model(path, "tests.models.tiny_model:build_skipping")
    with pytest.raises(CheckpointError, match="not the paper's CNN"):
        load_checkpoint(path)
    loaded, meta = load_model(path, SPEC)
    assert meta.spec == SPEC and meta.config.kind == "mem" and meta.config.local_exits == (1, 2)
    assert meta.input == INPUT
    x = torch.randn(3, 1, 28, 28)
    with torch.inference_mode():
        want, got = model(x), loaded(x)
        assert all(torch.equal(want[k], got[k]) for k in want)
    cnn = save_checkpoint(
        build_model(ModelConfig(kind="mem", **TINY)), tmp_path / "cnn.pt", dataset="synthetic"
    )
    assert torch.load(cnn, weights_only=True)["model_class"] == "models.cnn.MultiExitCNN"
    with pytest.raises(CheckpointError, match="holds the paper's CNN"):
        load_model(cnn, SPEC)


def test_a_model_that_does_not_split_is_refused_on_load(tmp_path: Path) -> None:
    spec = "tests.models.tiny_model:build_skipping"
    path = save_checkpoint(build_from_spec(spec, INPUT), tmp_path / "skip.pt", dataset="synthetic", spec=spec)  # type: ignore[arg-type]
    with pytest.raises(PartitionError, match="does not split at exit 0: the cloud exit's output"):
        load_model(path, spec)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("not a spec", "reads package.module:factory"),
        ("tests.models.no_such_module:build", "cannot import tests.models.no_such_module"),
        ("tests.models.tiny_model:nope", "has no function nope"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        resolve_spec(spec)


def test_a_factory_that_builds_no_multi_exit_model() -> None:
    with pytest.raises(ModelError, match="lacks stages, exit_heads, final_head, input_spec"):
        build_from_spec("tests.models.tiny_model:build_not_a_model", INPUT)


def test_train_a_user_model_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny.pt"
    argv = ["--model-spec", SPEC, "--dataset", "synthetic", "--epochs", "1", "--max-train-samples", "64"]
    assert main([*argv, "--out", str(out), "--quiet", "--threads", "1"]) == 0
    assert "tinynet: wrote" in capsys.readouterr().out
    log = json.loads(out.with_suffix(".train.json").read_text())
    assert log["model"]["spec"] == SPEC and log["model"]["kind"] == "mem" and log["device"]["device"] == "cpu"
    assert set(log["final"]["test_accuracy"]) == {"1", "2", CLOUD}
    _, meta = load_model(out, SPEC)
    assert meta.input == input_spec_of(synthetic_dataset(split="train"))
    assert main([*argv, "--model", "mem", "--out", str(out)]) == 2
    assert "leave out --model" in capsys.readouterr().err


def test_training_on_a_missing_device_fails_before_it_starts(tmp_path: Path) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    proc = subprocess.run(
        [sys.executable, "-m", "models", "--model", "sem", "--exit", "1", "--device", "cuda:7",
         "--dataset", "synthetic", "--out", str(tmp_path / "x.pt")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "error: --device cuda:7:" in proc.stderr
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("factory", ["resnet18", "mobilenet_v2"])
def test_torchvision_architectures_split_and_shrink(factory: str) -> None:
    model = build_from_spec(f"models.torchvision_exits:{factory}", INPUT)
    check_partition(model)
    shapes = feature_shapes(model)
    assert sorted(shapes) == [0, 1, 2, 3]
    # each exit after the first sees a smaller map than the one before it
    sides = [shapes[k][-1] for k in (1, 2, 3)]
    assert sides == sorted(sides, reverse=True) and sides[0] > sides[2]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_shipped_torchvision_checkpoints_load_without_a_spec(name: str) -> None:
    path = ARCHITECTURES_DIR / "fashion-mnist" / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} not trained (python -m models --model-spec models.torchvision_exits:{name})")
    model, meta = load_model(path)
    assert meta.spec == f"models.torchvision_exits:{name}" and meta.config.local_exits == (1, 2, 3)
    log = json.loads(path.with_suffix(".train.json").read_text())
    assert log["final"]["test_accuracy"][CLOUD] > 0.85
    assert path.stat().st_size < 3.2e6
    assert math.prod(feature_shapes(model)[3]) < math.prod(feature_shapes(model)[1])


def test_the_paper_cnns_zoo_folder_holds_its_grid_only() -> None:
    """`reproduce` reads every training log of the CNN's zoo folder as the paper's grid (one MEM)."""
    from models.checkpoint import ZOO_DIR
    from reports.loader import load_train_logs
    from reports.tables import training_table

    logs = load_train_logs([ZOO_DIR / "fashion-mnist"])
    assert sum(log.kind == "mem" for log in logs) == 1
    assert len(training_table(logs).rows) == 8
