"""``--link-schedule`` and ``--cpu-schedule``: refused before anything starts when wrong, applied while
the test node runs, recorded in the results and shown in the summary; a change that fails fails the run."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from contract.results import Results, ScheduleRecord
from harness import cli
from harness.config import LinkOptions, RunConfig
from harness.display import format_summary, schedule_lines
from harness.errors import ComponentFailure, ConfigError
from harness.link_schedule import parse_schedule, starting_point
from harness.results import load_results
from harness.runner import run_experiment
from netem import EdgeLimits, LinkSpec, NetemError
from netem.schedule import parse_inline

from .conftest import FakeCommands, FakeTestbed
from .helpers import make_results

SCHEDULE = "0s:10mbit/2ms,0.3s:1mbit/20ms~2ms/1%"


# --- the options ------------------------------------------------------------------------------------


def test_a_schedule_replaces_the_options_that_would_set_the_same_thing() -> None:
    with pytest.raises(ValueError, match="leave out --bw, --delay"):
        RunConfig(link_schedule=SCHEDULE, edge_cloud=LinkOptions(rate="10mbit", delay="5ms"))
    with pytest.raises(ValueError, match="leave out --edge-cpus"):
        RunConfig(cpu_schedule="0s:1,1s:0.5", edge_cpus="1")
    with pytest.raises(ValueError, match="--link-schedule needs steps"):
        RunConfig(link_schedule=" ")
    # the test–edge link is not scheduled: it may still be shaped
    cfg = RunConfig(link_schedule=SCHEDULE, test_edge=LinkOptions(delay="1ms"))
    assert "scheduled" in cfg.label() and "unshaped" not in cfg.label()


def test_inline_and_file_schedules_and_the_cpu_quota(tmp_path: Path) -> None:
    sched = parse_schedule(RunConfig(link_schedule=SCHEDULE, cpu_schedule="0s:2,5s:0.5"), usable_cpus=4)
    assert sched is not None
    assert sched.steps == parse_inline(SCHEDULE).steps
    assert [(s.at_s, s.cpus) for s in sched.cpu_steps] == [(0, 2.0), (5, 0.5)]
    f = tmp_path / "sched.toml"
    f.write_text('[[link]]\nat = "0s"\nrate = "10mbit"\n[[cpu]]\nat = "0s"\ncpus = 1.0\n')
    from_file = parse_schedule(RunConfig(link_schedule=str(f)), usable_cpus=4)
    assert from_file is not None and from_file.cpu_steps[0].cpus == 1.0
    with pytest.raises(ConfigError, match=r"has \[\[cpu\]\] steps of its own"):
        parse_schedule(RunConfig(link_schedule=str(f), cpu_schedule="0s:1"), usable_cpus=4)
    assert parse_schedule(RunConfig(), usable_cpus=4) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"link_schedule": "0s:10mbps"}, "bad --link-schedule: .*'mbps' means bytes"),
        ({"link_schedule": "1s:10mbit"}, "bad --link-schedule: .*must be at 0s"),
        ({"link_schedule": "0s:10mbit,5s:none"}, "bad --link-schedule: .*give every step a rate"),
        ({"link_schedule": "no-such-schedule.toml"}, "bad --link-schedule: cannot read"),
        ({"cpu_schedule": "0s:1,1s:abc"}, "bad --cpu-schedule: .*number of cores"),
        ({"cpu_schedule": "0s:1,1s:3"}, r"CPU step 2 \(at 1s\) asks for 3 cores, .*\(2 CPUs\)"),
        ({"cpu_schedule": "0s:1,1s:2", "edge_cpuset": "0"}, r"asks for 2 cores, .*\(1 CPUs\)"),
    ],
)
def test_bad_schedules_are_refused(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_schedule(RunConfig().replace(**options), usable_cpus=2)


def test_the_testbed_comes_up_as_the_first_steps_say() -> None:
    sched = parse_schedule(RunConfig(link_schedule=SCHEDULE, cpu_schedule="0s:0.5,1s:1"), usable_cpus=2)
    link, limits = starting_point(sched, LinkSpec(), EdgeLimits(memory_bytes=2**30))
    assert link == LinkSpec.parse(rate="10mbit", delay="2ms")
    assert limits == EdgeLimits(cpus=0.5, memory_bytes=2**30)  # (other limits kept)
    assert starting_point(None, LinkSpec(rate_bps=5), None) == (LinkSpec(rate_bps=5), None)


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    _, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, err


def test_the_command_line_refuses_a_bad_schedule_in_one_line(
    capsys: pytest.CaptureFixture[str], tiny_checkpoint: Path, tmp_path: Path
) -> None:
    base = ["run", "--dataset", "synthetic", "--checkpoint", str(tiny_checkpoint), "--exit", "2"]
    base += ["--samples", "16", "--batch-size", "8", "--no-calibration", "--out", str(tmp_path / "r.json")]
    for extra, words in (
        (["--link-schedule", "0s:10mbit,20s:5mbps"], "bad --link-schedule: link step 2"),
        (["--link-schedule", "0s:10mbit", "--bw", "10mbit"], "leave out --bw"),
        (["--cpu-schedule", "0s:1,10s:0"], "bad --cpu-schedule"),
        # loopback isolation cannot change a link during a run: refused, whatever --allow-unshaped says
        (["--link-schedule", "0s:10mbit,1s:1mbit", "--isolation", "loopback", "--allow-unshaped"],
         "needs the namespaced testbed"),
    ):  # fmt: skip
        code, err = _cli(capsys, *base, *extra)
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and words in err, err
    assert not (tmp_path / "r.json").exists()


# --- a run with a schedule, on the fake testbed --------------------------------------------------------


class ChangingTestbed(FakeTestbed):
    """The fake testbed with the two changes a schedule makes; ``fail_on`` fails that change."""

    fail_on: float | None = None

    def __init__(self, config: Any, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.changed: list[object] = []

    def change_link(self, spec: LinkSpec) -> Mapping[str, str]:
        if spec.rate_bps == self.fail_on:
            raise NetemError(
                "command failed: tc -n lx-edge qdisc change ...: RTNETLINK answers: Invalid argument"
            )
        self.changed.append(spec)
        return {"rate": "fake-shaper", "delay": "fake-line", "jitter": "fake-line", "loss": "fake-line"}

    def change_edge_cpus(self, cpus: float) -> Mapping[str, str]:
        self.changed.append(cpus)
        return {"cpus": "fake-cgroup"}


def test_the_changes_are_applied_while_the_test_node_runs_and_recorded(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TEST_SLEEP", "1.0")
    FakeTestbed.instances = []
    cfg = small_config.replace(link_schedule=SCHEDULE + ",30s:10mbit/2ms", cpu_schedule="0s:1,0.5s:0.5")
    results = run_experiment(cfg, testbed_factory=ChangingTestbed, commands=FakeCommands()).to_json()
    tb = FakeTestbed.instances[0]
    assert isinstance(tb, ChangingTestbed)
    assert tb.config.edge_cloud == LinkSpec.parse(rate="10mbit", delay="2ms")  # brought up as step 1
    assert tb.config.edge_limits == EdgeLimits(cpus=1.0)
    assert tb.changed == [
        1.0,
        LinkSpec.parse(rate="10mbit", delay="2ms"),
        LinkSpec.parse(rate="1mbit", delay="20ms", jitter="2ms", loss="1%"),
        0.5,
    ]
    expected = parse_schedule(cfg, usable_cpus=2)
    assert expected is not None and results["config"]["link_schedule"] == expected.to_json()
    run = results["runs"][0]["link_schedule"]
    assert set(run) == {"changes", "not_reached", "t0_ns", "measured_from_s"}
    changes = run["changes"]
    assert [(c["kind"], c["target"], c["at_s"]) for c in changes] == [
        ("cpu", "edge", 0),
        ("link", "edge_cloud", 0),
        ("link", "edge_cloud", 0.3),
        ("cpu", "edge", 0.5),
    ]
    assert changes[2]["values"] == {
        "rate": "1mbit",
        "delay": "20ms",
        "jitter": "2ms",
        "loss": "1%",
        "limit": None,
    }
    assert changes[3]["mechanism"] == {"cpus": "fake-cgroup"}
    assert all(0 <= c["late_s"] < 0.5 for c in changes)
    assert run["not_reached"] == 1  # the step at 30 s: the run was over by then
    assert 0 <= run["measured_from_s"] < 10  # (the fake test node's first send)
    assert isinstance(run["t0_ns"], int)
    text = format_summary(Results.from_json(results))
    assert "link schedule: 3 link and 2 CPU step(s)" in text and "4 change(s) applied" in text
    assert "1 step(s) of the schedule came after the run's end" in text


def test_a_change_that_fails_fails_the_run_at_once(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TEST_SLEEP", "30")
    FakeTestbed.instances = []
    ChangingTestbed.fail_on = 1_000_000
    try:
        t = time.monotonic()
        with pytest.raises(
            ComponentFailure, match=r"the link schedule: the link step at 0\.3s .*RTNETLINK"
        ) as err:
            run_experiment(
                small_config.replace(link_schedule=SCHEDULE, run_timeout_s=60),
                testbed_factory=ChangingTestbed,
                commands=FakeCommands(),
            )
        assert time.monotonic() - t < 15  # not after the test node's 30 s
        assert err.value.node == "link-schedule"
        assert all(p.poll() is not None for p in FakeTestbed.instances[0].popened)  # nodes stopped
    finally:
        ChangingTestbed.fail_on = None


def test_a_testbed_that_cannot_change_its_link_is_refused(small_config: RunConfig) -> None:
    FakeTestbed.instances = []
    with pytest.raises(ConfigError, match="cannot change its link during a run"):
        run_experiment(
            small_config.replace(link_schedule=SCHEDULE), testbed_factory=FakeTestbed, commands=FakeCommands()
        )


# --- the summary -------------------------------------------------------------------------------------


def _change(at_s: float, late_s: float) -> dict[str, Any]:
    return {"kind": "link", "target": "edge_cloud", "at_s": at_s, "applied_s": at_s + late_s, "late_s": late_s,
            "values": {}, "mechanism": {}}  # fmt: skip


def _scheduled(*runs: tuple[list[dict[str, Any]], float]) -> Results:
    """Results of runs that followed a two-step link schedule: each run's changes and where its
    measured phase began."""
    results = make_results(runs=len(runs))
    config = dataclasses.replace(results.config, link_schedule=parse_inline("0s:10mbit,1s:1mbit").to_json())
    recorded = [
        dataclasses.replace(run, link_schedule=ScheduleRecord(tuple(changes), 0, 1, measured_from))
        for run, (changes, measured_from) in zip(results.runs, runs, strict=True)
    ]
    return dataclasses.replace(results, config=config, runs=tuple(recorded))


def test_the_summary_gives_the_changes_and_the_latest_against_the_target() -> None:
    first = [_change(0, 0.004), _change(1, 0.012)]
    (line,) = schedule_lines(_scheduled((first, 1.7), ([_change(0, 0.003), _change(1, 0.009)], 1.5)))
    assert "2 link and 0 CPU step(s)" in line and "4 change(s) applied over 2 runs" in line
    assert "the latest 12.0 ms after its time (target ≤ 50 ms)" in line and "measured from 1.5 s on" in line
    lines = schedule_lines(_scheduled((first, 1.7), ([_change(0, 0.003), _change(1, 0.120)], 1.5)))
    assert "the latest 120.0 ms" in lines[0]
    assert lines[1].startswith("warning: a change of the link schedule came 120 ms late")
    assert schedule_lines(make_results()) == []


# --- a real run (root): the namespaced testbed, the real nodes ----------------------------------------


@pytest.mark.root
@pytest.mark.slow
def test_a_namespaced_run_applies_and_records_its_schedule(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    link = "0s:10mbit/2ms,1s:2mbit/10ms,2s:10mbit/2ms"
    proc = subprocess.run(
        [sys.executable, "-m", "harness", "run", "--dataset", "synthetic", "--checkpoint", str(tiny_checkpoint),
         "--exit", "2", "--samples", "256", "--batch-size", "1", "--warmup-batches", "1", "--no-calibration",
         "--link-schedule", link, "--cpu-schedule", "0s:1,1.5s:0.5", "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = load_results(out).to_json()
    cfg = results["config"]
    assert cfg["link_schedule"]["link"][1] == {
        "at_s": 1.0, "rate_bps": 2_000_000, "delay_s": 0.01, "jitter_s": 0.0, "loss": 0.0, "limit_bytes": None
    }  # fmt: skip
    assert cfg["links"]["edge_cloud"]["rate"] == "10mbit" and cfg["edge_limits"]["cpus"] == "1"
    run = results["runs"][0]
    changes = run["link_schedule"]["changes"]
    print("lateness (ms):", [round(c["late_s"] * 1e3, 2) for c in changes])
    print("run lasted", run["duration_s"], "s; measured from", run["link_schedule"]["measured_from_s"], "s")
    assert [(c["kind"], c["at_s"]) for c in changes] == [
        ("cpu", 0),
        ("link", 0),
        ("link", 1),
        ("cpu", 1.5),
        ("link", 2),
    ]
    assert run["link_schedule"]["not_reached"] == 0  # the run lasted past the last step
    delay_by = cfg["link_backend"]["edge_cloud"]["delay"]
    assert changes[2]["values"]["rate"] == "2mbit" and changes[2]["mechanism"]["delay"] == delay_by
    assert changes[3]["mechanism"]["cpus"] == cfg["edge_limits"]["mechanism"]
    assert all(0 <= c["late_s"] < 0.5 for c in changes)
    assert "link schedule: 3 link and 2 CPU step(s)" in proc.stdout
    json.dumps(results)  # (plain JSON throughout)
