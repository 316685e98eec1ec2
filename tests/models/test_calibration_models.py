"""`harness calibrate` on models other than the paper's CNN: a user's model (``--model-spec``) and the
shipped ResNet-18 / MobileNetV2 checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.cli import main as harness_main
from models import calibration as cal_mod
from models.calibration import load_calibration, threshold_for_target
from models.checkpoint import ARCHITECTURES_DIR, load_model, save_checkpoint
from models.datasets import ImageDataset, ValidationSplit, load_dataset, synthetic_dataset
from models.entropy import normalized_entropy
from models.errors import DatasetError
from models.protocol import InputSpec
from tests.models.tiny_model import build

SPEC = "tests.models.tiny_model:build"


def small_set() -> ImageDataset:
    return synthetic_dataset(n=300, seed=0, image_size=8, split="train")


@pytest.fixture
def tiny_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An (untrained) TinyNet on 8-pixel images; calibration loads the small synthetic set."""
    monkeypatch.setattr(cal_mod, "load_dataset", lambda name, split="test", data_dir=None: small_set())
    torch.manual_seed(0)
    model = build(InputSpec(size=8))
    return save_checkpoint(model, tmp_path / "tiny.pt", dataset="synthetic", spec=SPEC)


def test_calibrate_a_users_model_by_its_spec(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "tiny.calibration.json"
    target = 0.05  # an untrained model: a low target, so that some T reaches it
    argv = ["calibrate", "--checkpoint", str(tiny_checkpoint), "--target-accuracy", str(target)]
    rc = harness_main([*argv, "--model-spec", SPEC, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    cal = load_calibration(out)
    assert cal.model == "tinynet" and set(cal.thresholds) == {"1", "2"}
    # the thresholds are those of the model's own exits on the validation split
    model, _ = load_model(tiny_checkpoint, SPEC)
    _, val = ValidationSplit().split(small_set())
    with torch.inference_mode():
        outputs = model(model.input_spec.normalize(torch.from_numpy(val.images)))
    labels = torch.from_numpy(val.labels)
    for k in ("1", "2"):
        right = (outputs[k].argmax(1) == labels).numpy()
        assert cal.thresholds[k] == threshold_for_target(
            normalized_entropy(outputs[k]).numpy(), right, target
        )
    assert any(t is not None for t in cal.thresholds.values())


def test_a_users_model_needs_its_spec(
    tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "x.json"
    argv = ["calibrate", "--checkpoint", str(tiny_checkpoint), "--target-accuracy", "0.5", "--out", str(out)]
    assert harness_main(argv) == 2
    err = capsys.readouterr().err
    assert f"--model-spec {SPEC}" in err and "Traceback" not in err
    assert not out.exists()


def test_samples_limits_the_validation_split(tiny_checkpoint: Path) -> None:
    cal = cal_mod.calibrate_checkpoint(tiny_checkpoint, 0.05, model_spec=SPEC, samples=7)
    assert cal.validation["samples"] == 7 and cal.validation["first_samples_only"] is True
    with pytest.raises(cal_mod.ModelError, match="--samples"):
        cal_mod.calibrate_checkpoint(tiny_checkpoint, 0.05, model_spec=SPEC, samples=0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_calibrate_a_shipped_architecture(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = ARCHITECTURES_DIR / "fashion-mnist" / f"{name}.pt"
    if not path.exists():
        pytest.skip(f"{path} not shipped in this checkout")
    try:
        load_dataset("fashion-mnist", "train")
    except DatasetError as exc:
        pytest.skip(f"no Fashion-MNIST here: {exc}")
    out = tmp_path / f"{name}.calibration.json"
    target = 0.9
    argv = ["calibrate", "--checkpoint", str(path), "--target-accuracy", str(target), "--samples", "200"]
    rc = harness_main([*argv, "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    cal = load_calibration(out)
    assert cal.model == name and set(cal.thresholds) == {"1", "2", "3"}
    assert cal.validation["samples"] == 200 and cal.validation["dataset"] == "fashion-mnist"
    reached = [k for k, t in cal.thresholds.items() if t is not None]
    assert reached  # a trained model keeps some exit at 90 % on some samples
    for k in reached:
        got = cal.achieved[k]
        assert got["local_accuracy"] is not None and got["local_accuracy"] >= target
        assert got["local_fraction"] is not None and got["local_fraction"] > 0
    # the deepest exit lets at least as many samples out as the shallowest (it is the more certain)
    fraction = {k: cal.achieved[k]["local_fraction"] or 0.0 for k in cal.thresholds}
    assert fraction["3"] >= fraction["1"]
