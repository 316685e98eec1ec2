"""The results file's contract: one reader for every version, a written history, nothing lost on rewrite."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

import contract.results as results_module
from contract.errors import SchemaError
from contract.names import RESULTS_SCHEMA, RESULTS_VERSION
from contract.results import VERSION_HISTORY, Results, Summary, read_results, write_results

ROOT = Path(__file__).resolve().parents[2]


def _run(index: int, **fields: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "index": index,
        "summary": {
            "samples": 10,
            "local_exits": 6,
            "cloud_exits": 4,
            "edge_accuracy": 1.0,
            "cloud_accuracy": 0.5,
            "overall_accuracy": 0.8,
            "edge_latency_ms": 2.0,
            "cloud_latency_ms": None,
            "overall_latency_ms": 0.4,
        },
        "procedures_ms": {"1": {"mean": 0.5, "p50": 0.5, "p95": 0.6, "p99": 0.6, "n": 2}, "3-2": None},
        "per_batch_ms": {"latency": [3.0, 4.0], "1": [0.4, 0.6]},
        "edge_cpu_percent": {"mean": 50.0, "max": 80.0, "n": 3},
        "edge_rss_mib": {"mean": None, "max": None, "n": 0},
    }
    run.update(fields)
    return run


def version_1() -> dict[str, Any]:
    """A results file as ``localexit/1`` files were written before the fields of version 2 existed."""
    return {
        "schema": "localexit/1",
        "config": {
            "model": "sem",
            "exit": 3,
            "threshold": 0.3,
            "batch_size": 5,
            "dataset": "synthetic",
            "samples": 10,
            "links": {"edge_cloud": {"rate": "10mbit"}, "test_edge": None},
            "link_backend": {"edge_cloud": {"rate": "tbf"}, "test_edge": {}},
            "seed": 7,
        },
        "environment": {"python": "3.11"},
        "runs": [_run(0), _run(1)],
        "aggregate": {"samples": {"median": 10, "mad": 0, "min": 10, "max": 10, "n": 2, "unstable": False}},
    }


def version_2() -> dict[str, Any]:
    doc = version_1()
    doc["schema"] = "localexit/2"
    doc["config"].update(cloud_cpuset=None, tcp_congestion_control={"name": "bbr"})
    for i, run in enumerate(doc["runs"]):
        run.update(block=i, position=0, per_batch_ids={"latency": [0, 1], "1": [0, 1]})
    return doc


def _schedule_v2(measured_from_s: float) -> dict[str, Any]:
    """A run's link-schedule fields as versions 1 and 2 wrote them: flat in the run."""
    return {
        "link_changes": [{"step": 0, "at_s": 0.004, "rate": "10mbit"}],
        "link_changes_not_reached": 1,
        "link_schedule_t0_ns": 123,
        "link_schedule_measured_from_s": measured_from_s,
    }


def version_2_as_recorded() -> dict[str, Any]:
    """A version-2 file as the harness wrote it with busy-host re-runs, a link schedule, a clock check
    and a per-sample archive: fields that version had no type for."""
    doc = version_2()
    doc["config"].update(max_other_cpu_percent=50.0, link_schedule={"steps": [{"at": "0s"}]})
    doc["runs"][0].update(
        attempt=1, busy=False, clock_check={"warnings": ["4: drifted"]}, **_schedule_v2(1.5)
    )
    doc["runs"][1].update(attempt=0, busy=True, **_schedule_v2(1.7))
    thrown = _run(0, block=0, position=0, per_batch_ids={"latency": [0, 1], "1": [0, 1]})
    thrown.update(attempt=0, busy=True, discarded="busy host", **_schedule_v2(1.6))
    doc["discarded_runs"] = [thrown]
    doc["samples_file"] = {
        "path": "r.samples.npz",
        "sha256": "ab" * 32,
        "schema": "localexit-samples/1",
        "rows": 30,
    }
    return doc


def version_3() -> dict[str, Any]:
    return Results.from_json(version_2_as_recorded()).to_json()


def test_version_1_is_read_by_its_number_and_upgraded() -> None:
    res = Results.from_json(version_1())
    assert res.config.cloud_cpuset is None and res.config.tcp_congestion_control is None
    assert [(r.block, r.position, r.per_batch_ids) for r in res.runs] == [(None, None, None)] * 2
    assert not res.blocked
    written = res.to_json()
    assert written["schema"] == RESULTS_SCHEMA
    assert written["config"]["cloud_cpuset"] is None and written["config"]["seed"] == 7
    assert [r["summary"] for r in written["runs"]] == [r["summary"] for r in version_1()["runs"]]
    assert Results.from_json(written) == res  # and what it writes reads back as the current version


