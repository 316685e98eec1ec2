"""Tables and claims from the small hand-made grid, against numbers worked out by hand (see conftest)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from reports import claims, load_results, render, tables
from reports.loader import ResultsFile, parse_results
from reports.tables import Scenario
from tests.reports.conftest import Study


@pytest.fixture
def scn(small_results: Path) -> Scenario:
    (s,) = tables.group_scenarios(load_results([small_results]))
    return s


def test_scenario(scn: Scenario) -> None:
    assert scn.thresholds == [0.3, 0.5]
    assert scn.primary_threshold() == 0.3
    assert scn.exits(0.3) == [1, 2]
    assert scn.link == "rate 10mbit, delay 5ms"
    assert scn.caption(0.3) == "fashion-mnist, rate 10mbit, delay 5ms, batch 32, T = 0.3"


def test_exits_table(scn: Scenario) -> None:
    t = tables.exits_table(scn, 0.3)
    assert t.rows == ((1, 40, 60, 30, 70), (2, 70, 30, 49, 51))  # MEM@2: median(50, 48) = 49


def test_accuracy_table(scn: Scenario) -> None:
    t = tables.accuracy_table(scn, 0.3)
    assert t.rows[0] == pytest.approx((1, 90, 80, 80, 80, 84, 80))
    assert t.rows[1] == pytest.approx((2, 95, 90, 70, 86, 87.5, 88))


def test_latency_table(scn: Scenario) -> None:
    t = tables.latency_table(scn, 0.3)
    # SEM-1 edge median(2.0, 2.2)=2.1, cloud median(6.0, 6.4)=6.2, overall median(0.5, 0.7)=0.6
    assert t.rows[0] == pytest.approx((1, 2.1, 2.5, 6.2, 6.5, 0.6, 0.7))
    assert t.rows[1] == pytest.approx((2, 3.0, 3.5, 7.0, 7.5, 0.41, 0.46))


def test_threshold_table(scn: Scenario) -> None:
    t = tables.threshold_table(scn)
    assert len(t.rows) == 8
    assert t.rows[0][:3] == ("MEM@1", 0.3, 30)
    assert t.column("overall acc. (%)")[1] == pytest.approx(77.25)  # MEM@1 at T=0.5


def test_procedures_table(scn: Scenario) -> None:
    t = tables.procedures_table(scn, 0.3)
    assert [r[0] for r in t.rows] == ["MEM@1", "MEM@2", "SEM-1", "SEM-2"]
    assert t.rows[0][1:] == pytest.approx((1.0,) * 6 + (50.0, 90.0, 300.0, 310.0))


def test_spread_table(scn: Scenario) -> None:
    t = tables.spread_table(scn)
    row = next(r for r in t.rows if r[0] == "SEM-1" and r[1] == 0.3)
    # two runs: median 0.6, no interval (fewer than 3 runs), MAD 0.1; no block indices
    assert row[2:7] == pytest.approx((2, "no", 0.6, None, 0.1))
    # batch percentiles within each run (10..17 and 11..18, nearest rank), then the median over runs:
    # p50 ranks 4 -> 13 and 14 -> 13.5; p95 ranks 8 -> 17 and 18 -> 17.5. Never pooled across runs.
    assert row[7:9] == pytest.approx((13.5, 17.5))
    assert "only 2 value" in str(row[9])


def test_spread_table_interval_over_runs() -> None:
    (scn,) = tables.group_scenarios([parse_results(Path(n), d) for n, d in Study(blocks=6).docs().items()])
    row = next(r for r in tables.spread_table(scn).rows if r[0] == "SEM-2")
    assert row[3] == "yes"
    low, high = (float(x) for x in str(row[5]).strip("[]").split(", "))
    assert isinstance(row[4], float) and low <= row[4] <= high and low < high  # six runs: a real interval


def test_claims_need_runs(scn: Scenario) -> None:
    """Two runs per point (one at T = 0.5): every comparison shows its numbers but none is judged."""
    judged = claims.evaluate_claims(scn, 0.3)
    assert len(judged) == 15
    assert {c.verdict for c in judged} == {"not tested"}
    got = {c.statement: c.evidence for c in judged}
    # unpaired (no blocks): difference of medians, SEM-1 84 % vs MEM@1 80 %; SEM-2 87.5 % vs MEM@2 88 %
    assert got["SEM is more accurate (overall) than MEM at every exit point"] == (
        "2 not tested of 2 exit points. SEM − MEM: exit 1 +4.00 (n = 2, no interval) (not tested); "
        "exit 2 -0.50 (n = 2, no interval) (not tested) (runs without blocks: compared unpaired)"
    )


def test_claims_without_a_pair_to_compare(scn: Scenario) -> None:
    only_sem = Scenario(tuple(r for r in scn.results if r.kind == "sem"))
    got = {c.statement: c for c in claims.evaluate_claims(only_sem, 0.3)}
    claim = got["SEM exits more samples locally than MEM at every exit point"]
    assert (claim.verdict, claim.evidence) == ("not tested", "no pair of points to compare")
    assert got["MEM: later exit points exit more samples locally"].verdict == "not tested"


def test_sem_vs_mem_table(scn: Scenario) -> None:
    t = claims.sem_vs_mem_table(scn, 0.3)
    # unpaired ratio of the overall-latency medians: SEM-1 0.6 / MEM@1 0.7
    assert t.rows[0][:8] == pytest.approx((1, 40, 30, 84, 80, 0.6, 0.7, 0.6 / 0.7))
    assert t.rows[0][8:] == (None, "unpaired", "not tested")


def test_render_formats(scn: Scenario) -> None:
    t = tables.accuracy_table(scn, 0.3)
    md = render(t, "github")
    assert md.splitlines()[0].split("|")[1:3] == ["   exit ", "   SEM edge (%) "]
    assert "87.50" in md
    tex = render(t, "latex")
    assert "\\toprule" in tex and "87.50" in tex
    txt = render(tables.latency_table(scn, 0.3), "terminal")
    assert "0.410" in txt
    with pytest.raises(ValueError, match="unknown table format"):
        render(t, "csv")  # type: ignore[arg-type]


def test_missing_values_shown_as_dash() -> None:
    t = tables.Table("t", ("a", "b"), ((1, None),), ("g", ".2f"))
    assert "–" in render(t, "github")
    with pytest.raises(ValueError, match="row"):
        tables.Table("t", ("a", "b"), ((1,),), ("g", ".2f"))


def _with_config(res: ResultsFile, config: Mapping[str, Any]) -> ResultsFile:
    """``res`` with another configuration, read through the loader as a file with it would be."""
    return parse_results(res.path, {**res.results.to_json(), "config": dict(config)})


def test_mechanism_and_environment(scn: Scenario) -> None:
    mech = tables.mechanism_table(scn.results)
    assert mech.rows == (
        ("edge_cloud", "delay", "5ms", "tun-delay-line"),
        ("edge_cloud", "jitter", "0ms", "none"),
        ("edge_cloud", "loss", "0%", "none"),
        ("edge_cloud", "rate", "10mbit", "tbf"),
    )
    assert mech.note.startswith("Isolation: netns.")
    pinned = {**scn.results[0].config, "cloud_cpuset": {"cpuset": "2-3", "mechanism": "sched_setaffinity"}}
    with_cloud = tables.mechanism_table([_with_config(scn.results[0], pinned)])
    assert ("cloud", "cpuset", "2-3", "sched_setaffinity") in with_cloud.rows
    pinned["edge_limits"] = {"cpus": "0.5", "cpuset": None, "memory": None, "mechanism": "cgroup-v1"}
    (placed,) = tables.group_scenarios([_with_config(scn.results[0], pinned)])
    assert placed.caption(0.3).endswith("batch 32, edge cpus 0.5, cloud CPUs 2-3, T = 0.3")
    assert scn.caption(0.3).endswith("batch 32, T = 0.3")  # nothing set: nothing added
    chosen = {
        **scn.results[0].config,
        "tcp_congestion_control": {"name": "cubic", "mechanism": "sysctl-netns", "requested": "cubic"},
    }
    with_tcp = tables.mechanism_table([_with_config(scn.results[0], chosen)])
    assert ("all TCP", "congestion control", "cubic", "sysctl-netns") in with_tcp.rows
    (chosen_scn,) = tables.group_scenarios([_with_config(scn.results[0], chosen)])
    assert chosen_scn.caption(0.3).endswith("batch 32, TCP cubic, T = 0.3")
    kernels = {
        **chosen,
        "tcp_congestion_control": {"name": "bbr", "mechanism": "kernel-default", "requested": None},
    }
    (default_scn,) = tables.group_scenarios([_with_config(scn.results[0], kernels)])
    assert default_scn.caption(0.3).endswith(
        "batch 32, T = 0.3"
    )  # the kernel's: in the table, not the caption
    env: dict[str, str] = dict(tables.environment_table(scn.results).rows)  # type: ignore[arg-type]
    assert env["host"] == "testhost"
