from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import ResultsError
from harness.results import (
    PROCEDURES,
    load_results,
    summarize_records,
    validate_results,
    write_json_atomic,
    write_results,
)

from .helpers import make_records, make_results


def test_summary_follows_the_paper_definitions() -> None:
    rec = make_records(batches=10, batch_size=8)
    out = summarize_records(rec)
    s = out["summary"]
    exits = rec["samples"]["exit"]
    assert s["samples"] == 80
    assert s["local_exits"] == exits.count("edge")
    assert s["local_exits"] + s["cloud_exits"] == 80
    edge = [i for i, e in enumerate(exits) if e == "edge"]
    correct_edge = sum(rec["samples"]["pred"][i] == rec["samples"]["label"][i] for i in edge)
    assert s["edge_accuracy"] == pytest.approx(correct_edge / len(edge))
    assert s["edge_latency_ms"] == pytest.approx(
        sum(rec["samples"]["latency_ms"][i] for i in edge) / len(edge)
    )
    assert s["overall_latency_ms"] == rec["overall"]["overall_latency_ms"]
    assert set(out["procedures_ms"]) == set(PROCEDURES)
    assert out["procedures_ms"]["1"]["n"] == 10
    assert len(out["per_batch_ms"]["latency"]) == 10


def test_no_local_exit_gives_null_edge_figures() -> None:
    rec = make_records(batches=4, edge_share=0.0)
    s = summarize_records(rec)["summary"]
    assert s["local_exits"] == 0
    assert s["edge_accuracy"] is None and s["edge_latency_ms"] is None
    assert summarize_records(rec)["procedures_ms"]["3-1"] is None


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r.update(schema="other/1"), "schema"),
        (lambda r: r["samples"]["label"].pop(), "different lengths"),
        (lambda r: r.update(batches=[]), "no measured batch"),
        (lambda r: r["samples"]["exit"].__setitem__(0, "fog"), "'edge' or 'cloud'"),
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
    loaded = load_results(path)
    assert loaded["schema"] == "localexit/1"
    agg = loaded["aggregate"]["overall_latency_ms"]
    values = sorted(r["summary"]["overall_latency_ms"] for r in loaded["runs"])
    assert agg["median"] == pytest.approx(values[1])
    assert agg["n"] == 3 and agg["min"] == pytest.approx(values[0])


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
    assert agg["overall_latency_ms"]["unstable"]
    assert agg["overall_accuracy"]["n"] == 3


def test_validation_names_the_problem(tmp_path: Path) -> None:
    res = make_results()
    del res["runs"][0]["per_batch_ms"]
    with pytest.raises(ResultsError, match="per_batch_ms"):
        validate_results(res)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ResultsError, match="not JSON"):
        load_results(bad)
    with pytest.raises(ResultsError, match="does not exist"):
        load_results(tmp_path / "missing.json")


def test_atomic_write_keeps_old_file_on_failure(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    write_json_atomic(path, {"a": 1})
    with pytest.raises(ValueError):
        write_json_atomic(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
