"""Thresholds for a target accuracy, temperature scaling, the calibration file and the validation split."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from contract.rules import exits_locally
from models import ModelError
from models import calibration as cal_mod
from models.calibration import (
    CalibrationFile,
    calibrate_thresholds,
    fit_temperature,
    load_calibration,
    main,
    threshold_for_target,
)
from models.checkpoint import load_checkpoint, save_checkpoint
from models.cnn import ModelConfig
from models.datasets import ImageDataset, ValidationSplit, synthetic_dataset
from models.entropy import normalized_entropy
from models.errors import DatasetError
from models.train import TrainConfig, train

TINY: dict[str, Any] = {"widths": (4, 4, 6, 6, 8, 8, 8, 8, 8), "pool_after": (1, 2, 4)}


# --- thresholds ----------------------------------------------------------------------------------------


def test_threshold_by_hand() -> None:
    e = [0.4, 0.1, 0.5, 0.3, 0.2]  # sorted: 0.1 0.2 0.3 0.4 0.5
    c = [True, True, False, False, True]  # sorted: ✓ ✓ ✗ ✓ ✗ → prefix accuracies 1, 1, 2/3, 3/4, 3/5
    assert threshold_for_target(e, c, 0.75) == 0.5  # the 4 most confident: ε < 0.5
    assert threshold_for_target(e, c, 0.7) == 0.5  # though the 3 most confident miss 0.7
    assert threshold_for_target(e, c, 0.6) == 1.0  # all five
    assert threshold_for_target(e, c, 0.95) == 0.3  # the 2 most confident
    assert threshold_for_target(e, c, 1.0) == 0.3
    assert threshold_for_target([0.2, 0.3], [False, False], 0.5) is None


def test_tied_entropies_exit_together() -> None:
    # sorted: 0.1 ✗, 0.2 ✓, 0.2 ✗, 0.5 ✗. Stopping between the two 0.2s (accuracy 1/2) is not a T:
    # T = 0.2 lets only the first sample out (accuracy 0), T just above 0.2 lets three (1/3).
    assert threshold_for_target([0.1, 0.2, 0.2, 0.5], [False, True, False, False], 0.5) is None
    # and an entropy of exactly 1 never exits (ε < T ≤ 1)
    assert threshold_for_target([0.0, 1.0], [True, True], 0.9) == 1.0
    assert threshold_for_target([0.5, 1.0], [False, True], 0.9) is None


def _brute_force(e: np.ndarray, c: np.ndarray, target: float) -> float | None:
    best = None
    for t in sorted({*e.tolist(), 1.0}):
        chosen = e < t
        if chosen.any() and c[chosen].mean() >= target:
            best = t
    return best


@pytest.mark.parametrize("seed", range(6))
def test_threshold_is_the_largest_t_a_brute_force_finds(seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = np.round(rng.random(60), 2)  # rounding makes ties
    c = rng.random(60) < 1 - 0.6 * e  # confident samples are right more often
    for target in (0.5, 0.7, 0.8, 0.9, 0.99):
        t = threshold_for_target(e, c, target)
        assert t == _brute_force(e, c, target)
        if t is not None:  # and the edge's own rule gives the promised accuracy with it
            local = exits_locally(e.astype(np.float32), t)
            assert c[local].mean() >= target


def test_threshold_input_errors() -> None:
    with pytest.raises(ValueError, match="as many"):
        threshold_for_target([0.1, 0.2], [True], 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        threshold_for_target([1.5], [True], 0.9)
    with pytest.raises(ValueError, match="target accuracy"):
        threshold_for_target([0.1], [True], 0.0)
    with pytest.raises(ValueError, match="exits differ"):
        calibrate_thresholds({"1": [0.1]}, {"2": [True]}, 0.9)
    assert calibrate_thresholds({"1": [0.1, 0.3], "3": [0.2]}, {"1": [True, False], "3": [False]}, 0.9) == {
        "1": 0.3,
        "3": None,
    }


# --- temperature scaling -------------------------------------------------------------------------------


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_temperature_scaling_recovers_a_known_temperature(true_t: float) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(20_000, 10, generator=gen) * 3
    labels = torch.multinomial(torch.softmax(logits / true_t, dim=1), 1, generator=gen).squeeze(1)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.05)


def test_temperature_scaling_keeps_predictions_and_sharpens_or_softens_entropy() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(5000, 10, generator=gen)
    labels = torch.multinomial(torch.softmax(logits * 3, dim=1), 1, generator=gen).squeeze(1)
    t = fit_temperature(logits, labels)
    assert t < 0.5  # the logits are three times too soft
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))
    assert normalized_entropy(logits / t).mean() < normalized_entropy(logits).mean()
    with pytest.raises(ValueError, match="one label per row"):
        fit_temperature(logits, labels[:-1])


# --- the validation split ------------------------------------------------------------------------------


def test_validation_split_is_deterministic_disjoint_and_from_train_only() -> None:
    data = synthetic_dataset(n=200, seed=0, split="train")
    split = ValidationSplit(0.25, seed=3)
    rest, val = split.split(data)
    again_rest, again_val = split.split(data)
    assert len(val) == 50 and len(rest) == 150 and val.split == "validation" and rest.split == "train"
    assert np.array_equal(val.images, again_val.images) and np.array_equal(rest.labels, again_rest.labels)
    train_idx, val_idx = split.indices(200)
    assert not set(train_idx) & set(val_idx) and len({*train_idx, *val_idx}) == 200
    assert not np.array_equal(ValidationSplit(0.25, seed=4).indices(200)[1], val_idx)
    desc = split.describe(data)
    assert desc["samples"] == 50 and desc["of_samples"] == 200 and desc["from_split"] == "train"
    assert desc["indices_sha256"] == hashlib.sha256(val_idx.astype("<i8").tobytes()).hexdigest()
    with pytest.raises(DatasetError, match="never the test split"):
        split.split(synthetic_dataset(n=200, seed=1, split="test"))
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        ValidationSplit(1.0)


# --- the file ------------------------------------------------------------------------------------------


def _file(**over: Any) -> CalibrationFile:
    fields: dict[str, Any] = {
        "target_accuracy": 0.95,
        "thresholds": {"1": None, "5": 0.25},
        "temperatures": {"1": 1.0, "5": 1.5},
        "checkpoint_sha256": "ab" * 32,
        "validation": {"dataset": "synthetic", "fraction": 0.1, "seed": 0, "held_out": True},
        "temperature_scaling": True,
        "model": "mem",
        "achieved": {"1": {"local_fraction": 0.0, "local_accuracy": None}},
    }
    return CalibrationFile(**{**fields, **over})


def test_calibration_file_round_trip_and_lookups(tmp_path: Path) -> None:
    cal = _file()
    cal.write(tmp_path / "c.json")
    back = load_calibration(tmp_path / "c.json")
    assert back == cal
    assert json.loads((tmp_path / "c.json").read_text())["schema"] == "localexit-calibration/1"
    assert back.threshold(5) == 0.25 and back.threshold("1") == 0.0  # None: everything to the cloud
    assert back.temperature(5) == 1.5
    with pytest.raises(ModelError, match="no exit 3"):
        back.threshold(3)


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"target_accuracy": 1.2}, "target accuracy"),
        ({"thresholds": {"1": 1.5, "5": 0.2}}, r"exit 1: the exit threshold T .* \[0, 1\], got 1.5"),
        ({"temperatures": {"1": 0.0, "5": 1.0}}, "exit 1: a temperature"),
        ({"temperatures": {"1": 1.0}}, "same, non-empty set"),
        ({"checkpoint_sha256": "xyz"}, "64 hex digits"),
    ],
)
def test_calibration_file_validates(over: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _file(**over)


def test_calibration_file_refuses_other_and_newer_files(tmp_path: Path) -> None:
    doc = _file().to_json()
    with pytest.raises(ModelError, match="newer than this program reads"):
        CalibrationFile.from_json({**doc, "schema": "localexit-calibration/2"})
    with pytest.raises(ModelError, match="not a calibration file"):
        CalibrationFile.from_json({**doc, "schema": "localexit/1"})
    with pytest.raises(ModelError, match="malformed"):
        CalibrationFile.from_json({k: v for k, v in doc.items() if k != "thresholds"})
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(ModelError, match="not JSON"):
        load_calibration(tmp_path / "x.json")


# --- calibrating a checkpoint --------------------------------------------------------------------------


def small_set(split: str = "train") -> ImageDataset:
    """A small synthetic set of 8-pixel images: a model learns it in seconds on a busy CPU."""
    return synthetic_dataset(n=400, seed=0 if split == "train" else 1, image_size=8, split=split)


@pytest.fixture
def small_train(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calibration loads the small set; returns the list of the splits it asked for."""
    asked: list[str] = []

    def fake_load(name: str, split: str = "test", data_dir: Any = None) -> ImageDataset:
        asked.append(split)
        assert name == "synthetic"
        return small_set(split)

    monkeypatch.setattr(cal_mod, "load_dataset", fake_load)
    return asked


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny MEM trained on the small training split minus the default validation split."""
    split = ValidationSplit()
    rest, _ = split.split(small_set())
    cfg = ModelConfig(kind="mem", image_size=8, input_mean=(0.5,), input_std=(0.25,), **TINY)
    tc = TrainConfig(epochs=4, batch_size=32, lr=0.2, threads=1)
    model, _ = train(cfg, rest, rest.subset(32), tc, progress=False)
    extra = {"train": {"validation": {"fraction": split.fraction, "seed": split.seed}}}
    return save_checkpoint(
        model, tmp_path_factory.mktemp("ckpt") / "mem.pt", dataset="synthetic", extra=extra
    )


def test_calibrate_command_on_a_checkpoint_uses_the_validation_split_only(
    trained: Path, small_train: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mem.calibration.json"
    target = 0.8
    rc = main(["--checkpoint", str(trained), "--target-accuracy", str(target), "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    assert small_train == ["train"]  # never the test split
    cal = load_calibration(out)
    assert cal.checkpoint_sha256 == hashlib.sha256(trained.read_bytes()).hexdigest()
    assert cal.validation["held_out"] is True and cal.validation["samples"] == 40  # 10 % of 400
    assert set(cal.thresholds) == {str(k) for k in range(1, 9)}
    assert set(cal.temperatures.values()) == {1.0}  # no --temperature-scaling
    # recomputed here from the model on the same samples: every threshold keeps the exit at the target
    model, _ = load_checkpoint(trained)
    _, val = ValidationSplit().split(small_set())
    with torch.inference_mode():
        outputs = model(model.normalize(torch.from_numpy(val.images)))
    labels = torch.from_numpy(val.labels)
    reached = 0
    for k, t in cal.thresholds.items():
        right = outputs[k].argmax(1) == labels
        if t is None:
            assert not right.any() or float(right.float().mean()) < target
            continue
        reached += 1
        local = torch.from_numpy(exits_locally(normalized_entropy(outputs[k]).numpy(), t))
        assert right[local].float().mean() >= target
        assert cal.achieved[k]["local_fraction"] == pytest.approx(float(local.float().mean()))
    assert reached >= 1
    assert f"wrote {out}" in capsys.readouterr().out


def test_an_unrecorded_split_is_flagged_as_not_held_out(
    trained: Path, small_train: list[str], tmp_path: Path
) -> None:
    cal = cal_mod.calibrate_checkpoint(trained, 0.8, split=ValidationSplit(0.2, seed=5))
    assert cal.validation["held_out"] is False and cal.validation["seed"] == 5


def test_temperature_scaling_is_recorded_and_changes_the_thresholds(
    trained: Path, small_train: list[str], tmp_path: Path
) -> None:
    plain = tmp_path / "plain.json"
    scaled = tmp_path / "scaled.json"
    args = ["--checkpoint", str(trained), "--target-accuracy", "0.9"]
    assert main([*args, "--out", str(plain)]) == 0
    assert main([*args, "--out", str(scaled), "--temperature-scaling"]) == 0
    assert set(small_train) == {"train"}
    a, b = load_calibration(plain), load_calibration(scaled)
    assert b.temperature_scaling and not a.temperature_scaling
    assert any(t != 1.0 for t in b.temperatures.values())
    assert a.thresholds != b.thresholds


@pytest.mark.parametrize(
    ("extra_args", "message"),
    [
        (["--target-accuracy", "1.5"], "target accuracy must be in (0, 1]"),
        (["--target-accuracy", "0.9", "--validation-fraction", "0"], "validation fraction"),
    ],
)
def test_calibrate_command_errors_are_one_line(
    trained: Path,
    small_train: list[str],
    tmp_path: Path,
    extra_args: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    rc = main(["--checkpoint", str(trained), "--out", str(tmp_path / "x.json"), *extra_args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.json").exists()


def test_calibrate_command_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(
        ["--checkpoint", str(tmp_path / "no.pt"), "--target-accuracy", "0.9", "--out", str(tmp_path / "x")]
    )
    assert rc == 2 and "not found" in capsys.readouterr().err


def test_a_model_without_local_exits_is_refused(tmp_path: Path) -> None:
    from models.cnn import build_model

    path = save_checkpoint(
        build_model(ModelConfig(kind="standard", **TINY)), tmp_path / "s.pt", dataset="synthetic"
    )
    with pytest.raises(ModelError, match="no local exit"):
        cal_mod.calibrate_checkpoint(path, 0.9)
