from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from contract.names import PROCEDURES, RESULTS_SCHEMA
from contract.results import ScheduleRecord
from harness.errors import ResultsError
from harness.results import (
    build_results,
    build_run,
    load_results,
    summarize_records,
    validate_results,
    write_results,
)

from .helpers import make_config, make_records, make_results


def test_summary_follows_the_paper_definitions() -> None:
    rec = make_records(batches=10, batch_size=8)
    out = summarize_records(rec)
    s = out.summary
    exits = rec["samples"]["exit"]
    assert s.samples == 80
    assert s.local_exits == exits.count("edge")
    assert s.local_exits + s.cloud_exits == 80
    edge = [i for i, e in enumerate(exits) if e == "edge"]
    correct_edge = sum(rec["samples"]["pred"][i] == rec["samples"]["label"][i] for i in edge)
    assert s.edge_accuracy == pytest.approx(correct_edge / len(edge))
    assert s.edge_latency_ms == pytest.approx(sum(rec["samples"]["latency_ms"][i] for i in edge) / len(edge))
    assert s.overall_latency_ms == rec["overall"]["overall_latency_ms"]
    assert set(out.procedures_ms) == set(PROCEDURES)
    first = out.procedures_ms["1"]
    assert first is not None and first.n == 10
    assert len(out.per_batch_ms["latency"]) == 10


def test_no_local_exit_gives_null_edge_figures() -> None:
    rec = make_records(batches=4, edge_share=0.0)
    s = summarize_records(rec).summary
    assert s.local_exits == 0
    assert s.edge_accuracy is None and s.edge_latency_ms is None
    assert summarize_records(rec).procedures_ms["3-1"] is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(schema="other/1"), "schema 'other/1' is not supported"),
        (lambda r: r["samples"]["label"].pop(), "different lengths"),
        (lambda r: r.update(batches=[]), "no measured batch"),
        (lambda r: r["samples"]["exit"].__setitem__(0, "fog"), "'edge' or 'cloud'"),
        (lambda r: r["batches"][0].update(size=99), r"batches\[0\]\.size 99 is not local"),
        (
            lambda r: r["overall"].update(overall_latency_ms=-1.0),
            r"overall\.overall_latency_ms must be a number ≥ 0",
        ),
    ],
)
def test_bad_records_are_reported(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    rec = make_records(batches=3)
    mutate(rec)
    with pytest.raises(ResultsError, match=message):
        summarize_records(rec)


def test_results_round_trip_and_aggregate(tmp_path: Path) -> None:
    res = make_results(runs=3)
    path = tmp_path / "r.json"
    write_results(path, res)
    assert json.loads(path.read_text())["schema"] == RESULTS_SCHEMA
    loaded = load_results(path)
    assert loaded.samples_file is not None and loaded.samples_file.rows == 3 * 20 * 8
    assert dataclasses.replace(loaded, samples_file=None) == res
    agg = loaded.aggregate["overall_latency_ms"]
    values = sorted(r.summary.overall_latency_ms for r in loaded.runs)
    assert agg is not None and agg.median == pytest.approx(values[1])
    assert agg.n == 3 and agg.min == pytest.approx(values[0])


def test_unstable_figures_are_flagged() -> None:
    from harness.results import aggregate_runs, build_run

    runs = [
        build_run(
            i,
            make_records(batch_ms=ms, seed=i),
            cpu_percent=[1.0],
            rss_mib=[1.0],
            duration_s=1,
            calibration_ms=1.0,
        )
        for i, ms in enumerate([2.0, 2.0, 6.0])
    ]
    agg = aggregate_runs(runs)
    latency, accuracy = agg["overall_latency_ms"], agg["overall_accuracy"]
    assert latency is not None and latency.unstable
    assert accuracy is not None and accuracy.n == 3


def test_validation_names_the_problem(tmp_path: Path) -> None:
    res = make_results().to_json()
    res["runs"][0]["per_batch_ms"]["latency"][3] = "slow"
    with pytest.raises(
        ResultsError, match=r"runs\[0\]\.per_batch_ms\['latency'\] must be a list of finite numbers"
    ):
        validate_results(res)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match=r"bad\.json: not valid JSON \(line 1"):
        load_results(bad)
    with pytest.raises(ResultsError, match=r"missing\.json: no such file"):
        load_results(tmp_path / "missing.json")


