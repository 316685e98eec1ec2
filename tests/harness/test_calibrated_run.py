"""``python -m harness run --calibration FILE``: the edge cuts at the file's thresholds, and the results say so."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from harness.cli import run_config_from_args
from harness.config import RunConfig, config_from_dict, config_to_dict
from harness.errors import ConfigError
from harness.parsers import parse
from harness.runner import NodeCommands, prepare, run_experiment
from models.calibration import CalibrationFile
from nodes.compute import load_parts, run_edge
from tests.harness.conftest import FakeTestbed


def _entropies(checkpoint: Path, exit: int, cfg: RunConfig) -> np.ndarray:
    """ε at ``exit`` of the samples a run measures, worked out here."""
    from models import load_dataset

    data = load_dataset(cfg.dataset, "test", None)
    ids = np.random.default_rng(cfg.seed).permutation(len(data))[: cfg.samples]
    return run_edge(load_parts(checkpoint, exit), data.images[ids], 0.5).entropy


def _calibration(path: Path, checkpoint: Path, thresholds: dict[int, float]) -> Path:
    CalibrationFile(
        target_accuracy=0.9,
        thresholds={str(k): t for k, t in thresholds.items()},
        temperatures={str(k): 1.0 for k in thresholds},
        checkpoint_sha256=load_parts(checkpoint, 0).meta.sha256,
        validation={"samples": 10},
    ).write(path)
    return path


@pytest.mark.slow
def test_a_calibrated_run_exits_what_its_file_s_threshold_exits_and_records_the_file(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cfg = small_config.replace(exit=1, samples=32, ready_timeout_s=60.0)
    entropy = _entropies(tiny_checkpoint, 1, cfg)
    t1 = float(np.median(entropy))
    by_hand = int((entropy < t1).sum())
    assert 0 < by_hand < 32
    cal = _calibration(tmp_path / "cal.json", tiny_checkpoint, {1: t1, 2: 0.0})
    calibrated = run_experiment(cfg.replace(calibration=cal)).to_json()
    plain = run_experiment(cfg.replace(threshold=t1)).to_json()
    assert calibrated["runs"][0]["summary"]["local_exits"] == by_hand
    assert plain["runs"][0]["summary"]["local_exits"] == by_hand
    recorded = calibrated["config"]
    assert recorded["threshold"] == t1
    assert recorded["calibration"]["file"] == str(cal)
    assert recorded["calibration"]["sha256"] == hashlib.sha256(cal.read_bytes()).hexdigest()
    assert recorded["calibration"]["thresholds"] == {"1": t1}
    # the request as recorded runs again (harness check) with the same file
    assert config_from_dict(recorded["request"]).calibration == cal


def test_a_calibration_for_another_checkpoint_is_refused_before_anything_starts(
    small_config: RunConfig, tiny_checkpoint: Path, tiny_sem3_checkpoint: Path, tmp_path: Path,
    fake_testbed: type[FakeTestbed],
) -> None:  # fmt: skip
    cal = _calibration(tmp_path / "cal.json", tiny_sem3_checkpoint, {3: 0.5})
    with pytest.raises(ConfigError, match="another checkpoint"):
        run_experiment(small_config.replace(calibration=cal), testbed_factory=fake_testbed)
    assert fake_testbed.instances == []


def test_a_calibration_without_the_run_s_exit_is_refused(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cal = _calibration(tmp_path / "cal.json", tiny_checkpoint, {1: 0.5})
    with pytest.raises(ConfigError, match="no threshold for exit 2"):
        prepare(small_config.replace(calibration=cal))


def test_the_edge_is_given_the_file_and_the_run_its_threshold(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    cal = _calibration(tmp_path / "cal.json", tiny_checkpoint, {2: 0.25, 5: 0.75})
    plan = prepare(small_config.replace(calibration=cal))
    assert plan.config.threshold == 0.25
    argv = NodeCommands().edge(plan, "127.0.0.1", 1, ("127.0.0.1", 2), None)
    assert argv[argv.index("--calibration") + 1] == str(cal) and "--threshold" not in argv
    test_argv = NodeCommands().test(plan, ("127.0.0.1", 1), ("127.0.0.1", 2), tmp_path / "r.json")
    assert float(test_argv[test_argv.index("--threshold") + 1]) == 0.25
    assert "calibrated" in plan.config.label()
    assert config_to_dict(plan.config)["calibration"] == str(cal)


def test_threshold_and_calibration_together_are_one_clear_error(tmp_path: Path) -> None:
    args = parse(["run", "--threshold", "0.3", "--calibration", str(tmp_path / "cal.json")])
    with pytest.raises(ConfigError, match="--threshold and --calibration"):
        run_config_from_args(args)
    assert run_config_from_args(parse(["run"])).threshold == RunConfig().threshold


def test_the_standard_model_has_no_exit_to_calibrate(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="standard model has none"):
        RunConfig(model="standard", exit=None, calibration=tmp_path / "cal.json")


def test_harness_profile_measures_each_exit_at_the_calibration_s_threshold(
    tiny_checkpoint: Path, tiny_sem3_checkpoint: Path, tmp_path: Path
) -> None:
    from harness import profile
    from nodes.policy import read_profile

    cal = _calibration(tmp_path / "cal.json", tiny_checkpoint, {1: 0.0, 2: 1.0})
    out = tmp_path / "profile.json"
    argv = ["--checkpoint", str(tiny_checkpoint), "--dataset", "synthetic", "--samples", "16"]
    argv += ["--batch-size", "8", "--repeats", "2", "--exits", "1,2", "--out", str(out)]
    assert profile.main([*argv, "--calibration", str(cal)]) == 0
    measured = read_profile(out)
    # T = 0 keeps every sample for the cloud, T = 1 lets every one out (their entropies are below 1)
    assert [(e.exit, e.threshold, e.local_rate) for e in measured.exits] == [(1, 0.0, 0.0), (2, 1.0, 1.0)]
    other = _calibration(tmp_path / "other.json", tiny_sem3_checkpoint, {1: 0.5, 2: 0.5})
    assert profile.main([*argv, "--calibration", str(other)]) == 2
