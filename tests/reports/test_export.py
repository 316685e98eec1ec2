"""Data out: the tidy CSV of every run and batch (``python -m reports export``), and tables as CSV."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from reports.cli import main
from tests.reports.conftest import Writer, results_doc, run, small_grid, summary

harness_results = pytest.importorskip("harness.results")

#: Per batch b, procedure p takes BASE[p] + b / 100 ms: a value names the batch it came from.
BASE = {"1": 1.0, "2": 2.0, "3-1": 3.0, "3-2": 4.0, "4": 5.0, "5": 6.0}
EDGE_PATH = ("1", "2", "3-1")
CLOUD_PATH = ("1", "2", "3-2", "4", "5")
BATCHES = 9
SIZE = 4


def _where(b: int) -> list[str]:
    """Batch b's samples: all local (b % 3 == 0), all to the cloud (1) or both (2)."""
    return [["edge"] * SIZE, ["cloud"] * SIZE, ["edge", "cloud"] * (SIZE // 2)][b % 3]


def _procs(b: int) -> dict[str, float]:
    exits = _where(b)
    names = (
        ("1", "2") + (("3-1",) if "edge" in exits else ()) + (("3-2", "4", "5") if "cloud" in exits else ())
    )
    return {p: BASE[p] + b / 100 for p in names}


def _records() -> dict[str, Any]:
    cols: dict[str, list[Any]] = {k: [] for k in ("id", "label", "pred", "exit", "entropy", "latency_ms")}
    batches = []
    for b in range(BATCHES):
        procs = _procs(b)
        exits = _where(b)
        for j, where in enumerate(exits):
            cols["id"].append(b * SIZE + j)
            cols["label"].append(j)
            cols["pred"].append(j if where == "edge" or b % 2 else j + 1)
            cols["exit"].append(where)
            cols["entropy"].append(0.1 if where == "edge" else 0.7)
            path = EDGE_PATH if where == "edge" else CLOUD_PATH
            cols["latency_ms"].append(sum(procs[p] for p in path))
        batches.append(
            {
                "index": b,
                "size": SIZE,
                "local": exits.count("edge"),
                "cloud": exits.count("cloud"),
                "procedures_ms": procs,
                "latency_ms": 10.0 + b,
            }
        )
    return {
        "schema": "localexit-records/1",
        "config": {},
        "samples": cols,
        "batches": batches,
        "overall": {"overall_latency_ms": 0.5},
        "warmup": {"batches": 1},
    }


def _harness_doc(kind: str, exit_: int, threshold: float, repeats: int = 2) -> dict[str, Any]:
    """A results file built by the harness's own code from the records above."""
    runs = [
        harness_results.build_run(
            i, _records(), cpu_percent=[40.0 + i], rss_mib=[100.0], duration_s=2.0, calibration_ms=1.5
        )
        for i in range(repeats)
    ]
    config = {
        "model": kind,
        "exit": exit_,
        "threshold": threshold,
        "batch_size": SIZE,
        "dataset": "synthetic",
        "samples": BATCHES * SIZE,
        "links": {
            "edge_cloud": {"rate": "10mbit", "delay": "20ms", "jitter": "0ms", "loss": "1%", "limit": None},
            "test_edge": None,
        },
        "link_backend": {"edge_cloud": {"rate": "tbf"}, "test_edge": {}},
        "isolation": "netns",
    }
    return harness_results.build_results(config, {"python": "3"}, runs).to_json()


def _export(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["export", *args])
    return rc, out.getvalue(), err.getvalue()


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture
def harness_csv(write: Writer, tmp_path: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    docs = {"sem2.json": _harness_doc("sem", 2, 0.3), "mem2.json": _harness_doc("mem", 2, 0.3)}
    for name, doc in docs.items():
        write(name, doc)
    out = tmp_path / "out" / "results.csv"
    rc, stdout, err = _export([str(tmp_path / "results"), "--out", str(out)])
    assert (rc, err) == (0, "")
    assert f"csv: {out}" in stdout and "aligned=false" not in stdout
    return out, docs


def test_one_row_per_run_and_figure(harness_csv: tuple[Path, dict[str, dict[str, Any]]]) -> None:
    out, docs = harness_csv
    rows = _read(out)
    run_rows = [r for r in rows if r["scope"] == "run"]
    # every run of both files, each with the same figures once
    per_run: dict[tuple[str, str], list[str]] = {}
    for r in run_rows:
        per_run.setdefault((Path(r["file"]).name, r["run"]), []).append(r["metric"])
    assert sorted(per_run) == [("mem2.json", "0"), ("mem2.json", "1"), ("sem2.json", "0"), ("sem2.json", "1")]
    metrics = per_run[("sem2.json", "0")]
    assert len(metrics) == len(set(metrics)) and all(m == metrics for m in per_run.values())
    for r in run_rows:
        doc = docs[Path(r["file"]).name]
        stored = doc["runs"][int(r["run"])]
        assert (r["point"], r["model"], r["exit"], r["threshold"]) == (
            "SEM-2" if doc["config"]["model"] == "sem" else "MEM@2",
            doc["config"]["model"],
            "2",
            "0.3",
        )
        assert (r["link_rate"], r["link_delay"], r["link_jitter"], r["link_loss"]) == (
            "10mbit",
            "20ms",
            "0ms",
            "1%",
        )
        assert (r["isolation"], r["block"], r["batch"], r["aligned"]) == ("netns", "", "", "")
        if r["metric"] in stored["summary"]:
            assert float(r["value"]) == stored["summary"][r["metric"]]
    sem0 = {r["metric"]: r for r in run_rows if r["file"].endswith("sem2.json") and r["run"] == "0"}
    # 6 of 9 batches reached the cloud; procedure (3-2) of each took 4 + b/100 ms
    cloud_batches = [b for b in range(BATCHES) if "cloud" in _where(b)]
    assert float(sem0["procedure_3-2_mean_ms"]["value"]) == pytest.approx(
        sum(BASE["3-2"] + b / 100 for b in cloud_batches) / len(cloud_batches)
    )
    assert sem0["procedure_3-2_batches"]["value"] == str(len(cloud_batches))
    assert (sem0["edge_cpu_percent_mean"]["value"], sem0["edge_cpu_percent_mean"]["unit"]) == ("40.0", "%")
    assert sem0["local_exits"]["value"] == str(sum(_where(b).count("edge") for b in range(BATCHES)))
    assert (sem0["overall_accuracy"]["unit"], sem0["overall_latency_ms"]["unit"]) == ("fraction", "ms")


def test_batch_rows_line_up_cloud_and_edge_procedures_by_batch(
    harness_csv: tuple[Path, dict[str, dict[str, Any]]],
) -> None:
    out, _ = harness_csv
    rows = [
        r for r in _read(out) if r["scope"] == "batch" and r["file"].endswith("mem2.json") and r["run"] == "1"
    ]
    assert rows and all(r["aligned"] == "true" and r["unit"] == "ms" for r in rows)
    by_batch: dict[int, dict[str, float]] = {}
    for r in rows:
        by_batch.setdefault(int(r["batch"]), {})[r["metric"]] = float(r["value"])
    assert sorted(by_batch) == list(range(BATCHES))
    for b, got in by_batch.items():
        procs = _procs(b)
        # the cloud procedures (batches 1, 2, 4, 5, 7, 8) and 3-1 (batches 0, 2, 3, 5, 6, 8) each land
        # on the batch they were measured in, beside that batch's (1) and (2)
        assert {m: v for m, v in got.items() if m.startswith("procedure_")} == {
            f"procedure_{p}_ms": v for p, v in procs.items()
        }, b
        assert got["latency_ms"] == 10.0 + b
        if "cloud" in _where(b):
            assert got["cloud_path_ms"] == pytest.approx(sum(procs[p] for p in CLOUD_PATH))
        else:
            assert "cloud_path_ms" not in got
        assert ("edge_path_ms" in got) == ("edge" in _where(b))


def test_older_files_export_unaligned_rows_where_lists_cannot_be_lined_up(
    write: Writer, tmp_path: Path
) -> None:
    """Files without per_batch_ids: a list with one value per batch is in batch order; a shorter one
    (a cloud procedure) cannot be placed, and says so."""
    old = run(
        0, summary(3, 5, 1.0, 0.6, 0.75, 2.0, 8.0, 1.0), batch_latency=[10.0, 11.0, 12.0, 13.0], block=4
    )
    old["per_batch_ms"]["3-2"] = [4.1, 4.3]
    write("old.json", results_doc("mem", 3, 0.5, [old]))
    out = tmp_path / "old.csv"
    rc, stdout, _ = _export([str(tmp_path / "results" / "old.json"), "--out", str(out)])
    assert rc == 0
    assert "note: 2 of 6 batch rows have no batch index (aligned=false)" in stdout
    batch = [(r["metric"], r["batch"], r["aligned"], r["value"]) for r in _read(out) if r["scope"] == "batch"]
    assert batch == [
        ("latency_ms", "0", "true", "10.0"),
        ("latency_ms", "1", "true", "11.0"),
        ("latency_ms", "2", "true", "12.0"),
        ("latency_ms", "3", "true", "13.0"),
        ("procedure_3-2_ms", "", "false", "4.1"),
        ("procedure_3-2_ms", "", "false", "4.3"),
    ]
    assert {r["block"] for r in _read(out)} == {"4"}
    # a figure the run does not hold is an empty cell, not a made-up number
    no_edge = results_doc("mem", 3, 0.3, [run(0, summary(0, 8, None, 0.5, 0.5, None, 8.0, 1.0))])
    write("no_edge.json", no_edge)
    rc, _, _ = _export([str(tmp_path / "results" / "no_edge.json"), "--out", str(out)])
    values = {r["metric"]: r["value"] for r in _read(out) if r["scope"] == "run"}
    assert rc == 0 and values["edge_accuracy"] == "" and values["edge_latency_ms"] == ""
    assert values["cloud_accuracy"] == "0.5"


def test_export_refuses_bad_input_in_one_line_and_keeps_the_old_csv(write: Writer, tmp_path: Path) -> None:
    out = tmp_path / "results.csv"
    out.write_text("previous export\n")
    rc, stdout, err = _export([str(tmp_path / "nowhere"), "--out", str(out)])
    assert (rc, stdout) == (2, "") and err == f"error: {tmp_path / 'nowhere'}: no such file or folder\n"
    doc = _harness_doc("sem", 1, 0.3, repeats=1)
    doc["runs"][0]["per_batch_ids"]["3-2"].pop()
    bad = write("bad.json", doc)
    rc, _, err = _export([str(bad), "--out", str(out)])
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {bad}: runs[0].per_batch_ids['3-2'] has 5 batch indices for 6 values")
    assert out.read_text() == "previous export\n"  # a failed export leaves no half-written file
    assert list(tmp_path.glob(".results.csv.*")) == []
    rc, _, err = _export([str(bad.parent), "--out", str(tmp_path)])
    assert rc == 2 and "is a directory" in err
    with pytest.raises(SystemExit) as exc:
        _export([str(bad)])  # no --out
    assert exc.value.code == 2


def _markdown_cells(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [line for line in md.splitlines() if line.startswith("|")]
    split = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    return split[0], split[2:]


def _as_rendered(cell: str, fmt: str) -> str:
    """A CSV cell as the table shows it, with its column's format."""
    if cell == "":
        return "–"
    for kind in (int, float):
        try:
            number = kind(cell)
        except ValueError:
            continue
        return format(number, fmt) if fmt else str(number)
    return cell


def test_report_writes_every_table_as_csv_matching_the_rendered_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")  # the report's extra (figures)
    from reports import report

    build_blocks = report.build_blocks
    built: list[report.Block] = []

    def keep_blocks(*args: Any, **kwargs: Any) -> list[report.Block]:
        blocks = build_blocks(*args, **kwargs)
        built.extend(blocks)
        return blocks

    monkeypatch.setattr(report, "build_blocks", keep_blocks)
    results = tmp_path / "results"
    results.mkdir()
    for name, doc in small_grid().items():
        (results / name).write_text(json.dumps(doc))
    out = tmp_path / "report"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([str(results), "--out", str(out), "-q", "--format", "github"]) == 0
    tables = {b.name: b.table for b in built if isinstance(b, report.TableBlock)}
    tables_dir = out / "tables"
    # one CSV per table, named as its other renderings (a script can rely on tables/<name>.csv)
    assert "threshold" in tables and sorted(p.stem for p in tables_dir.glob("*.csv")) == sorted(tables)
    assert sorted(p.stem for p in tables_dir.glob("*.md")) == sorted(tables)
    for name, table in tables.items():
        with (tables_dir / f"{name}.csv").open(newline="", encoding="utf-8") as fh:
            header, *rows = list(csv.reader(fh))
        md_header, md_rows = _markdown_cells((tables_dir / f"{name}.md").read_text())
        assert header == md_header == list(table.headers), name
        assert len(rows) == len(md_rows) == len(table.rows), name
        for row, md_row, cells in zip(rows, md_rows, table.rows, strict=True):
            # the rendered table shows the CSV's cells in its column formats...
            assert [_as_rendered(c, f) for c, f in zip(row, table.floatfmt, strict=True)] == md_row, name
            # ...and the CSV holds the table's numbers unrounded
            for c, cell in zip(row, cells, strict=True):
                assert c == ("" if cell is None else str(cell)), (name, c, cell)


def test_a_folder_exports_repeated_points_and_skips_the_project_s_other_files(
    write: Writer, tmp_path: Path
) -> None:
    """The main job run twice writes two files of one configuration, and a calibration file may sit
    beside them: the export takes every run of both and reads past the calibration file; the report,
    which shows one file per point, still refuses the pair, naming both."""
    write("first.json", _harness_doc("mem", 2, 0.3))
    write("again.json", _harness_doc("mem", 2, 0.3))
    write("mem.calibration.json", {"schema": "localexit-calibration/1", "exits": {}})
    out = tmp_path / "all.csv"
    rc, _stdout, err = _export([str(tmp_path / "results"), "--out", str(out)])
    assert (rc, err) == (0, "")
    assert {Path(r["file"]).name for r in _read(out)} == {"first.json", "again.json"}
    rc = main([str(tmp_path / "results"), "--out", str(tmp_path / "report")])
    assert rc == 2
    # a file named on its own is read whatever it is, and a wrong one is one clear error
    rc, _stdout, err = _export([str(tmp_path / "results" / "mem.calibration.json"), "--out", str(out)])
    assert rc == 2 and "localexit-calibration/1" in err
