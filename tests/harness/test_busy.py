"""Runs measured while other programs used the CPU: run again (bounded), every attempt kept, the last one
marked when the host stayed busy; files with such runs still read by the reports and the check."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contract.results import Resource, Run
from harness import busy, runner
from harness.check import compare
from harness.config import RunConfig
from harness.display import format_summary
from harness.results import load_results, write_results
from harness.runner import run_experiment

from .conftest import FakeCommands, FakeTestbed
from .helpers import make_results


def test_a_run_over_the_limit_is_busy_and_run_again_while_retries_are_left() -> None:
    verdict = busy.judge(73.0, 50.0, attempt=0, retries=2)
    assert verdict.busy and verdict.retry
    assert verdict.reason == "busy host: other programs used 73 % CPU > limit 50 %"
    assert not busy.judge(73.0, 50.0, attempt=2, retries=2).retry  # (the retries are spent)
    assert busy.judge(73.0, 50.0, attempt=2, retries=2).busy
    quiet = busy.judge(20.0, 50.0, attempt=0, retries=2)
    assert not quiet.busy and not quiet.retry and quiet.reason == ""
    assert not busy.judge(None, 50.0, attempt=0, retries=2).busy  # (nothing sampled: nothing to judge)
    assert not busy.judge(50.0, 50.0, attempt=0, retries=2).busy


def _attempts(loads: list[float]) -> Any:
    (run,) = make_results().runs

    def measure(attempt: int) -> Run:
        return dataclasses.replace(run, host_other_cpu_percent=Resource(loads[attempt], loads[attempt], 3))

    return measure


def test_the_first_quiet_attempt_is_kept_and_the_busy_ones_are_kept_apart() -> None:
    told: list[str] = []
    kept, discarded = busy.repeat_while_busy(
        _attempts([300.0, 10.0]), limit=50.0, retries=2, on_discard=lambda run, v: told.append(v.reason)
    )
    assert kept.attempt == 1 and kept.busy is False and kept.discarded is None
    assert [run.attempt for run in discarded] == [0]
    assert discarded[0].discarded == "busy host: other programs used 300 % CPU > limit 50 %"
    assert discarded[0].busy is True and told == [discarded[0].discarded]


def test_a_host_that_stays_busy_gives_a_kept_run_marked_busy_after_the_retries() -> None:
    kept, discarded = busy.repeat_while_busy(_attempts([300.0, 200.0, 100.0, 0.0]), limit=50.0, retries=2)
    assert kept.attempt == 2 and kept.busy is True and kept.discarded is None
    assert len(discarded) == 2
    kept, discarded = busy.repeat_while_busy(_attempts([300.0]), limit=50.0, retries=0)
    assert kept.busy is True and discarded == []


class _Sampler:
    """Stands in for ``ResourceSampler``: one sample per run, the other programs' CPU from a script."""

    loads: list[float] = []  # noqa: RUF012 -- set per test

    def __init__(self, pid: int, *args: Any, **kw: Any) -> None:
        load = _Sampler.loads.pop(0)
        self.times_ns = [0]
        self.cpu_percent, self.rss_mib, self.host_other_percent = [100.0], [200.0], [load]

    def __enter__(self) -> _Sampler:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def window(self, start_ns: int, end_ns: int) -> tuple[list[int], bool]:
        return [0], True


def test_a_run_on_a_busy_host_is_run_again_and_the_file_keeps_every_attempt(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from reports.loader import load_results as load_for_report

    monkeypatch.setattr(runner, "ResourceSampler", _Sampler)
    _Sampler.loads = [180.0, 5.0, 7.0, 120.0, 90.0, 130.0]
    notices: list[str] = []
    cfg = small_config.replace(repeat=3, max_other_cpu=50.0, busy_retries=2)
    results = run_experiment(
        cfg, testbed_factory=fake_testbed, commands=FakeCommands(), notify=notices.append
    )
    assert _Sampler.loads == []
    tb = fake_testbed.instances[0]
    assert len(tb.popened) == 3 * 6  # three nodes for each of the six attempts
    runs = results.runs
    assert [(r.index, r.attempt, r.busy) for r in runs] == [
        (0, 1, False),
        (1, 0, False),
        (2, 2, True),
    ]
    assert [busy.other_load(r) for r in runs] == [5.0, 7.0, 130.0]
    discarded = results.discarded_runs
    assert [(r.index, r.attempt) for r in discarded] == [(0, 0), (2, 0), (2, 1)]
    assert discarded[0].discarded == "busy host: other programs used 180 % CPU > limit 50 %"
    assert all(r.busy for r in discarded)
    # the figures come from the kept runs only
    latency = results.aggregate["overall_latency_ms"]
    assert latency is not None and latency.n == 3
    assert any("run 1/3: busy host" in n and "running it again (1/2)" in n for n in notices)
    assert any("run 3/3" in n and "marked busy" in n for n in notices)
    assert results.config.max_other_cpu_percent == 50.0 and results.config.busy_retries == 2

    summary = format_summary(results)
    assert "warning: run(s) 2 measured while other programs used 130% CPU (limit 50%)" in summary
    assert "3 attempt(s) measured on a busy host were run again" in summary

    path = tmp_path / "busy.json"
    write_results(path, results)
    loaded = load_results(path)
    assert len(loaded.runs) == 3 and len(loaded.discarded_runs) == 3
    # the check reads the file and sees the kept busy run (a change found on it is inconclusive)
    assert compare(loaded, loaded).host_load == (130.0, 130.0)
    (report_file,) = load_for_report([path])
    assert len(report_file.runs) == 3


def test_no_retry_when_the_host_is_quiet(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "ResourceSampler", _Sampler)
    _Sampler.loads = [10.0]
    results = run_experiment(
        small_config.replace(busy_retries=2), testbed_factory=fake_testbed, commands=FakeCommands()
    )
    assert results.discarded_runs == () and results.runs[0].busy is False
    assert len(fake_testbed.instances[0].popened) == 3


@pytest.fixture
def cpu_burner() -> Iterator[int]:
    """A busy loop outside this process's tree (re-parented once its parent exits), as another program
    on the host would be: the sampler counts this process's children as the harness's own."""
    code = (
        "import os\n"
        "if os.fork():\n    os._exit(0)\n"
        "os.setsid()\nprint(os.getpid(), flush=True)\nos.close(1)\n"
        "while True:\n    pass\n"
    )
    launcher = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert launcher.stdout is not None
    pid = int(launcher.stdout.readline())
    launcher.stdout.close()
    launcher.wait(timeout=10)
    time.sleep(0.3)  # (let it get going)
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_another_program_busy_on_the_host_makes_the_run_busy(
    small_config: RunConfig,
    fake_testbed: type[FakeTestbed],
    cpu_burner: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FAKE_TEST_SLEEP", "0.6")  # (a measured phase the sampler sees a few times)
    cfg = small_config.replace(busy_retries=1, max_other_cpu=50.0)
    results = run_experiment(cfg, testbed_factory=fake_testbed, commands=FakeCommands())
    (kept,) = results.runs
    (thrown,) = results.discarded_runs
    assert thrown.discarded is not None and thrown.discarded.startswith("busy host: other programs used")
    assert busy.other_load(thrown) is not None and busy.other_load(thrown) > 50.0  # type: ignore[operator]
    assert kept.busy is True and kept.attempt == 1
