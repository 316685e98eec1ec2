"""Studies: blocks in a seeded random order, nodes reconfigured between runs, every run kept, failures
recorded and gone past, an interrupted study resumed in its recorded order."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from contract.results import Results, Run
from harness.config import LinkOptions, RunConfig
from harness.runner import run_experiment
from harness.samples import load_samples
from harness.study import STUDY_SCHEMA, Slot, block_order, run_study
from harness.sweep import MANIFEST_NAME, PAPER_THRESHOLDS, SweepSpec, point_path
from reports.loader import load_results as load_for_reports

# -- the order -----------------------------------------------------------------------------------------


def _labels(slots: list[Slot], block: int) -> list[str]:
    return [s.label for s in slots if s.block == block]


def test_each_block_runs_every_point_once_in_an_order_of_its_own_fixed_by_the_seed() -> None:
    points = SweepSpec.paper(RunConfig()).points()
    slots = block_order(points, 5, seed=7)
    assert len(slots) == 5 * 64
    assert [s.block for s in slots] == sorted(s.block for s in slots)  # block after block
    every = sorted(p.label() for p in points)
    for block in range(5):
        in_block = [s for s in slots if s.block == block]
        assert [s.position for s in in_block] == list(range(64))
        assert sorted(s.label for s in in_block) == every  # a permutation
    orders = {tuple(_labels(slots, b)) for b in range(5)}
    assert len(orders) == 5, "each block is shuffled on its own"
    assert tuple(every) not in orders and tuple(p.label() for p in points) not in orders
    assert block_order(points, 5, seed=7) == slots  # deterministic
    assert _labels(block_order(points, 5, seed=8), 0) != _labels(slots, 0)
    # A block's order does not depend on how many blocks there are (a resumed or extended study).
    assert block_order(points, 2, seed=7) == slots[: 2 * 64]
    with pytest.raises(ValueError, match="at least one block"):
        block_order(points, 0, seed=7)


def test_the_points_of_a_link_stay_together_within_a_block() -> None:
    spec = SweepSpec(
        RunConfig(), ("sem", "mem"), (1, 2), PAPER_THRESHOLDS, (LinkOptions(), LinkOptions("10mbit"))
    )
    slots = block_order(spec.points(), 4, seed=1)
    firsts = set()
    for block in range(4):
        links = [s.point.edge_cloud.label() for s in slots if s.block == block]
        changes = sum(1 for a, b in itertools.pairwise(links) if a != b)
        assert changes == 1 and Counter(links) == {"unshaped": 16, "10mbit": 16}
        firsts.add(links[0])
    assert firsts == {"unshaped", "10mbit"}, "the links' order is random too"


# -- studies with the real nodes (loopback; namespaces below) ----------------------------------------


def _threshold(checkpoint: Path, exit: int, cfg: RunConfig) -> float:
    """The median entropy at ``exit`` of the samples a run measures: about half of them exit locally
    (the tiny model is untrained, its entropies all close to 1)."""
    from models import load_dataset
    from nodes.compute import load_parts, run_edge

    data = load_dataset(cfg.dataset, "test", None)
    ids = np.random.default_rng(cfg.seed).permutation(len(data))[: cfg.samples]
    out = run_edge(load_parts(checkpoint, exit), data.images[ids], 0.5)
    return float(np.median(out.entropy))


def _spec(
    small_config: RunConfig,
    tiny_checkpoint: Path,
    blocks: int = 2,
    link: LinkOptions | None = None,
    samples: int = 64,
    **kw: Any,
) -> SweepSpec:
    # (60 s to start: node start-up on a loaded 2-core machine took over 10 s)
    base = small_config.replace(samples=samples, repeat=blocks, ready_timeout_s=60.0, **kw)
    threshold = _threshold(tiny_checkpoint, 1, base)
    return SweepSpec(base, ("mem",), (1, 2), (threshold,), (link or LinkOptions(),), 3)


def _figures(run: dict[str, Any]) -> tuple[Any, ...]:
    s = run["summary"]
    return s["samples"], s["local_exits"], s["cloud_exits"], s["overall_accuracy"], s["edge_accuracy"]


def _manifest(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / MANIFEST_NAME).read_text())


@pytest.mark.slow
def test_a_study_keeps_every_run_with_its_block_and_matches_fresh_processes(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = _spec(small_config, tiny_checkpoint)
    seen: list[Slot] = []
    outcome = run_study(spec, tmp_path, progress=False, on_run=lambda slot, run: seen.append(slot))
    assert (outcome.done, outcome.failed, outcome.skipped, outcome.exit_code) == (4, 0, 0, 0)
    manifest = _manifest(tmp_path)
    assert manifest["schema"] == STUDY_SCHEMA and manifest["study"]["order_seed"] == 3
    assert manifest["study"]["blocks"] == 2
    order = [(r["block"], r["position"], r["label"]) for r in manifest["runs"]]
    assert order == [(s.block, s.position, s.label) for s in block_order(spec.points(), 2, 3)]
    assert [(s.block, s.position, s.label) for s in seen] == order  # run in the recorded order
    assert all(r["status"] == "done" for r in manifest["runs"])
    assert all(p["status"] == "done" and p["runs_done"] == 2 for p in manifest["points"])

    for cfg in spec.points():
        results = json.loads(point_path(tmp_path, cfg).read_text())
        runs = results["runs"]
        assert sorted(r["block"] for r in runs) == [0, 1]
        for run in runs:
            assert (run["block"], run["position"], cfg.label()) in order
        assert results["config"]["study"]["order_seed"] == 3 and results["config"]["repeat"] == 2
        assert results["aggregate"]["local_exits"]["n"] == 2
        assert len({_figures(r) for r in runs}) == 1  # the same exits and accuracy in both blocks
    # A run on reconfigured nodes gives what fresh processes give with that configuration: the point at
    # exit 1, where the threshold splits the samples, and which ran after the other in one block.
    split = spec.points()[0]
    fresh = run_experiment(split.replace(repeat=1)).to_json()["runs"][0]
    assert 0 < fresh["summary"]["local_exits"] < 64, "the point uses both exits"
    runs = json.loads(point_path(tmp_path, split).read_text())["runs"]
    assert {_figures(r) for r in runs} == {_figures(fresh)}
    assert any(r["position"] == 1 for r in runs)
    # The reports read the runs' blocks (and would refuse a file whose blocks clash).
    files = load_for_reports([tmp_path / "points"])
    assert all(f.blocked and sorted(f.series("overall_latency_ms").blocks or ()) == [0, 1] for f in files)


def _assert_archive_holds(path: Path, results: dict[str, Any]) -> None:
    """The per-sample archive of the results file at ``path`` holds each of its runs and discarded
    attempts, and the per-sample figures of each run's summary are recomputed from it."""
    table = load_samples(path, Results.from_json(results))
    attempts = {(r["index"], r.get("attempt", 0), True) for r in results["runs"]}
    attempts |= {(r["index"], r["attempt"], False) for r in results["discarded_runs"]}
    assert set(zip(table.run.tolist(), table.attempt.tolist(), table.kept.tolist(), strict=True)) == attempts
    assert results["samples_file"]["rows"] == len(table)
    for run in results["runs"]:
        rows = table.select(run["index"])
        recomputed = rows.summary()
        assert recomputed == {k: run["summary"][k] for k in recomputed}
    for run in results["discarded_runs"]:
        rows = table.select(run["index"], attempt=run["attempt"])
        assert len(rows) == run["summary"]["samples"]
        assert rows.summary()["local_exits"] == run["summary"]["local_exits"]