@pytest.mark.parametrize(
    ("make", "path", "message"),
    [
        (version_2, ("config", "tcp_congestion_control"), "missing field config.tcp_congestion_control"),
        (version_2, ("runs", 1, "position"), r"missing field runs\[1\]\.position"),
        (version_2, ("runs", 0, "per_batch_ids"), r"missing field runs\[0\]\.per_batch_ids"),
        (version_3, ("discarded_runs",), "missing field discarded_runs"),
        (version_3, ("samples_file",), "missing field samples_file"),
        (version_3, ("config", "max_other_cpu_percent"), "missing field config.max_other_cpu_percent"),
        (version_3, ("config", "link_schedule"), "missing field config.link_schedule"),
        (version_3, ("runs", 1, "busy"), r"missing field runs\[1\]\.busy"),
        (version_3, ("runs", 0, "attempt"), r"missing field runs\[0\]\.attempt"),
        (version_3, ("runs", 0, "link_schedule", "t0_ns"), r"missing field runs\[0\]\.link_schedule\.t0_ns"),
        (version_3, ("discarded_runs", 0, "discarded"), r"missing field discarded_runs\[0\]\.discarded"),
    ],
)
def test_each_version_needs_the_fields_it_added(make: Any, path: tuple[Any, ...], message: str) -> None:
    doc = make()
    Results.from_json(doc)  # (complete, it reads)
    parent: Any = doc
    for key in path[:-1]:
        parent = parent[key]
    del parent[path[-1]]
    with pytest.raises(SchemaError, match=message):
        Results.from_json(doc)


def test_version_2_is_upgraded_to_the_typed_fields_of_version_3() -> None:
    res = Results.from_json(version_2_as_recorded())
    first, second = res.runs
    assert (first.attempt, first.busy, first.discarded) == (1, False, None)
    assert (second.attempt, second.busy) == (0, True)
    assert first.clock_warnings == ["4: drifted"] and second.clock_warnings == []
    assert first.link_schedule is not None and first.link_schedule.measured_from_s == 1.5
    assert first.link_schedule.not_reached == 1 and first.link_schedule.t0_ns == 123
    assert [dict(c) for c in first.link_schedule.changes] == [{"step": 0, "at_s": 0.004, "rate": "10mbit"}]
    assert "link_changes" not in first.extra  # (gathered, not kept twice)
    (thrown,) = res.discarded_runs
    assert (thrown.index, thrown.attempt, thrown.busy, thrown.discarded) == (0, 0, True, "busy host")
    assert res.samples_file is not None and res.samples_file.rows == 30
    assert res.config.max_other_cpu_percent == 50.0
    assert res.config.link_schedule == {"steps": [{"at": "0s"}]}
    written = res.to_json()
    assert written["schema"] == "localexit/3" == RESULTS_SCHEMA
    assert written["runs"][0]["link_schedule"]["measured_from_s"] == 1.5
    assert "link_schedule_measured_from_s" not in written["runs"][0]
    assert Results.from_json(written) == res


def test_version_1_and_2_without_those_fields_read_as_first_quiet_attempts() -> None:
    for doc in (version_1(), version_2()):
        res = Results.from_json(doc)
        assert [(r.attempt, r.busy, r.discarded, r.clock_check, r.link_schedule) for r in res.runs] == [
            (0, False, None, None, None)
        ] * 2
        assert res.discarded_runs == () and res.samples_file is None
        assert res.config.max_other_cpu_percent is None and res.config.link_schedule is None


def test_a_version_3_value_of_the_wrong_type_is_named_by_its_place() -> None:
    for mutate, message in (
        (lambda d: d["runs"][0].update(busy="yes"), r"runs\[0\]\.busy must be true or false"),
        (
            lambda d: d["discarded_runs"][0].update(attempt=-1),
            r"discarded_runs\[0\]\.attempt must be an integer",
        ),
        (lambda d: d["samples_file"].update(rows="30"), r"samples_file\.rows must be an integer"),
        (
            lambda d: d["runs"][1].update(edge_resources_window="all"),
            r"runs\[1\]\.edge_resources_window must be one",
        ),
    ):
        doc = version_3()
        mutate(doc)
        with pytest.raises(SchemaError, match=message):
            Results.from_json(doc)


