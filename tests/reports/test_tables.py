"""Tables and claims from the small hand-made grid, against numbers worked out by hand (see conftest)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from reports import claims, load_results, render, stats, tables
from reports.tables import Scenario


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
    # pooled batch latencies 10..17 and 11..18: nearest-rank p50 = 8th of 16 = 14, p95 = 16th = 18
    assert row[2:6] == pytest.approx((2, 0.6, 0.1, 14.0))
    assert row[7] == 18.0
    assert "only 2 value" in str(row[8])


def test_claims_verdicts(scn: Scenario) -> None:
    got = {c.statement: (c.verdict, c.evidence) for c in claims.evaluate_claims(scn, 0.3)}
    assert got["SEM exits more samples locally than MEM at every exit point"][0] == "supported"
    verdict, evidence = got["SEM is more accurate (overall) than MEM at every exit point"]
    assert verdict == "partly (1 of 2 exit points)"
    assert "1: 84.00 vs 80.00" in evidence and "2: 87.50 vs 88.00 ✗" in evidence
    assert got["SEM is more accurate at the edge than MEM at every exit point"][0] == "supported"
    assert got["SEM is faster (overall latency) than MEM at every exit point"][0] == "supported"
    assert got["SEM: later exit points exit more samples locally"][0] == "supported"
    assert got["MEM: later exit points exit more samples locally"][0] == "supported"
    assert got["A lower T exits fewer samples locally"][0] == "supported"
    assert got["A lower T raises overall accuracy"][0] == "supported"
    verdict, evidence = got["A lower T raises overall latency"]
    assert verdict == "partly (3 of 4 threshold steps)"
    assert "MEM@2 T=0.3→0.5: 0.460→0.500" in evidence


def test_claims_not_supported_and_not_tested(scn: Scenario) -> None:
    got = {c.statement: c.verdict for c in claims.evaluate_claims(scn, 0.5)}
    # at T = 0.5 SEM-2 overall 87% vs MEM 85%, SEM-1 83% vs 77.25%: supported; MEM 55 -> 80 later exits
    assert got["SEM is more accurate (overall) than MEM at every exit point"] == "supported"
    only_sem = Scenario(tuple(r for r in scn.results if r.kind == "sem"))
    got = {c.statement: c.verdict for c in claims.evaluate_claims(only_sem, 0.3)}
    assert got["SEM exits more samples locally than MEM at every exit point"] == "not tested (no data)"
    assert got["MEM: later exit points exit more samples locally"] == "not tested (no data)"
    flipped = claims.Claim("x", 0, 3, "exit points", "")
    assert flipped.verdict == "not supported"


def test_sem_vs_mem_table(scn: Scenario) -> None:
    t = claims.sem_vs_mem_table(scn, 0.3)
    sem1 = next(r for r in scn.results if r.label == "SEM-1" and r.threshold == 0.3)
    mem1 = next(r for r in scn.results if r.label == "MEM@1" and r.threshold == 0.3)
    _, p = stats.mann_whitney_u(sem1.batch_latencies(), mem1.batch_latencies())
    assert t.rows[0] == pytest.approx((1, 40, 30, 84, 80, 0.6, 0.7, p))
    assert 0 < p < 1


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
    with_cloud = tables.mechanism_table([dataclasses.replace(scn.results[0], config=pinned)])
    assert ("cloud", "cpuset", "2-3", "sched_setaffinity") in with_cloud.rows
    pinned["edge_limits"] = {"cpus": "0.5", "cpuset": None, "memory": None, "mechanism": "cgroup-v1"}
    (placed,) = tables.group_scenarios([dataclasses.replace(scn.results[0], config=pinned)])
    assert placed.caption(0.3).endswith("batch 32, edge cpus 0.5, cloud CPUs 2-3, T = 0.3")
    assert scn.caption(0.3).endswith("batch 32, T = 0.3")  # nothing set: nothing added
    chosen = {
        **scn.results[0].config,
        "tcp_congestion_control": {"name": "cubic", "mechanism": "sysctl-netns", "requested": "cubic"},
    }
    with_tcp = tables.mechanism_table([dataclasses.replace(scn.results[0], config=chosen)])
    assert ("all TCP", "congestion control", "cubic", "sysctl-netns") in with_tcp.rows
    (chosen_scn,) = tables.group_scenarios([dataclasses.replace(scn.results[0], config=chosen)])
    assert chosen_scn.caption(0.3).endswith("batch 32, TCP cubic, T = 0.3")
    kernels = {
        **chosen,
        "tcp_congestion_control": {"name": "bbr", "mechanism": "kernel-default", "requested": None},
    }
    (default_scn,) = tables.group_scenarios([dataclasses.replace(scn.results[0], config=kernels)])
    assert default_scn.caption(0.3).endswith(
        "batch 32, T = 0.3"
    )  # the kernel's: in the table, not the caption
    env: dict[str, str] = dict(tables.environment_table(scn.results).rows)  # type: ignore[arg-type]
    assert env["host"] == "testhost"
