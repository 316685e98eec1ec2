"""The exit-policy study's logic without namespaces: its configurations, its order, its table and
verdicts from synthetic runs, and the run options of the exit policies."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from contract.results import Run, ScheduleRecord
from harness.adapt import DEFAULT_SCHEDULE, build_parser, point_label, run_study, schedule_steps
from harness.config import RunConfig, config_from_dict, config_to_dict
from harness.results import build_run
from harness.runner import policy_argv
from nodes.records import EXIT_DECISIONS
from reports.adapt import AdaptStudy, figure, read_study, table_markdown, verdicts
from tests.harness.helpers import make_records

# Synthetic batch times per configuration (ms): every configuration's latencies are these times the
# same per-procedure shares, so their ratios are exact.
BATCH_MS = {
    "sem-2": 12.0,
    "sem-4": 14.0,
    "mem-e2": 13.0,
    "mem-e4": 15.0,
    "mem-adaptive": 9.0,
    "mem-oracle": 8.5,
}


def _fake_run(cfg: RunConfig) -> Run:
    label = point_label(cfg)
    records = make_records(batches=10, batch_size=8, batch_ms=BATCH_MS[label])
    run = build_run(0, records, cpu_percent=[1.0], rss_mib=[100.0], duration_s=1.0, calibration_ms=None)
    decisions = (
        [] if cfg.exit_policy == "fixed" else [{"exit": 2 + 2 * (i % 2), "run_s": 0.1 * i} for i in range(10)]
    )
    return dataclasses.replace(
        run,
        link_schedule=ScheduleRecord(measured_from_s=1.0),
        extra={EXIT_DECISIONS: decisions} if decisions else {},
    )


def _study(tmp_path: Path, *extra: str) -> AdaptStudy:
    args = build_parser().parse_args(["--exits", "2,4", "--repeat", "3", "--out-dir", str(tmp_path), *extra])
    study = run_study(args, run_point=_fake_run)
    assert isinstance(study, AdaptStudy)
    return study


def test_the_study_runs_every_configuration_once_per_block(tmp_path: Path) -> None:
    study = _study(tmp_path)
    per_block = Counter((r.block, r.label) for r in study.runs)
    assert set(per_block.values()) == {1}
    assert {label for _, label in per_block} == set(BATCH_MS)
    assert {r.block for r in study.runs} == {0, 1, 2}
    orders = [[r.label for r in study.runs if r.block == b] for b in range(3)]
    assert orders[0] != orders[1] or orders[1] != orders[2], "blocks are shuffled"


def test_the_verdicts_give_the_numbers(tmp_path: Path) -> None:
    study = _study(tmp_path)
    said = verdicts(study)
    assert said[0].startswith("The adaptive MEM beats the best fixed SEM (sem-2)")
    assert "-25.0 %" in said[0]  # 9 vs 12 ms
    assert "+5.9 %" in said[1] and "met" in said[1]  # 9 vs 8.5 ms
    assert said[2].startswith("Ahead of every fixed configuration under this schedule: yes")
    table = table_markdown(study)
    assert [line.split("|")[1].strip() for line in table.splitlines()[2:]] == [
        "sem-2", "sem-4", "mem-e2", "mem-e4", "mem-adaptive", "mem-oracle",
    ]  # fmt: skip


def test_a_slower_adaptive_mem_is_said_plainly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(BATCH_MS, "mem-adaptive", 13.0)
    said = verdicts(_study(tmp_path))
    assert said[0].startswith("The adaptive MEM does not beat the best fixed SEM (sem-2)")
    assert "NOT met" in said[1]
    assert said[2].startswith("Ahead of every fixed configuration under this schedule: no")


def test_the_study_file_and_figure(tmp_path: Path) -> None:
    study = _study(tmp_path)
    again = read_study(study.write(tmp_path / "adapt.json"))
    assert again == study
    png = figure(study, tmp_path / "adapt.png")
    assert png is not None and png.read_bytes()[:4] == b"\x89PNG"


def test_the_default_schedule_alternates_the_step_traces_rates() -> None:
    steps = schedule_steps(DEFAULT_SCHEDULE)
    assert steps[0] == (0.0, 12_000_000, 5.0) and steps[1] == (0.5, 1_200_000, 20.0)


def test_exit_policy_options_reach_the_edge_and_a_fixed_run_is_unchanged() -> None:
    assert policy_argv(RunConfig()) == []
    cfg = RunConfig(exit_policy="oracle", link_schedule="0s:10mbit,1s:1mbit", latency_slo_ms=40.0)
    assert policy_argv(cfg) == [
        "--exit-policy", "oracle", "--latency-slo", "40.0", "--link-schedule", "0s:10mbit,1s:1mbit",
    ]  # fmt: skip
    assert config_from_dict(config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model": "sem", "exit": 3, "exit_policy": "adaptive"}, "multi-exit model"),
        ({"exit_policy": "oracle"}, "--link-schedule"),
        ({"latency_slo_ms": 30.0}, "--latency-slo applies"),
        ({"exit_policy": "greedy"}, "one of"),
    ],
)
def test_an_exit_policy_that_cannot_apply_is_one_clear_error(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RunConfig(**changes)  # type: ignore[arg-type]
