"""Sweeps: one results file per point, a manifest, and resuming after an interruption."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.config import LinkOptions, RunConfig
from harness.errors import ConfigError, NodeFailure
from harness.runner import run_experiment
from harness.sweep import MANIFEST_NAME, SweepSpec, point_path, run_sweep

from .conftest import FakeCommands, FakeTestbed


def spec_for(base: RunConfig) -> SweepSpec:
    return SweepSpec(base, ("mem",), (1, 2), (0.3, 0.5), (LinkOptions(), LinkOptions(rate="10mbit")))


def test_grid_points() -> None:
    spec = SweepSpec.paper(RunConfig())
    points = spec.points()
    assert len(points) == 64
    assert {p.name for p in points if p.model == "sem"} == {f"sem-{k}" for k in range(1, 9)}
    assert len({p.label() for p in points}) == 64
    with_standard = SweepSpec(RunConfig(), ("standard", "sem"), (1,), (0.1, 0.3), (LinkOptions(),))
    assert [p.name for p in with_standard.points()] == ["standard", "sem-1", "sem-1"]
    with pytest.raises(ValueError, match="out of range"):
        SweepSpec(RunConfig(), ("sem",), (9,), (0.3,), (LinkOptions(),))


def test_interrupted_sweep_resumes(small_config: RunConfig, tmp_path: Path) -> None:
    spec = spec_for(small_config)
    calls: list[str] = []

    def run_point(cfg: RunConfig, stop_after: int | None = None) -> dict[str, Any]:
        if stop_after is not None and len(calls) == stop_after:
            raise KeyboardInterrupt
        calls.append(cfg.label())
        return run_experiment(cfg, testbed_factory=FakeTestbed, commands=FakeCommands())

    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, tmp_path, lambda c: run_point(c, stop_after=3), progress=False)
    assert len(calls) == 3
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert [p["status"] for p in manifest["points"]].count("done") == 3
    # A damaged results file counts as not done.
    damaged = point_path(tmp_path, spec.points()[0])
    damaged.write_text(damaged.read_text()[:100])
    calls.clear()
    outcome = run_sweep(spec, tmp_path, run_point, progress=False)
    assert outcome.skipped == 2 and outcome.done == 6 and outcome.failed == 0
    assert spec.points()[0].label() in calls and spec.points()[1].label() not in calls
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert all(p["status"] == "done" for p in manifest["points"])
    assert len(list((tmp_path / "points").glob("*.json"))) == 8
    # Everything done: a third run does nothing.
    calls.clear()
    assert run_sweep(spec, tmp_path, run_point, progress=False).skipped == 8 and not calls


def test_failed_point_is_recorded_and_sweep_goes_on(small_config: RunConfig, tmp_path: Path) -> None:
    spec = SweepSpec(small_config, ("mem",), (1, 2), (0.3,), (LinkOptions(),))

    def run_point(cfg: RunConfig) -> dict[str, Any]:
        if cfg.exit == 1:
            raise NodeFailure("edge", "exited with code 1", "boom")
        return run_experiment(cfg, testbed_factory=FakeTestbed, commands=FakeCommands())

    outcome = run_sweep(spec, tmp_path, run_point, progress=False)
    assert outcome.failed == 1 and outcome.done == 1 and outcome.exit_code == 1
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    failed = [p for p in manifest["points"] if p["status"] == "failed"]
    assert len(failed) == 1 and "boom" in failed[0]["error"]


def test_preflight_stops_before_running(small_config: RunConfig, tmp_path: Path) -> None:
    spec = SweepSpec(small_config, ("mem",), (1, 2), (0.3,), (LinkOptions(),))

    def preflight(cfg: RunConfig) -> None:
        if cfg.exit == 2:
            raise ConfigError("no checkpoint for exit 2")

    with pytest.raises(ConfigError):
        run_sweep(spec, tmp_path, lambda c: pytest.fail("must not run"), preflight=preflight, progress=False)


def test_a_second_sweep_into_the_same_folder_is_refused(small_config: RunConfig, tmp_path: Path) -> None:
    import fcntl

    tmp_path.mkdir(exist_ok=True)
    with (tmp_path / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep is running here
        with pytest.raises(ConfigError, match="another sweep is writing into"):
            run_sweep(spec_for(small_config), tmp_path, lambda cfg: {}, progress=False)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_a_point_recorded_before_an_option_existed_is_still_done(
    small_config: RunConfig, tmp_path: Path
) -> None:
    """A results file whose stored request predates an option (here ``cloud_cpuset``) matches a request
    that leaves the option at its default, so a resumed sweep does not measure it again; a different
    value does not match."""
    from harness.results import load_results, write_results
    from harness.sweep import is_done

    cfg = small_config
    path = tmp_path / "p.json"
    results = run_experiment(cfg, testbed_factory=FakeTestbed, commands=FakeCommands())
    del results["config"]["request"]["cloud_cpuset"]
    write_results(path, results)
    assert "cloud_cpuset" not in load_results(path)["config"]["request"]
    assert is_done(path, cfg)
    assert not is_done(path, cfg.replace(cloud_cpuset="0"))
    assert not is_done(path, cfg.replace(threshold=0.5))
