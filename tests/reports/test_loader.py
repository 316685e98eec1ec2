"""Results files and training logs: what is accepted, and that bad ones are refused naming the file."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from contract.names import RESULTS_VERSION
from reports import ReportError, load_results, load_train_logs
from tests.reports.conftest import Writer, small_grid, train_log


def _one() -> dict:
    return copy.deepcopy(small_grid()["sem1_T0.3.json"])


def test_loads_files_and_folders(small_results: Path) -> None:
    res = load_results([small_results])
    assert len(res) == 8
    sem1 = next(r for r in res if r.label == "SEM-1" and r.threshold == 0.3)
    assert sem1.metric("overall_latency_ms") == pytest.approx(0.6)  # median of 0.5, 0.7
    assert sem1.metric("local_exits") == 40
    assert [len(b) for b in sem1.batch_latencies_by_run()] == [8, 8]  # kept per run, never pooled
    assert not sem1.blocked and sem1.series("overall_latency_ms").blocks is None


def test_a_study_folder_reads_as_its_points(small_results: Path) -> None:
    # (a study writes its manifest beside the points; the folder must still load as the points)
    (small_results / "sweep.json").write_text(json.dumps({"schema": "localexit-sweep/2", "points": []}))
    assert len(load_results([small_results])) == 8


def test_not_json(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ReportError, match=r"bad\.json: not valid JSON \(line 1"):
        load_results([bad])


def test_binary_file(tmp_path: Path) -> None:
    bad = tmp_path / "bin.json"
    bad.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ReportError, match=r"bin\.json: not a text"):
        load_results([bad])


def test_other_schema(write: Writer) -> None:
    doc = _one()
    newer = f"localexit/{RESULTS_VERSION + 1}"
    doc["schema"] = newer
    path = write("newer.json", doc)
    with pytest.raises(ReportError, match=rf"newer\.json: schema '{newer}' is newer .*: upgrade localexit"):
        load_results([path])
    doc["schema"] = "localexit-trainlog/1"
    path = write("log.json", doc)
    with pytest.raises(ReportError, match=r"log\.json: schema 'localexit-trainlog/1' is not supported"):
        load_results([path])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("schema"), "missing field schema"),
        (lambda d: d.pop("runs"), "missing field runs"),
        (lambda d: d["config"].pop("threshold"), r"missing field config\.threshold"),
        (
            lambda d: d["runs"][1]["summary"].pop("overall_accuracy"),
            r"missing field runs\[1\]\.summary\.overall_accuracy",
        ),
        (
            lambda d: d["runs"][0]["summary"].update(local_exits=None),
            r"runs\[0\]\.summary\.local_exits must be an integer ≥ 0, got None",
        ),
        (lambda d: d["runs"][0].pop("edge_rss_mib"), r"missing field runs\[0\]\.edge_rss_mib"),
        (
            lambda d: d["config"].update(exit=9),
            "config.exit: exit 9 is out of range: sem models have local exits 1..8",
        ),
        (lambda d: d["config"].update(model="big"), "config.model: the model must be one of"),
        (lambda d: d["config"].update(threshold=1.5), r"config\.threshold: .* in \[0, 1\], got 1\.5"),
        (lambda d: d.update(runs=[]), "runs must be a non-empty list"),
    ],
)
def test_missing_or_bad_fields(write: Writer, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    doc = _one()
    mutate(doc)
    path = write("broken.json", doc)
    with pytest.raises(ReportError, match=r"broken\.json: " + message):
        load_results([path])


def test_nullable_fields_accepted(write: Writer) -> None:
    doc = _one()
    doc["runs"][0]["summary"].update(edge_accuracy=None, edge_latency_ms=None)
    res = load_results([write("nulls.json", doc)])[0]
    assert res.metric("edge_accuracy") == 0.90  # only the run that has it


def test_top_level_not_object(write: Writer, tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ReportError, match=r"list\.json: the top level must be a JSON object"):
        load_results([path])


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=r"nope\.json: no such file"):
        load_results([tmp_path / "nope.json"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty: folder holds no results files"):
        load_results([tmp_path / "empty"])


def test_duplicate_configuration_refused(write: Writer) -> None:
    a = write("a.json", _one())
    b = write("b.json", _one())
    with pytest.raises(ReportError, match=r"b\.json and .*a\.json both hold SEM-1 at T=0.3"):
        load_results([a, b])


def test_train_logs(tmp_path: Path) -> None:
    p = tmp_path / "sem3.json"
    p.write_text(json.dumps(train_log("sem", 3)))
    (log,) = load_train_logs([p])
    assert log.label == "SEM-3"
    assert log.curve("3") == ([1, 2, 3], [0.71, 0.76, 0.81])
    bad = train_log("sem", 3)
    bad["final"]["train_accuracy"]["12"] = 0.5
    p.write_text(json.dumps(bad))
    with pytest.raises(ReportError, match=r"sem3\.json: final.train_accuracy has unknown exit '12'"):
        load_train_logs([p])
    bad = train_log("mem", None)
    bad["schema"] = "localexit/1"
    p.write_text(json.dumps(bad))
    with pytest.raises(ReportError, match="schema 'localexit/1' is not supported"):
        load_train_logs([p])


def test_harness_nulls_for_unsampled_resources_and_unused_procedures(write: Writer) -> None:
    """The harness writes null for a procedure no batch used and for resources it could not sample."""
    doc = _one()
    for r in doc["runs"]:
        r["procedures_ms"]["3-2"] = None
        r["edge_cpu_percent"] = {"mean": None, "max": None, "n": 0}
    doc["runs"][1]["edge_rss_mib"] = {"mean": None, "max": None, "n": 0}
    res = load_results([write("nulls.json", doc)])[0]
    assert res.procedure_mean("3-2") is None
    assert res.procedure_mean("1") == 1.0
    assert res.resource("edge_cpu_percent", "mean") is None
    assert res.resource("edge_rss_mib", "max") == 310.0
    doc["runs"][0]["edge_cpu_percent"]["mean"] = "high"
    with pytest.raises(ReportError, match=r"edge_cpu_percent.mean must be a number or null, got 'high'"):
        load_results([write("nulls.json", doc)])


def test_blocks_of_a_blocked_study(write: Writer) -> None:
    doc = _one()
    doc["runs"] += [copy.deepcopy(doc["runs"][0]), copy.deepcopy(doc["runs"][1])]
    for run, block in zip(doc["runs"], (3, 0, 2, 1), strict=True):
        run["block"] = block
    doc["runs"][2]["summary"]["edge_accuracy"] = None  # no local exit in that run
    doc["runs"][1]["procedures_ms"]["2"]["mean"] = 7.0
    res = load_results([write("blocked.json", doc)])[0]
    assert res.blocked
    assert res.series("overall_latency_ms").by_block() == {3: 0.5, 0: 0.7, 2: 0.5, 1: 0.7}
    edge = res.series("edge_accuracy")
    assert edge.blocks == (3, 0, 1) and edge.values == (0.9, 0.9, 0.9)  # the null run and its block left out
    assert res.procedure_series("2").by_block() == {3: 1.0, 0: 7.0, 2: 1.0, 1: 1.0}
    assert res.procedures_total_series().values[1] == 12.0  # 7 + five procedures of 1 ms


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ((0, 0), r"runs\[0\] and runs\[1\] both ran in block 0; a study runs each point once per block"),
        ((0, None), r"runs\[1\] has no block while other runs have one"),
        ((0, -1), r"runs\[1\]\.block must be an integer ≥ 0, got -1"),
        ((True, 1), r"runs\[0\]\.block must be an integer ≥ 0, got True"),
        (("1", 2), r"runs\[0\]\.block must be an integer ≥ 0, got '1'"),
    ],
)
def test_bad_blocks_refused(write: Writer, blocks: tuple[object, object], message: str) -> None:
    doc = _one()
    for run, block in zip(doc["runs"], blocks, strict=True):
        if block is not None:
            run["block"] = block
    with pytest.raises(ReportError, match=r"broken\.json: " + message):
        load_results([write("broken.json", doc)])
