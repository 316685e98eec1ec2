"""Per-sample records kept beside the results file: written with it, named by it with their SHA-256, read
back, and enough to recompute the run's summary figures."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from contract import SUMMARY_FIELDS
from contract.results import Results
from harness import runner
from harness.config import RunConfig
from harness.errors import ResultsError
from harness.results import load_results, write_results, write_results_fallback
from harness.runner import run_experiment
from harness.samples import SampleTable, load_samples, samples_path

from .conftest import FakeCommands, FakeTestbed

#: The summary figures computed from the samples: all but the overall latency, which is the run's wall time
#: per sample.
PER_SAMPLE = tuple(k for k in SUMMARY_FIELDS if k != "overall_latency_ms")


@pytest.fixture
def results(small_config: RunConfig, fake_testbed: type[FakeTestbed]) -> Results:
    cfg = small_config.replace(repeat=2, seed=3)
    return run_experiment(cfg, testbed_factory=fake_testbed, commands=FakeCommands())


def test_the_samples_file_recomputes_every_runs_summary(results: Results, tmp_path: Path) -> None:
    path = tmp_path / "point.json"
    write_results(path, results)
    archive = tmp_path / "point.samples.npz"
    assert samples_path(path) == archive and archive.is_file()
    on_disk = json.loads(path.read_text())
    ref = on_disk["samples_file"]
    assert ref["path"] == "point.samples.npz" and ref["schema"] == "localexit-samples/1"
    assert len(ref["sha256"]) == 64 and ref["rows"] == 2 * 48
    assert all(set(run) == set(on_disk["runs"][0]) for run in on_disk["runs"])
    assert all("samples" not in run and "id" not in run for run in on_disk["runs"])  # (the file stays small)

    table = load_samples(path)
    assert len(table) == 96 and set(table.run.tolist()) == {0, 1}
    for run in load_results(path).runs:
        rows = table.select(run.index)
        recomputed = rows.summary()
        assert {k: recomputed[k] for k in PER_SAMPLE} == {k: run.summary.get(k) for k in PER_SAMPLE}
        assert len(np.unique(rows.id)) == len(rows)
        assert set(rows.exit.tolist()) <= {"edge", "cloud"}
        assert np.isfinite(rows.entropy).all() and (rows.latency_ms > 0).all()


def test_a_samples_file_that_is_not_the_one_named_is_refused(results: Results, tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    write_results(path, results)
    records = results.runs[0].samples
    assert records is not None
    changed = dataclasses.replace(records, pred=tuple(p + 1 for p in records.pred))
    other = dataclasses.replace(results, runs=(dataclasses.replace(results.runs[0], samples=changed),))
    write_results(tmp_path / "b.json", other)
    (tmp_path / "a.samples.npz").write_bytes((tmp_path / "b.samples.npz").read_bytes())
    with pytest.raises(ResultsError, match="is not the per-sample file"):
        load_samples(path)
    (tmp_path / "a.samples.npz").unlink()
    with pytest.raises(ResultsError, match="cannot be read"):
        load_samples(path)


def test_results_read_back_and_written_again_name_no_new_file(results: Results, tmp_path: Path) -> None:
    first = tmp_path / "first.json"
    write_results(first, results)
    copy = tmp_path / "copy.json"
    write_results(copy, load_results(first))
    assert not samples_path(copy).exists()
    with pytest.raises(ResultsError, match="names no per-sample file"):
        load_samples(tmp_path / "old.json", dataclasses.replace(results, samples_file=None))


def test_results_saved_elsewhere_keep_their_samples(
    results: Results, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    saved = write_results_fallback(Path("/nonexistent/dir/r.json"), results)
    assert saved is not None
    assert len(load_samples(saved)) == 96


def test_discarded_attempts_are_in_the_file_apart_from_the_kept_run(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from .test_busy import _Sampler

    monkeypatch.setattr(runner, "ResourceSampler", _Sampler)
    _Sampler.loads = [400.0, 0.0]
    cfg = small_config.replace(busy_retries=1)
    results = run_experiment(cfg, testbed_factory=fake_testbed, commands=FakeCommands())
    path = tmp_path / "r.json"
    write_results(path, results)
    table = load_samples(path)
    assert len(table) == 2 * 48
    pairs = sorted(zip(table.attempt.tolist(), table.kept.tolist(), strict=True))
    assert pairs == [(0, False)] * 48 + [(1, True)] * 48
    kept = table.select(0)
    assert (kept.attempt == 1).all()
    summary = load_results(path).runs[0].summary
    assert {k: kept.summary()[k] for k in PER_SAMPLE} == {k: summary.get(k) for k in PER_SAMPLE}
    discarded = load_results(path).discarded_runs[0].summary
    assert table.select(0, attempt=0).summary()["local_exits"] == discarded.local_exits


def test_a_table_round_trips_through_its_bytes() -> None:
    columns: dict[str, list[Any]] = {
        "id": [4, 5, 6],
        "label": [1, 2, 3],
        "pred": [1, 0, 3],
        "exit": ["edge", "cloud", "edge"],
        "entropy": [0.1, None, 0.2],
        "latency_ms": [1.5, 3.25, 1.5],
    }
    table = SampleTable.from_columns(columns, run=2)
    back = SampleTable.from_bytes(table.to_bytes())
    assert back.id.tolist() == [4, 5, 6] and back.exit.tolist() == ["edge", "cloud", "edge"]
    assert np.isnan(back.entropy[1]) and np.isnan(back.cloud_entropy).all()
    assert back.summary() == {
        "samples": 3,
        "local_exits": 2,
        "cloud_exits": 1,
        "edge_accuracy": 1.0,
        "cloud_accuracy": 0.0,
        "overall_accuracy": 2 / 3,
        "edge_latency_ms": 1.5,
        "cloud_latency_ms": 3.25,
    }
    with pytest.raises(ValueError, match="'edge' or 'cloud'"):
        SampleTable.from_columns({**columns, "exit": ["edge", "sky", "edge"]}, run=0)
