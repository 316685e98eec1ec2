"""The orchestration with fake node programs on loopback: readiness, failures, teardown, repeats."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from harness.config import RunConfig
from harness.display import format_summary
from harness.errors import ConfigError, NodeFailure, PortInUseError, UnshapedError
from harness.results import load_results, write_results
from harness.runner import NODE_ENV_DEFAULTS, node_env, run_experiment

from .conftest import FakeCommands, FakeTestbed


def _no_fake_nodes_left(tb: FakeTestbed) -> bool:
    return all(p.poll() is not None for p in tb.popened)


def test_complete_run_produces_valid_results(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], tmp_path: Path
) -> None:
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    tb = fake_testbed.instances[0]
    assert tb.entered and tb.exited and _no_fake_nodes_left(tb)
    run = results.to_json()["runs"][0]
    assert run["summary"]["samples"] == 48
    assert len(run["per_batch_ms"]["latency"]) == 6
    assert results.to_json()["config"]["link_backend"]["edge_cloud"] == {"rate": "fake-shaper"}
    assert results.to_json()["config"]["request"]["exit"] == 2
    assert run["edge_rss_mib"]["n"] >= 0
    write_results(tmp_path / "r.json", results)
    assert load_results(tmp_path / "r.json").runs[0].index == 0


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_cloud_cpuset_pins_the_cloud_and_is_recorded(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], tmp_path: Path
) -> None:
    """--cloud-cpuset: the cloud (only) starts on those CPUs with a thread per CPU, the harness reads the
    affinity back, and the results file records it; the reports tell such results apart."""
    from reports.loader import load_results as load_for_report
    from reports.loader import scenario_key

    cpu = min(os.sched_getaffinity(0))
    results = run_experiment(
        small_config.replace(cloud_cpuset=str(cpu)), testbed_factory=fake_testbed, commands=FakeCommands()
    )
    tb = fake_testbed.instances[0]
    assert tb.cpus_asked == {"cloud": frozenset({cpu}), "edge": None, "test": None}
    assert results.to_json()["config"]["cloud_cpuset"] == {
        "cpuset": str(cpu),
        "mechanism": "sched_setaffinity",
    }
    assert results.to_json()["config"]["request"]["cloud_cpuset"] == str(cpu)
    assert node_env(tb, "cloud", frozenset({cpu}))["OMP_NUM_THREADS"] == "1"
    lines = [line.split() for line in format_summary(results).splitlines()]
    row = [words for words in lines if words[:2] == ["cloud", "cpuset"]]
    assert row == [["cloud", "cpuset", str(cpu), "sched_setaffinity"]]
    write_results(tmp_path / "pinned.json", results)
    plain = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    assert plain.to_json()["config"]["cloud_cpuset"] is None
    write_results(tmp_path / "plain.json", plain)
    keys = {scenario_key(r) for r in load_for_report([tmp_path / "pinned.json", tmp_path / "plain.json"])}
    assert len(keys) == 2


def test_the_congestion_control_is_asked_of_the_testbed_recorded_shown_and_kept_apart(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], tmp_path: Path
) -> None:
    """--tcp-cc reaches the testbed's config; what the testbed reports the connections used is recorded,
    shown, keeps reports' scenarios apart, and stops ``check`` comparing across it."""
    from harness.check import check_compatible
    from harness.errors import ResultsError
    from reports.loader import load_results as load_for_report
    from reports.loader import scenario_key

    class Reporting(fake_testbed):  # type: ignore[valid-type,misc]
        def __init__(self, config: Any, **kw: Any) -> None:
            super().__init__(config, **kw)
            want = config.tcp_congestion_control
            self.tcp_congestion_control = {
                "name": want or "bbr",
                "mechanism": "fake-sysctl" if want else "kernel-default",
                "requested": want,
            }

    chosen = run_experiment(
        small_config.replace(tcp_cc="cubic"), testbed_factory=Reporting, commands=FakeCommands()
    )
    assert fake_testbed.instances[0].config.tcp_congestion_control == "cubic"
    assert chosen.to_json()["config"]["tcp_congestion_control"] == {
        "name": "cubic",
        "mechanism": "fake-sysctl",
        "requested": "cubic",
    }
    assert chosen.to_json()["config"]["request"]["tcp_cc"] == "cubic"
    rows = [line.split() for line in format_summary(chosen).splitlines() if line.startswith("all TCP")]
    assert rows == [["all", "TCP", "congestion", "control", "cubic", "fake-sysctl"]]
    default = run_experiment(small_config, testbed_factory=Reporting, commands=FakeCommands())
    assert default.to_json()["config"]["tcp_congestion_control"]["name"] == "bbr"
    with pytest.raises(ResultsError, match="TCP congestion control: 'bbr' vs 'cubic'"):
        check_compatible(default, chosen)
    unrecorded = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    assert unrecorded.to_json()["config"]["tcp_congestion_control"] is None  # (a testbed that does not say)
    check_compatible(unrecorded, chosen)  # a file without it says nothing either way
    write_results(tmp_path / "cubic.json", chosen)
    write_results(tmp_path / "bbr.json", default)
    keys = {scenario_key(r) for r in load_for_report([tmp_path / "cubic.json", tmp_path / "bbr.json"])}
    assert len(keys) == 2


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_a_cloud_cpuset_that_did_not_take_fails_the_run(
    small_config: RunConfig, fake_testbed: type[FakeTestbed]
) -> None:
    fake_testbed.ignore_cpus = True
    try:
        cpu = min(os.sched_getaffinity(0))
        with pytest.raises(NodeFailure, match=f"not within the CPU set {cpu} asked for"):
            run_experiment(
                small_config.replace(cloud_cpuset=str(cpu)),
                testbed_factory=fake_testbed,
                commands=FakeCommands(),
            )
        assert _no_fake_nodes_left(fake_testbed.instances[0])
    finally:
        fake_testbed.ignore_cpus = False


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two usable CPUs")
def test_the_cpu_check_reads_every_thread(tmp_path: Path) -> None:
    """A bound OpenMP process narrows its main thread to the first CPU of its set: still within the set.
    A thread outside the set fails the check."""
    from harness.processes import NodeProcess
    from harness.runner import _check_cpus
    from netem import format_cpuset

    a, b = sorted(os.sched_getaffinity(0))[:2]
    code = (
        "import os, threading, time\n"
        f"threading.Thread(target=lambda: (os.sched_setaffinity(0, {{{b}}}), time.sleep(30)), daemon=True).start()\n"
        f"os.sched_setaffinity(0, {{{a}}}); time.sleep(30)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    log = (tmp_path / "n.log").open("ab")
    node = NodeProcess("cloud", proc, tmp_path / "n.log", log)

    def masks() -> list[set[int]]:
        return sorted((os.sched_getaffinity(int(t)) for t in os.listdir(f"/proc/{proc.pid}/task")), key=min)

    try:
        deadline = time.monotonic() + 10
        while masks() != [{a}, {b}] and time.monotonic() < deadline:
            time.sleep(0.01)
        _check_cpus(node, frozenset({a, b}))  # main thread on a, the other on b: both inside
        with pytest.raises(
            NodeFailure, match=f"runs on CPUs {format_cpuset({a, b})}, not within the CPU set {a} asked for"
        ):
            _check_cpus(node, frozenset({a}))
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.mark.parametrize(
    ("cpuset", "message"),
    [("x", "must look like"), ("1-0", "runs backwards"), ("4095", "does not give us")],
)
def test_bad_cloud_cpuset(small_config: RunConfig, cpuset: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        run_experiment(small_config.replace(cloud_cpuset=cpuset))


def test_repeats_use_fresh_processes_and_aggregate(
    small_config: RunConfig, fake_testbed: type[FakeTestbed]
) -> None:
    cfg = small_config.replace(repeat=3)
    seen: list[int] = []
    results = run_experiment(
        cfg,
        testbed_factory=fake_testbed,
        commands=FakeCommands(),
        on_run=lambda run: seen.append(run.index),
    )
    assert seen == [0, 1, 2]
    tb = fake_testbed.instances[0]
    assert len({p.pid for p in tb.popened}) == 9  # 3 nodes × 3 runs, never reused
    agg = results.to_json()["aggregate"]["overall_latency_ms"]
    assert agg["n"] == 3 and agg["min"] <= agg["median"] <= agg["max"]


def test_edge_sampler_measures_the_edge(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_TEST_SLEEP", "0.6")  # long enough for several 100 ms samples
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    rss = results.to_json()["runs"][0]["edge_rss_mib"]
    assert rss["n"] >= 3
    assert 1.0 < rss["max"] < 500.0  # a Python interpreter's RSS, in MiB
    assert results.to_json()["runs"][0]["edge_cpu_percent"]["mean"] is not None


@pytest.mark.parametrize("role", ["cloud", "edge"])
def test_node_that_dies_before_ready_shows_its_log(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    monkeypatch.setenv("FAKE_FAIL", role)
    with pytest.raises(NodeFailure, match=f"fake {role} failure") as info:
        run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    assert info.value.node == role
    assert "before it was ready" in str(info.value)
    tb = fake_testbed.instances[0]
    assert tb.exited and _no_fake_nodes_left(tb)


def test_node_that_never_gets_ready_times_out(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_HANG", "cloud")
    with pytest.raises(NodeFailure, match="did not print READY within 1 s"):
        run_experiment(
            small_config.replace(ready_timeout_s=1.0), testbed_factory=fake_testbed, commands=FakeCommands()
        )
    assert _no_fake_nodes_left(fake_testbed.instances[0])


def test_edge_crash_during_run_is_reported(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_DIE_DURING", "edge")
    with pytest.raises(NodeFailure, match="simulated crash") as info:
        run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    assert info.value.node == "edge"


def test_test_node_failure(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "test")
    with pytest.raises(NodeFailure, match="fake test failure"):
        run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())


def test_port_in_use_is_a_clear_error(small_config: RunConfig, fake_testbed: type[FakeTestbed]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} on 127.0.0.1 is already in use"):
            run_experiment(
                small_config.replace(ports=(port, port + 1)),
                testbed_factory=fake_testbed,
                commands=FakeCommands(),
            )


def test_refuses_to_run_unshaped_unless_allowed(small_config: RunConfig) -> None:
    def factory(config, *, isolation):  # type: ignore[no-untyped-def]
        return FakeTestbed(config, isolation=isolation, not_applied=["edge_cloud: packet loss 1%"])

    with pytest.raises(UnshapedError, match=r"packet loss 1%.*--allow-unshaped"):
        run_experiment(small_config, testbed_factory=factory, commands=FakeCommands())
    notices: list[str] = []
    results = run_experiment(
        small_config.replace(allow_unshaped=True),
        testbed_factory=factory,
        commands=FakeCommands(),
        notify=notices.append,
    )
    assert results.to_json()["config"]["not_applied"] == ["edge_cloud: packet loss 1%"]
    assert any("NOT applied" in n for n in notices)


def test_not_root_message_says_what_the_fallback_does(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def factory(config, *, isolation):  # type: ignore[no-untyped-def]
        return FakeTestbed(config, isolation=isolation, not_applied=["edge_cloud: delay as TCP sees it"])

    with pytest.raises(UnshapedError, match=r"not running as root.*loopback.*127\.0\.0\.1"):
        run_experiment(small_config, testbed_factory=factory, commands=FakeCommands())


def test_exit_out_of_range_for_checkpoint(small_config: RunConfig, tiny_sem3_checkpoint: Path) -> None:
    from models.errors import CheckpointError

    with pytest.raises(CheckpointError, match="sem-3"):
        run_experiment(
            small_config.replace(model="sem", exit=5, checkpoint=tiny_sem3_checkpoint),
            testbed_factory=FakeTestbed,
            commands=FakeCommands(),
        )


def test_bad_link_units(small_config: RunConfig) -> None:
    from harness.config import LinkOptions

    with pytest.raises(ConfigError, match=r"--bw 10mbps.*mbps would mean megabytes"):
        run_experiment(
            small_config.replace(edge_cloud=LinkOptions(rate="10mbps")),
            testbed_factory=FakeTestbed,
            commands=FakeCommands(),
        )


def test_keyboard_interrupt_tears_down(small_config: RunConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness import runner

    def interrupt(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "_wait_test", interrupt)
    FakeTestbed.instances = []
    with pytest.raises(KeyboardInterrupt):
        run_experiment(small_config, testbed_factory=FakeTestbed, commands=FakeCommands())
    tb = FakeTestbed.instances[0]
    assert tb.exited and _no_fake_nodes_left(tb)
    assert not any(psutil.pid_exists(p.pid) and p.poll() is None for p in tb.popened)


def test_nodes_get_the_process_settings_unless_the_user_set_them(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without them each batch's activations are fresh pages and idle nodes' OpenMP threads spin on the
    # computing node's cores (harness/runner.py): the run is about 2x slower.
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("OMP_PROC_BIND", raising=False)
    monkeypatch.setenv("GOMP_SPINCOUNT", "123")  # the user's own setting wins
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    computing = {
        "GLIBC_TUNABLES": NODE_ENV_DEFAULTS["GLIBC_TUNABLES"],
        "GOMP_SPINCOUNT": "123",
        "OMP_PROC_BIND": "true",
    }
    test_node = {k: v for k, v in computing.items() if k != "OMP_PROC_BIND"}  # (computes nothing: unbound)
    assert results.to_json()["config"]["node_env"] == {
        "edge": computing,
        "cloud": computing,
        "test": test_node,
    }
    assert "mmap_threshold" in NODE_ENV_DEFAULTS["GLIBC_TUNABLES"]
    env = node_env(fake_testbed.instances[0], "edge")
    assert env["GLIBC_TUNABLES"] == NODE_ENV_DEFAULTS["GLIBC_TUNABLES"] and env["GOMP_SPINCOUNT"] == "123"
    assert env["OMP_PROC_BIND"] == "true"
    # Only the nodes get the binding: with it libgomp would pin the harness's own thread to one CPU as
    # torch loads, and every node the harness starts would inherit that pin.
    assert "OMP_PROC_BIND" not in os.environ


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity (Linux)")
def test_a_users_openmp_pinning_does_not_confine_the_harness_but_reaches_the_nodes(
    fake_testbed: type[FakeTestbed], small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With OMP_PROC_BIND in its environment, libgomp would pin the harness's thread to one CPU as torch
    # loads, and every node it starts would inherit that CPU.
    code = (
        "import json, os, sys; import harness, harness.runner; "
        "print(json.dumps([sorted(os.sched_getaffinity(0)), harness.USER_PINS, "
        "'OMP_PROC_BIND' in os.environ, 'torch' in sys.modules]))"
    )
    env = {**os.environ, "OMP_PROC_BIND": "true", "OMP_PLACES": "cores"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    cpus, pins, left_in_env, torch_loaded = json.loads(out.stdout)
    assert torch_loaded  # (the import that would have pinned the thread did happen)
    assert cpus == sorted(os.sched_getaffinity(0))
    assert pins == {"OMP_PROC_BIND": "true", "OMP_PLACES": "cores"} and not left_in_env

    from harness import runner

    monkeypatch.setitem(runner.USER_PINS, "OMP_PROC_BIND", "spread")
    run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    for node in ("edge", "cloud", "test"):  # the user's own setting wins, for every node
        assert node_env(fake_testbed.instances[0], node)["OMP_PROC_BIND"] == "spread"