def _kill(node: str) -> None:
    for child in psutil.Process().children(recursive=True):
        if f"nodes.{node}" in " ".join(child.cmdline()):
            os.kill(child.pid, signal.SIGKILL)
            return
    raise AssertionError(f"no {node} node running")


@pytest.mark.slow
def test_a_node_killed_mid_study_fails_that_run_and_the_study_goes_on(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = _spec(small_config, tiny_checkpoint)
    done: list[Slot] = []

    def kill_after_first(slot: Slot, run: Run) -> None:
        done.append(slot)
        if len(done) == 1:
            _kill("edge")

    outcome = run_study(spec, tmp_path, progress=False, on_run=kill_after_first)
    assert (outcome.done, outcome.failed, outcome.exit_code) == (3, 1, 1)
    runs = _manifest(tmp_path)["runs"]
    assert [r["status"] for r in runs] == ["done", "failed", "done", "done"]
    assert "edge node: was killed by signal 9 (SIGKILL)" in runs[1]["error"]
    failed = spec.points()[[p.label() for p in spec.points()].index(runs[1]["label"])]
    assert [r["block"] for r in json.loads(point_path(tmp_path, failed).read_text())["runs"]] == [1]
    point = next(p for p in _manifest(tmp_path)["points"] if p["label"] == failed.label())
    assert point["status"] == "failed" and point["runs_done"] == 1

    # Run again, the study runs the failed run only.
    again: list[Slot] = []
    outcome = run_study(spec, tmp_path, progress=False, on_run=lambda slot, run: again.append(slot))
    assert (outcome.done, outcome.skipped, outcome.failed) == (1, 3, 0)
    assert [(s.block, s.label) for s in again] == [(runs[1]["block"], runs[1]["label"])]
    assert sorted(r["block"] for r in json.loads(point_path(tmp_path, failed).read_text())["runs"]) == [0, 1]


@pytest.mark.slow
def test_an_interrupted_study_resumes_the_remaining_runs_in_the_recorded_order(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    spec = _spec(small_config, tiny_checkpoint, blocks=3)
    first: list[Slot] = []

    def interrupt_after_two(slot: Slot, run: Run) -> None:
        first.append(slot)
        if len(first) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path, progress=False, on_run=interrupt_after_two)
    recorded = [(r["block"], r["position"], r["label"]) for r in _manifest(tmp_path)["runs"]]
    assert [r["status"] for r in _manifest(tmp_path)["runs"]].count("done") == 2
    rest: list[Slot] = []
    outcome = run_study(spec, tmp_path, progress=False, on_run=lambda slot, run: rest.append(slot))
    assert (outcome.done, outcome.skipped, outcome.failed) == (4, 2, 0)
    assert [(s.block, s.position, s.label) for s in first + rest] == recorded
    for cfg in spec.points():
        path = point_path(tmp_path, cfg)
        results = json.loads(path.read_text())
        runs = results["runs"]
        assert sorted(r["block"] for r in runs) == [0, 1, 2]
        assert [r["index"] for r in runs] == [0, 1, 2]
        # The archive holds the samples of every run, those of the first invocation too.
        _assert_archive_holds(path, results)
    # Done: a third call runs nothing.
    assert run_study(spec, tmp_path, progress=False).skipped == 6


@pytest.mark.root
@pytest.mark.slow
def test_a_study_in_namespaces(small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path) -> None:
    # (320 samples: a run long enough for the edge to be sampled during it)
    spec = _spec(small_config, tiny_checkpoint, isolation="netns", link=LinkOptions("100mbit"), samples=320)
    outcome = run_study(spec, tmp_path, progress=False)
    assert (outcome.done, outcome.failed) == (4, 0)
    results = json.loads(point_path(tmp_path, spec.points()[0]).read_text())
    assert results["config"]["isolation"] == "netns"
    assert results["config"]["link_backend"]["edge_cloud"]["rate"] == "tbf"
    assert sorted(r["block"] for r in results["runs"]) == [0, 1]
    assert all(r["edge_rss_mib"]["n"] > 0 for r in results["runs"])  # the edge sampled in each run


# -- each run measured as `run` measures one: busy host, clocks, placement, per-sample archive -------------


class _Sampler:
    """Stands in for the bed's ``ResourceSampler``: one sample per run, the CPU other programs used
    taken from a script (a fake reading that makes a run busy or quiet)."""

    loads: list[float] = []  # noqa: RUF012 -- set per test

    def __init__(self, pid: int, *args: Any, **kw: Any) -> None:
        self.cpu_percent, self.rss_mib = [100.0], [200.0]
        self.host_other_percent = [_Sampler.loads.pop(0)]

    def __enter__(self) -> _Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def window(self, start_ns: int, end_ns: int) -> tuple[list[int], bool]:
        return [0], True


@pytest.mark.slow
def test_a_busy_run_of_a_study_is_run_again_and_every_attempt_is_kept_across_a_resume(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.bed

    monkeypatch.setattr(harness.bed, "ResourceSampler", _Sampler)
    spec = _spec(small_config, tiny_checkpoint, max_other_cpu=50.0, busy_retries=1)
    notices: list[str] = []
    order: list[Slot] = []

    def stop_after_the_first_block(slot: Slot, run: Run) -> None:
        order.append(slot)
        if len(order) == 2:
            raise KeyboardInterrupt

    # Block 0: its first run busy once, then quiet; its second quiet.
    _Sampler.loads = [180.0, 5.0, 7.0]
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path, progress=False, notify=notices.append, on_run=stop_after_the_first_block)
    assert _Sampler.loads == []
    # Resumed, block 1: its first run busy twice (kept, marked busy: one retry only); its second quiet.
    _Sampler.loads = [120.0, 130.0, 9.0]
    outcome = run_study(
        spec, tmp_path, progress=False, notify=notices.append, on_run=lambda slot, run: order.append(slot)
    )
    assert (outcome.done, outcome.skipped, outcome.failed) == (2, 2, 0) and _Sampler.loads == []

    first, second, third, fourth = ((slot.block, slot.label) for slot in order)
    # (block, point) -> (attempt, busy, load) of the kept run, and the loads of its discarded attempts
    kept = {first: (1, False, 5.0), second: (0, False, 7.0), third: (1, True, 130.0), fourth: (0, False, 9.0)}
    thrown = {first: [180.0], second: [], third: [120.0], fourth: []}
    for cfg in spec.points():
        path = point_path(tmp_path, cfg)
        results = json.loads(path.read_text())
        assert results["config"]["max_other_cpu_percent"] == 50.0 and results["config"]["busy_retries"] == 1
        for run in results["runs"]:
            key = (run["block"], cfg.label())
            assert (run["attempt"], run["busy"], run["host_other_cpu_percent"]["mean"]) == kept[key]
            discarded = [r for r in results["discarded_runs"] if r["index"] == run["index"]]
            assert [r["host_other_cpu_percent"]["mean"] for r in discarded] == thrown[key]
            assert all(r["block"] == run["block"] and r["attempt"] == 0 for r in discarded)
        assert results["aggregate"]["local_exits"]["n"] == 2  # (the kept runs only)
        _assert_archive_holds(path, results)
    assert any(f"block 0: {first[1]}: busy host: other programs used 180 % CPU" in n for n in notices)
    assert any(f"block 1: {third[1]}" in n and "kept, marked busy" in n for n in notices)


@pytest.mark.slow
def test_a_studys_nodes_are_placed_as_a_runs_and_strict_clocks_fail_a_run_on_them(
    small_config: RunConfig, tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness import runner

    from .conftest import FakeTestbed

    class Recording(FakeTestbed):
        """Loopback, on a machine with 16 CPUs: records each node's CPUs and environment."""

        ignore_cpus = True
        envs: dict[str, dict[str, str]] = {}  # noqa: RUF012 -- this test's

        def popen(self, node: str, argv: Any, *, cpus: Any = None, **kw: Any) -> Any:
            Recording.envs[node] = dict(kw.get("env") or {})
            return super().popen(node, argv, cpus=cpus, **kw)

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "usable_cpus", lambda: frozenset(range(16)))
    checked: dict[str, frozenset[int]] = {}
    monkeypatch.setattr(runner, "_check_cpus", lambda node, cpus, *_: checked.__setitem__(node.name, cpus))
    warning = "procedure 4 corrected by an offset uncertain by 3 ms"
    monkeypatch.setattr(Run, "clock_warnings", property(lambda run: [warning] if run.position == 0 else []))
    FakeTestbed.instances = []
    spec = _spec(small_config, tiny_checkpoint, blocks=1, strict_clocks=True)
    outcome = run_study(spec, tmp_path, factory=Recording, progress=False)

    assert (outcome.done, outcome.failed) == (1, 1)
    runs = _manifest(tmp_path)["runs"]
    assert [r["status"] for r in runs] == ["failed", "done"]
    assert "--strict-clocks" in runs[0]["error"] and warning in runs[0]["error"]
    records = Path(runs[0]["error"].rsplit("(records: ", 1)[1].rstrip(")"))
    assert records.is_file()  # (kept with the node logs, for a look at the clocks)
    assert len(FakeTestbed.instances) == 1, "the nodes were fine: the next run ran on them"
    # Each node on its CPUs with a thread per CPU, as `run` places them, the sets read back.
    want = {"test": frozenset({0}), "edge": frozenset(range(1, 8)), "cloud": frozenset(range(8, 16))}
    assert FakeTestbed.instances[0].cpus_asked == want and checked == want
    assert {node: Recording.envs[node]["OMP_NUM_THREADS"] for node in want} == {
        "test": "1",
        "edge": "7",
        "cloud": "8",
    }
    done = next(cfg for cfg in spec.points() if cfg.label() == runs[1]["label"])
    placement = json.loads(point_path(tmp_path, done).read_text())["config"]["placement"]
    assert placement["policy"] == "disjoint" and placement["nodes"]["test"]["cpuset"] == "0"


def test_a_points_archive_rewritten_after_a_run_keeps_the_earlier_runs_rows(tmp_path: Path) -> None:
    """What a study does after each run, without nodes: the point's results file written again with
    the new run's columns in memory and the earlier runs' rows read back from the archive."""
    from harness.results import build_results, build_run, load_results, write_results
    from harness.samples import earlier_rows

    from .helpers import make_config, make_records

    def run(index: int, attempt: int, seed: int) -> Run:
        records = make_records(batches=3, seed=seed)
        out = build_run(
            index, records, cpu_percent=[], rss_mib=[], duration_s=1.0, calibration_ms=None, block=index
        )
        return dataclasses.replace(out, attempt=attempt)

    path = tmp_path / "point.json"
    first, thrown = run(0, 1, seed=1), run(0, 0, seed=2)
    write_results(path, build_results(make_config(), {}, [first], [thrown]))
    written = load_results(path)
    assert all(r.samples is None for r in written.runs)  # (in the archive now)
    second = run(1, 0, seed=3)
    results = build_results(make_config(), {}, [*written.runs, second], written.discarded_runs)
    write_results(path, results, earlier_samples=earlier_rows(path, written.runs, written.discarded_runs))
    _assert_archive_holds(path, load_results(path).to_json())
    assert len(load_samples(path)) == 3 * 3 * 8


def test_sweep_and_reproduce_take_the_busy_host_options(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import harness.study
    from harness import cli

    class Started(Exception):
        pass

    given: list[SweepSpec] = []

    def run_study_(spec: SweepSpec, out_dir: Path, **kw: Any) -> Any:
        given.append(spec)
        raise Started

    monkeypatch.setattr(harness.study, "run_study", run_study_)
    options = ["--max-other-cpu", "20", "--busy-retries", "4", "--no-progress"]
    grid = ["--models", "mem", "--exits", "1", "--thresholds", "0.3"]
    for argv in (["sweep", *grid, *options], ["reproduce", "--quick", *options]):
        with pytest.raises(Started):
            cli.main([*argv, "--out-dir", str(tmp_path / argv[0])])
    assert [(s.base.max_other_cpu, s.base.busy_retries) for s in given] == [(20.0, 4), (20.0, 4)]


def test_reproduce_runs_the_papers_grid_in_five_blocks_unless_told(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from harness import cli

    assert cli.main(["reproduce", "--quick", "--dry-run", "--out-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "64 point(s)" in out and "in 5 block(s)" in out and "320 run(s) to go" in out
    argv = ["sweep", "--models", "mem", "--exits", "1", "--thresholds", "0.3,0.5", "--samples", "64"]
    assert (
        cli.main([*argv, "--repeat", "3", "--order-seed", "4", "--dry-run", "--out-dir", str(tmp_path)]) == 0
    )
    out = capsys.readouterr().out
    assert "2 point(s)" in out and "in 3 block(s)" in out and "6 run(s) to go" in out
