from __future__ import annotations

import json
from pathlib import Path

import pytest

from contract.names import PROCEDURES, RESULTS_SCHEMA
from harness.errors import ResultsError
from harness.results import load_results, summarize_records, validate_results, write_results

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
    loaded = load_results(path)
    assert loaded["schema"] == RESULTS_SCHEMA
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
    with pytest.raises(ResultsError, match="per_batch_ms"):
        write_results(tmp_path / "refused.json", res)  # (nothing is written)
    assert not (tmp_path / "refused.json").exists()


def test_a_file_of_the_first_version_loads_upgraded(tmp_path: Path) -> None:
    """A ``localexit/1`` file (no block, position, per_batch_ids, cloud CPU set or congestion control)
    loads as a document of the current version, those fields null, and its figures unchanged."""
    current = make_results(runs=2)
    old = json.loads(json.dumps(current))
    old["schema"] = "localexit/1"
    for key in ("cloud_cpuset", "tcp_congestion_control"):
        del old["config"][key]
    for run in old["runs"]:
        for key in ("block", "position", "per_batch_ids"):
            del run[key]
    path = tmp_path / "v1.json"
    path.write_text(json.dumps(old))
    loaded = load_results(path)
    assert loaded["schema"] == RESULTS_SCHEMA
    assert loaded["config"]["cloud_cpuset"] is None and loaded["config"]["tcp_congestion_control"] is None
    assert [(r["block"], r["position"], r["per_batch_ids"]) for r in loaded["runs"]] == [
        (None, None, None)
    ] * 2
    assert [r["summary"] for r in loaded["runs"]] == [r["summary"] for r in current["runs"]]
    # the same file claiming the current version lacks fields that version always has
    old["schema"] = RESULTS_SCHEMA
    path.write_text(json.dumps(old))
    with pytest.raises(ResultsError, match=r"missing field config\.cloud_cpuset"):
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
    assert [(r["block"], r["position"]) for r in runs] == [(0, 3), (1, 0)]
    results = build_results(make_config(), {}, runs)
    assert [(r["block"], r["position"]) for r in results["runs"]] == [(0, 3), (1, 0)]
    runs[1]["block"] = 0  # a point runs once per block
    with pytest.raises(ResultsError, match=r"runs\[0\] and runs\[1\] both ran in block 0"):
        build_results(make_config(), {}, runs)
