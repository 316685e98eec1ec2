"""The harness and the nodes' clocks: how each node's stamps were timed is shown with the summary, clock
corrections not good enough for the procedures are warned about, and ``--strict-clocks`` fails the run."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

from contract.results import Results
from harness.cli import run_config_from_args
from harness.config import RunConfig, config_from_dict, config_to_dict
from harness.display import format_summary
from harness.errors import NodeFailure
from harness.parsers import parse
from harness.results import build_results, build_run
from harness.runner import Plan, check_run_clocks, run_experiment
from nodes.timing import (
    NS_PER_S,
    BatchStamps,
    ClockEstimate,
    check_clocks,
    node_clock,
)

from .conftest import FakeCommands, FakeTestbed
from .helpers import make_config, make_records

START = 1_000 * NS_PER_S


def _estimate(offset_ns: int, uncertainty_ns: int, at: int) -> ClockEstimate:
    return ClockEstimate(offset_ns, 2 * uncertainty_ns, uncertainty_ns, 5, at)


def _clock_sections(cloud_uncertainty_ns: int, same_host: bool) -> dict[str, Any]:
    """The ``clock`` and ``clock_check`` sections a test node writes (made by ``nodes.timing`` itself)
    for batches whose procedure 5 takes 0.45 ms; the cloud 5000 s ahead unless ``same_host``."""
    cloud_domain = "here" if same_host else "another host"
    clocks = {
        "edge": node_clock(
            _estimate(0, 20_000, START),
            _estimate(0, 20_000, START + NS_PER_S),
            peer_domain="here",
            local_domain="here",
        ),
        "cloud": node_clock(
            _estimate(5000 * NS_PER_S, cloud_uncertainty_ns, START),
            _estimate(5000 * NS_PER_S, cloud_uncertainty_ns, START + NS_PER_S),
            peer_domain=cloud_domain,
            local_domain="here",
        ),
    }
    t = START + NS_PER_S // 2
    batch = BatchStamps(
        t, t + 10**6, t + 3 * 10**6, t + 4 * 10**6, 4, 4, t + 4 * 10**6, t + 6 * 10**6, t + 6_450_000
    )
    return {
        "clock": {n: c.to_json() for n, c in clocks.items()},
        "clock_check": check_clocks([batch], clocks).to_json(),
    }


def _results(cloud_uncertainty_ns: int, same_host: bool = False, runs: int = 1) -> Results:
    run_objs = []
    for i in range(runs):
        records = {**make_records(seed=i), **_clock_sections(cloud_uncertainty_ns, same_host)}
        run_objs.append(
            build_run(i, records, cpu_percent=[50.0], rss_mib=[100.0], duration_s=1.0, calibration_ms=None)
        )
    return build_results(
        make_config(cloud_cpuset=None, tcp_congestion_control=None), {"python": "3"}, run_objs
    )


def test_the_summary_says_each_node_was_offset_corrected_and_warns_about_an_uncertain_offset() -> None:
    text = format_summary(_results(cloud_uncertainty_ns=300_000))  # ± 0.3 ms against procedure 5's 0.45 ms
    assert "clocks: edge shared-clock, cloud offset-corrected (± 0.300 ms, drift up to 0.000 µs/s)" in text
    warnings = [line for line in text.splitlines() if line.startswith("warning: clocks")]
    assert len(warnings) == 2 and "procedure 3-2" in warnings[0] and "procedure 5" in warnings[1], warnings


def test_the_summary_of_a_same_host_run_records_the_shared_clock_without_warnings() -> None:
    results = _results(cloud_uncertainty_ns=300_000, same_host=True, runs=2)
    assert all(not run.clock_warnings for run in results.runs)
    text = format_summary(results)
    assert "clocks: edge shared-clock, cloud shared-clock" in text
    assert "warning: clocks" not in text


def test_strict_clocks_fails_a_run_whose_clocks_are_not_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    untrusted = _results(cloud_uncertainty_ns=300_000).runs[0]
    with caplog.at_level(logging.WARNING, logger="harness.runner"):
        check_run_clocks(untrusted, tmp_path / "records.json", strict=False)  # only says so
    assert sum("run 0: clocks: procedure" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(NodeFailure, match=r"--strict-clocks.*procedure 5") as failed:
        check_run_clocks(untrusted, tmp_path / "records.json", strict=True)
    assert failed.value.node == "test", "a failed measurement (exit code 1), not a user error (2)"
    trusted = _results(cloud_uncertainty_ns=10_000).runs[0]  # ± 0.01 ms: within a tenth of every procedure
    check_run_clocks(trusted, tmp_path / "records.json", strict=True)


def test_the_strict_clocks_option_reaches_the_run_and_survives_the_recorded_request() -> None:
    assert run_config_from_args(parse(["run", "--model", "mem", "--exit", "5"])).strict_clocks is False
    cfg = run_config_from_args(parse(["--model", "mem", "--exit", "5", "--strict-clocks"]))
    assert cfg.strict_clocks is True
    assert config_from_dict(config_to_dict(cfg)).strict_clocks is True
    assert run_config_from_args(parse(["sweep", "--strict-clocks"]), model="mem", exit=5).strict_clocks


# A test node whose records say that the cloud's clock offset was too uncertain for procedure 5.
_UNTRUSTING = """
import json, subprocess, sys
out, sections, argv = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
code = subprocess.call(argv)
records = json.load(open(out))
records.update(sections)
json.dump(records, open(out, "w"))
sys.exit(code)
"""


class UntrustingCommands(FakeCommands):
    def test(self, plan: Plan, edge: tuple[str, int], cloud: tuple[str, int], out: Path) -> list[str]:
        sections = json.dumps(_clock_sections(cloud_uncertainty_ns=300_000, same_host=False))
        return [sys.executable, "-c", _UNTRUSTING, str(out), sections, *super().test(plan, edge, cloud, out)]


def test_a_run_with_untrusted_clocks_is_kept_with_a_warning_or_failed_with_strict_clocks(
    small_config: RunConfig, fake_testbed: type[FakeTestbed]
) -> None:
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=UntrustingCommands())
    run = results.runs[0]
    assert run.clock["cloud"]["method"] == "offset-corrected" and run.clock_check is not None
    assert run.clock_check["trusted"] is False
    assert "warning: clocks: procedure 5" in format_summary(results)
    with pytest.raises(NodeFailure, match="--strict-clocks"):
        run_experiment(
            small_config.replace(strict_clocks=True),
            testbed_factory=fake_testbed,
            commands=UntrustingCommands(),
        )