def test_fields_added_through_extra_are_written_and_read_back() -> None:
    """What a writer records that no type models yet (an exit policy's choices) survives a round trip."""
    res = Results.from_json(version_3())
    run = res.runs[0].with_extra(chosen_exits=[3, 3, 4])
    again = Results.from_json(
        dataclasses.replace(res, runs=(run, res.runs[1])).with_extra(hosts=["a"]).to_json()
    )
    assert again.runs[0].extra == {"chosen_exits": [3, 3, 4]} and again.extra == {"hosts": ["a"]}


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            f"localexit/{RESULTS_VERSION + 1}",
            r"is newer than this version of localexit reads .*: upgrade localexit",
        ),
        (
            "localexit/0",
            "is not supported; this version of localexit reads 'localexit/1', 'localexit/2', 'localexit/3'",
        ),
        ("localexit-records/1", "is not supported"),
        (None, "is not supported"),
    ],
)
def test_other_versions_and_schemas_are_refused(schema: object, message: str) -> None:
    doc = version_2()
    doc["schema"] = schema
    with pytest.raises(SchemaError, match=message):
        Results.from_json(doc)


def test_fields_no_type_models_survive_a_rewrite(tmp_path: Path) -> None:
    doc = version_3()
    doc["adapt"] = {"policy": "fixed"}
    doc["config"]["node_env"] = {"edge": {"OMP_NUM_THREADS": "1"}}
    doc["runs"][0]["chosen_exits"] = [5, 5]
    path = tmp_path / "r.json"
    write_results(path, Results.from_json(doc))
    again = json.loads(path.read_text())
    assert again["adapt"] == {"policy": "fixed"}
    assert again["config"]["node_env"] == {"edge": {"OMP_NUM_THREADS": "1"}}
    assert again["runs"][0]["chosen_exits"] == [5, 5]
    assert read_results(path) == Results.from_json(doc)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["runs"][0]["summary"].update(local_exits=7),
            r"runs\[0\]\.summary\.local_exits 7 \+ cloud_exits 4",
        ),
        (
            lambda d: d["runs"][1]["summary"].update(edge_accuracy=1.2),
            r"runs\[1\]\.summary\.edge_accuracy must be a number in \[0, 1\]",
        ),
        (
            lambda d: d["runs"][0]["per_batch_ids"].update(latency=[0]),
            r"runs\[0\]\.per_batch_ids\['latency'\] has 1 batch indices for 2",
        ),
        (
            lambda d: d["runs"][0]["procedures_ms"].update({"6": None}),
            r"runs\[0\]\.procedures_ms has unknown procedures \['6'\]",
        ),
        (lambda d: d["runs"][1].update(block=0), r"runs\[0\] and runs\[1\] both ran in block 0"),
        (lambda d: d["runs"][1].update(block=None), r"runs\[1\] has no block while other runs have one"),
        (
            lambda d: d["config"].update(model="standard"),
            "config.exit: the standard model has only the cloud exit",
        ),
        (
            lambda d: d["config"].update(threshold=-0.1),
            r"config\.threshold: the exit threshold T .* got -0\.1",
        ),
        (
            lambda d: d["aggregate"]["samples"].update(unstable="no"),
            r"aggregate\['samples'\]\.unstable must be true or false",
        ),
    ],
)
def test_a_bad_value_is_named_by_its_place(mutate: Any, message: str) -> None:
    doc = version_3()
    mutate(doc)
    with pytest.raises(SchemaError, match=message):
        Results.from_json(doc)


def test_values_are_checked_when_the_harness_builds_them_too() -> None:
    """The types check themselves, so a writer cannot build what a reader would refuse."""
    good = Results.from_json(version_3())
    with pytest.raises(ValueError, match="local_exits 5 \\+ cloud_exits 4 is not samples 10"):
        Summary(10, 5, 4, None, None, 0.5, None, None, 1.0)
    with pytest.raises(ValueError, match="position must be an integer ≥ 0"):
        dataclasses.replace(good.runs[0], position=-1)
    with pytest.raises(ValueError, match="runs must hold at least one run"):
        Results(good.config, {}, (), {})


def test_every_version_is_documented() -> None:
    """The history a reader of a file needs: each version in the module's docstring and the interface
    document, by its schema id."""
    assert sorted(VERSION_HISTORY) == list(range(1, RESULTS_VERSION + 1))
    interfaces = (ROOT / "docs" / "INTERFACES.md").read_text(encoding="utf-8")
    for version in VERSION_HISTORY:
        schema = f"localexit/{version}"
        assert re.search(rf"^{version}\. ``{schema}``", results_module.__doc__ or "", re.M), schema
        assert f"`{schema}`" in interfaces, schema


def test_a_document_is_not_changed_by_reading_it() -> None:
    doc = version_1()
    before = copy.deepcopy(doc)
    Results.from_json(doc)
    assert doc == before