def test_a_file_of_the_first_version_loads_upgraded(tmp_path: Path) -> None:
    """A ``localexit/1`` file (no block, position, per_batch_ids, cloud CPU set or congestion control)
    loads as a document of the current version, those fields null, and its figures unchanged."""
    current = make_results(runs=2)
    old = current.to_json()
    old["schema"] = "localexit/1"
    for key in ("cloud_cpuset", "tcp_congestion_control", "max_other_cpu_percent", "link_schedule"):
        del old["config"][key]
    for key in ("discarded_runs", "samples_file"):
        del old[key]
    for run in old["runs"]:
        for key in ("block", "position", "per_batch_ids", "attempt", "busy", "discarded", "clock_check"):
            del run[key]
        del run["link_schedule"]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    loaded = load_results(path)
    assert loaded.config.cloud_cpuset is None and loaded.config.tcp_congestion_control is None
    assert [(r.block, r.position, r.per_batch_ids, r.attempt, r.busy) for r in loaded.runs] == [
        (None, None, None, 0, False)
    ] * 2
    assert [r.summary for r in loaded.runs] == [r.summary for r in current.runs]
    # the same file claiming the current version lacks fields that version always has
    old["schema"] = RESULTS_SCHEMA
    path.write_text(json.dumps(old))
    with pytest.raises(ResultsError, match=r"missing field discarded_runs"):
        load_results(path)


def test_a_study_run_carries_its_block_and_position() -> None:
    from harness.results import build_results, build_run

    runs = [
        build_run(
            i,
            make_records(seed=i),
            cpu_percent=[],
            rss_mib=[],
            duration_s=1.0,
            calibration_ms=None,
            block=b,
            position=p,
        )
        for i, (b, p) in enumerate([(0, 3), (1, 0)])
    ]
    assert [(r.block, r.position) for r in runs] == [(0, 3), (1, 0)]
    results = build_results(make_config(), {}, runs)
    assert [(r.block, r.position) for r in results.runs] == [(0, 3), (1, 0)]
    runs[1] = dataclasses.replace(runs[1], block=0)  # a point runs once per block
    with pytest.raises(ResultsError, match=r"runs\[0\] and runs\[1\] both ran in block 0"):
        build_results(make_config(), {}, runs)


def test_what_the_harness_records_of_a_run_is_typed_in_the_file(tmp_path: Path) -> None:
    """A busy-host re-run, its verdicts, its clock check and a link schedule's changes are written as
    the contract's typed fields and read back as the same objects; the per-sample records leave the
    runs for the archive."""
    records = make_records(seed=1)
    records["clock_check"] = {"trusted": False, "warnings": ["procedure 4: drift 90 µs/s"]}
    run = build_run(
        0, records, cpu_percent=[1.0], rss_mib=[1.0], duration_s=1.0, calibration_ms=None,
        host_other_percent=[80.0, 90.0], in_window=True,
    )  # fmt: skip
    assert run.samples is not None and run.host_other_cpu_percent is not None
    assert run.edge_resources_window == "measured-phase" and run.host_other_cpu_percent.mean == 85.0
    assert run.clock_warnings == ["procedure 4: drift 90 µs/s"]
    schedule = ScheduleRecord(
        changes=({"step": 1, "late_s": 0.002},), not_reached=1, t0_ns=5, measured_from_s=0.5
    )
    kept = dataclasses.replace(run, attempt=1, busy=True, link_schedule=schedule)
    thrown = dataclasses.replace(run, discarded="busy host")
    path = tmp_path / "r.json"
    write_results(path, build_results(make_config(max_other_cpu_percent=50.0), {}, [kept], [thrown]))
    on_disk = json.loads(path.read_text())
    assert "samples" not in on_disk["runs"][0] and on_disk["runs"][0]["link_schedule"]["not_reached"] == 1
    loaded = load_results(path)
    (again,) = loaded.runs
    assert (again.attempt, again.busy, again.discarded, again.link_schedule) == (1, True, None, schedule)
    assert again.clock_warnings == run.clock_warnings and again.samples is None
    assert [(r.attempt, r.discarded) for r in loaded.discarded_runs] == [(0, "busy host")]
    assert loaded.config.max_other_cpu_percent == 50.0
    assert loaded.samples_file is not None and loaded.samples_file.rows == 2 * len(run.samples)
