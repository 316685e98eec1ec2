from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from models import CheckpointError, synthetic_dataset
from models.checkpoint import check_matches, load_checkpoint, save_checkpoint
from models.cnn import ModelConfig, build_model
from models.train import TrainConfig, main, parse_loss_weights, train

TINY: dict[str, Any] = {"widths": (4, 4, 6, 6, 8, 8, 8, 8, 8), "pool_after": (1, 2, 4)}


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_model(ModelConfig(kind="sem", exit=2, **TINY))
    path = save_checkpoint(model, tmp_path / "m.pt", dataset="synthetic", extra={"note": "x"})
    loaded, meta = load_checkpoint(path)
    assert meta.config == model.config and meta.dataset == "synthetic" and meta.extra == {"note": "x"}
    assert len(meta.sha256) == 64
    x = torch.randn(2, 1, 28, 28)
    model.eval()
    with torch.inference_mode():
        assert all(torch.equal(a, b) for a, b in zip(model(x).values(), loaded(x).values(), strict=True))
    check_matches(meta, "sem", 2, "synthetic")
    with pytest.raises(CheckpointError, match="holds a sem-2 model"):
        check_matches(meta, "sem", 3)
    with pytest.raises(CheckpointError, match="trained on synthetic"):
        check_matches(meta, "sem", 2, "fashion-mnist")


def test_bad_checkpoints(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="not a valid localexit checkpoint"):
        load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="its format is None, not 'localexit-checkpoint/1'"):
        load_checkpoint(other)
    path = save_checkpoint(
        build_model(ModelConfig(kind="mem", **TINY)), tmp_path / "m.pt", dataset="synthetic"
    )
    payload = torch.load(path, weights_only=True)
    payload["config"]["widths"] = [5] * 9
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(path)
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="not a valid localexit checkpoint"):
        load_checkpoint(truncated)


def test_code_in_checkpoint_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self) -> tuple:
            return (print, ("owned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "localexit-checkpoint/1", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a valid localexit checkpoint"):
        load_checkpoint(path)


def test_loss_weights() -> None:
    keys = ("1", "5", "cloud")
    assert parse_loss_weights("equal", keys) == {"1": 1.0, "5": 1.0, "cloud": 1.0}
    assert parse_loss_weights("linear", keys)["1"] == pytest.approx(1 / 9)
    assert parse_loss_weights("5:0.25", keys) == {"1": 1.0, "5": 0.25, "cloud": 1.0}
    for bad in ("5:-1", "x:1", "5", "1:0,5:0,cloud:0"):
        with pytest.raises(ValueError, match="bad loss weights"):
            parse_loss_weights(bad, keys)


def test_short_training_lowers_loss_and_is_reproducible() -> None:
    train_data = synthetic_dataset(n=512, seed=0, split="train")
    test_data = synthetic_dataset(n=128, seed=1)
    cfg = ModelConfig(kind="sem", exit=2, input_mean=(0.5,), input_std=(0.25,), **TINY)
    tc = TrainConfig(epochs=4, batch_size=32, lr=0.2, seed=7)
    _, log = train(cfg, train_data, test_data, tc, progress=False)
    losses = [e["loss"] for e in log["epochs"]]
    assert losses[-1] < losses[0] * 0.8
    assert max(log["final"]["test_accuracy"].values()) > 0.25  # 10 classes: chance is 0.1
    assert set(log["epochs"][0]["train_accuracy"]) == {"2", "cloud"}
    _, again = train(cfg, train_data, test_data, tc, progress=False)
    assert [e["loss"] for e in again["epochs"]] == losses


def test_train_command_writes_checkpoint_and_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sem-1.pt"
    rc = main(
        [
            "--model",
            "sem",
            "--exit",
            "1",
            "--dataset",
            "synthetic",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--out",
            str(out),
            "--quiet",
        ]
    )
    assert rc == 0
    _, meta = load_checkpoint(out)
    assert meta.config.name == "sem-1" and meta.dataset == "synthetic"
    log = json.loads(out.with_suffix(".train.json").read_text())
    assert log["schema"] == "localexit-trainlog/1" and len(log["epochs"]) == 1
    assert "sem-1: wrote" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "sem"], "needs --exit"),
        (["--model", "mem", "--exit", "3"], "only for sem"),
        ([], "say which model"),
        (["--model", "mem", "--loss-weights", "bogus"], "bad loss weights"),
        (["--model", "mem", "--dataset", "fashion-mnist", "--data-dir", "/nonexistent"], "apt-get install"),
    ],
)
def test_train_command_errors(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


SHIPPED = ["standard", *(f"sem-{k}" for k in range(1, 9)), "mem"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_checkpoints_load_and_meet_the_accuracy_bar(name: str) -> None:
    from models.checkpoint import ZOO_DIR

    path = ZOO_DIR / "fashion-mnist" / f"{name}.pt"
    _, meta = load_checkpoint(path)
    assert meta.config.name == name and meta.dataset == "fashion-mnist"
    log = json.loads(path.with_suffix(".train.json").read_text())
    assert log["schema"] == "localexit-trainlog/1" and log["model"]["name"] == name
    assert log["final"]["test_accuracy"]["cloud"] >= 0.90
    assert meta.extra["final"]["test_accuracy"] == log["final"]["test_accuracy"]


def test_shipped_mem_accuracy_is_what_its_log_says() -> None:
    from models import DatasetError, load_dataset
    from models.checkpoint import ZOO_DIR
    from models.train import evaluate

    try:
        test = load_dataset("fashion-mnist", "test")
    except DatasetError:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    path = ZOO_DIR / "fashion-mnist" / "mem.pt"
    model, _ = load_checkpoint(path)
    recorded = json.loads(path.with_suffix(".train.json").read_text())["final"]["test_accuracy"]
    measured = evaluate(model, test)
    assert measured == pytest.approx(recorded, abs=1e-9)
    assert all(measured[k] < measured["cloud"] for k in ("1", "2"))  # early exits are the weak ones


def test_train_command_never_writes_into_the_shipped_zoo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from models.checkpoint import ZOO_DIR

    before = {p: p.stat().st_mtime_ns for p in ZOO_DIR.rglob("*")}
    monkeypatch.chdir(tmp_path)
    rc = main(["--model", "sem", "--exit", "1", "--dataset", "synthetic", "--epochs", "1", "--max-train-samples",
               "256", "--quiet"])  # fmt: skip
    assert rc == 0
    assert (tmp_path / "checkpoints" / "synthetic" / "sem-1.pt").is_file()
    assert (tmp_path / "checkpoints" / "synthetic" / "sem-1.train.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in ZOO_DIR.rglob("*")} == before
