"""Sweeps: the grid, what a study finds already done in its folder, and the checks before it starts.

(Running the grid -- failed runs recorded and gone past, interrupted studies resumed -- is tested
through ``run_study`` in test_study.py.)"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from contract.errors import LocalExitError
from harness.config import LinkOptions, RunConfig
from harness.errors import ConfigError
from harness.runner import run_experiment
from harness.study import recorded_runs, run_study
from harness.sweep import MANIFEST_NAME, SweepSpec, point_path

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


def test_a_point_that_cannot_run_stops_the_study_before_anything_runs(
    small_config: RunConfig, tmp_path: Path
) -> None:
    # (the sem point cannot run: the checkpoint holds a MEM model)
    spec = SweepSpec(small_config, ("mem", "sem"), (1,), (0.3,), (LinkOptions(),))
    with pytest.raises(LocalExitError, match=r"holds a .* model, but --model sem"):
        run_study(spec, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_second_sweep_into_the_same_folder_is_refused(small_config: RunConfig, tmp_path: Path) -> None:
    import fcntl

    spec = SweepSpec(small_config, ("mem",), (1,), (0.3,), (LinkOptions(),))
    with (tmp_path / ".lock").open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another sweep is running here
        with pytest.raises(ConfigError, match="another sweep is writing into"):
            run_study(spec, tmp_path, progress=False)
    assert not (tmp_path / MANIFEST_NAME).exists()


def test_what_a_points_file_counts_for(small_config: RunConfig, tmp_path: Path) -> None:
    """A file a sweep wrote before studies existed, with this very request, is complete -- also when
    its stored request predates an option (here ``cloud_cpuset``), which then takes its default; a
    different request, or a damaged file, counts for nothing."""
    from harness.results import load_results, write_results

    spec = spec_for(small_config.replace(repeat=2))
    cfg = spec.points()[0]
    path = point_path(tmp_path, cfg)
    results = run_experiment(cfg.replace(repeat=1), testbed_factory=FakeTestbed, commands=FakeCommands())
    request = {**(results.config.request or {}), "repeat": 2}
    del request["cloud_cpuset"]
    write_results(
        path, dataclasses.replace(results, config=dataclasses.replace(results.config, request=request))
    )
    assert "cloud_cpuset" not in (load_results(path).config.request or {})
    recorded = recorded_runs(path, cfg, spec)
    assert recorded.blocks == {0, 1} and len(recorded.runs) == 1
    assert recorded_runs(path, cfg.replace(cloud_cpuset="0"), spec).blocks == set()
    assert recorded_runs(path, cfg.replace(threshold=0.4), spec).blocks == set()
    path.write_text(path.read_text()[:100])
    assert recorded_runs(path, cfg, spec).blocks == set()
