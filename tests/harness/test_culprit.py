"""When a process of a run dies, the harness blames the one that died first -- a node or a delay line --
with how it ended and its log, says what the others did after it, and treats it as a runtime failure
(exit code 1; a study records the run as failed and goes on)."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import netem
from harness import cli
from harness.config import LinkOptions, RunConfig
from harness.errors import ComponentFailure, NodeFailure
from harness.processes import NodeProcess
from harness.runner import _wait_test, run_experiment
from harness.sweep import MANIFEST_NAME, SweepSpec

from .conftest import FakeCommands, FakeTestbed

# --------------------------------------------------------------------------------------------------
# Plain processes standing in for the nodes: the order and manner of their ends is under our control.


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[[str, str], NodeProcess]]:
    """Start ``sh -c SCRIPT`` as the node NAME, its output in NAME.log (as the harness logs a node)."""
    started: list[NodeProcess] = []

    def start(name: str, script: str) -> NodeProcess:
        log_path = tmp_path / f"{name}.log"
        log_file = open(log_path, "ab")  # noqa: SIM115 -- NodeProcess.stop closes it
        popen = subprocess.Popen(["sh", "-c", script], stdout=log_file, stderr=log_file)
        node = NodeProcess(name, popen, log_path, log_file)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def _until_ended(node: NodeProcess) -> None:
    """Block until the process has ended, leaving it uncollected -- as it is when the harness, busy or
    descheduled, has not looked for a while."""
    os.waitid(os.P_PID, node.pid, os.WEXITED | os.WNOWAIT)


SERVING = "echo '{0} node serving' >&2; exec sleep 60"
LOST_CLOUD = "echo 'error: the cloud node at 10.77.1.6:7001 closed the connection' >&2; exit 1"


def test_a_killed_node_is_blamed_not_the_test_node_that_reacted_before_the_harness_looked(
    spawn: Callable[[str, str], NodeProcess],
) -> None:
    cloud = spawn("cloud", SERVING.format("cloud"))
    edge = spawn("edge", SERVING.format("edge"))
    time.sleep(0.2)  # (both have written their log line)
    cloud.popen.send_signal(signal.SIGKILL)
    _until_ended(cloud)
    test = spawn("test", LOST_CLOUD)
    _until_ended(test)

    with pytest.raises(NodeFailure) as info:
        _wait_test(FakeTestbed(None), test, [edge, cloud], timeout_s=10)
    text = str(info.value)
    assert info.value.node == "cloud", text
    assert text.startswith("cloud node: was killed by signal 9 (SIGKILL) during the run"), text
    assert "--- last lines of the cloud node's log ---\ncloud node serving" in text
    then = text.splitlines()[1]
    assert then.startswith("then: the test node exited with code 1"), text
    assert "closed the connection" in then and "the edge node was still running" in then


def test_a_crashed_node_is_blamed_before_the_node_that_lost_it_when_both_are_seen_at_once(
    spawn: Callable[[str, str], NodeProcess],
) -> None:
    edge = spawn("edge", SERVING.format("edge"))
    cloud = spawn("cloud", "echo 'RuntimeError: out of memory' >&2; exit 1")
    _until_ended(cloud)
    test = spawn("test", LOST_CLOUD)
    _until_ended(test)

    with pytest.raises(NodeFailure) as info:
        _wait_test(FakeTestbed(None), test, [edge, cloud], timeout_s=10)
    assert info.value.node == "cloud", str(info.value)
    assert "exited with code 1 during the run" in str(info.value)
    assert "RuntimeError: out of memory" in info.value.log_tail


def test_the_first_to_end_is_blamed_even_when_a_later_one_was_killed(
    spawn: Callable[[str, str], NodeProcess],
) -> None:
    """Watched from the start, ends are told apart by time, not by how they ended."""
    test = spawn("test", "sleep 0.5; kill -9 $$")
    edge = spawn("edge", "sleep 0.2; echo 'edge node stopping' >&2; exit 0")
    cloud = spawn("cloud", SERVING.format("cloud"))

    with pytest.raises(NodeFailure) as info:
        _wait_test(FakeTestbed(None), test, [edge, cloud], timeout_s=10)
    text = str(info.value)
    assert info.value.node == "edge", text
    assert "edge node: exited with code 0 during the run" in text
    assert "then: the test node was killed by signal 9 (SIGKILL)" in text


def test_a_test_node_that_finishes_is_a_complete_run_even_if_another_ends_after_it(
    spawn: Callable[[str, str], NodeProcess],
) -> None:
    test = spawn("test", "sleep 0.2; exit 0")
    edge = spawn("edge", "sleep 0.6; exit 1")
    cloud = spawn("cloud", SERVING.format("cloud"))
    _wait_test(FakeTestbed(None), test, [edge, cloud], timeout_s=10)  # returns: no error


# --------------------------------------------------------------------------------------------------
# A delay line that dies, on a fake testbed (fake nodes on loopback): a runtime failure, not bad input.


class DyingLineTestbed(FakeTestbed):
    """A fake testbed with one helper process standing in for the edge–cloud delay line, which is
    killed ``kill_after_s`` after the test node starts."""

    kill_after_s = 0.5
    log_dir = Path()  # (set by the fixture)

    def __enter__(self) -> DyingLineTestbed:
        super().__enter__()
        self.log = self.log_dir / "delay-line-ec.log"
        with open(self.log, "ab") as err:
            self.line = subprocess.Popen(
                ["sh", "-c", "echo 'delay line forwarding' >&2; exec sleep 60"], stderr=err
            )
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.line.poll() is None:
            self.line.kill()
            self.line.wait()
        super().__exit__(*exc)

    def popen(self, node: str, argv: Any, **kw: Any) -> subprocess.Popen[bytes]:
        proc = super().popen(node, argv, **kw)
        if node == "test":
            threading.Timer(self.kill_after_s, self.line.kill).start()
        return proc

    def helper_pids(self) -> dict[str, int]:
        return {"lxfake-ec": self.line.pid} if self.line.poll() is None else {}

    def check(self) -> None:
        if self.line.poll() is not None:
            raise netem.HelperExited(
                "lxfake-ec",
                "the delay line of the edge–cloud link (lxfake-ec)",
                self.line.returncode,
                self.log.read_text(),
                str(self.log),
            )


#: How long the fake test node runs: a run that did not stop when its delay line died lasts that long.
TEST_NODE_S = 10


@pytest.fixture
def dying_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> type[DyingLineTestbed]:
    monkeypatch.setenv("FAKE_TEST_SLEEP", str(TEST_NODE_S))  # the test node is mid-run when the line dies

    class Line(DyingLineTestbed):
        log_dir = tmp_path

    return Line


def test_a_dead_delay_line_is_a_runtime_failure_with_its_log(
    small_config: RunConfig,
    dying_line: type[DyingLineTestbed],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def cmd_run(argv: list[str]) -> int:
        run_experiment(small_config, testbed_factory=dying_line, commands=FakeCommands())
        return 0

    monkeypatch.setattr(cli, "cmd_run", cmd_run)
    started = time.monotonic()
    code = cli.main([])
    err = capsys.readouterr().err
    assert code == 1, err  # a runtime failure, not the exit code of a user's mistake (2)
    assert time.monotonic() - started < TEST_NODE_S / 2, "the run went on after its link went down"
    assert "error: the delay line of the edge–cloud link (lxfake-ec): was killed by signal 9 (SIGKILL)" in err
    assert "--- last lines of its log ---\ndelay line forwarding" in err
    assert "the test node was still running" in err


class LineDiesInTheFirstRun(DyingLineTestbed):
    """As :class:`DyingLineTestbed`, its delay line killed as a study's first run on it begins: the
    bed looks its helpers up once while its test node starts, and again as each run begins."""

    looks = 0

    def popen(self, node: str, argv: Any, **kw: Any) -> subprocess.Popen[bytes]:
        return FakeTestbed.popen(self, node, argv, **kw)

    def helper_pids(self) -> dict[str, int]:
        self.looks += 1
        if self.looks == 2:
            self.line.kill()
            self.line.wait()
        return super().helper_pids()


@pytest.mark.slow
def test_a_study_records_a_run_whose_delay_line_died_as_failed_and_goes_on(
    small_config: RunConfig, tmp_path: Path
) -> None:
    """The nodes are real (a study's test node serves runs); the run on loopback does not need the line,
    but a run during which a process of its bed died is failed all the same, as in `run`."""
    from harness.study import run_study

    class Line(LineDiesInTheFirstRun):
        log_dir = tmp_path

    beds: list[FakeTestbed] = []

    def factory(config: Any, **kw: Any) -> FakeTestbed:
        beds.append((Line if not beds else FakeTestbed)(config, **kw))
        return beds[-1]

    cfg = small_config.replace(ready_timeout_s=60.0)
    spec = SweepSpec(cfg, ("mem",), (1, 2), (0.3,), (LinkOptions(),))
    outcome = run_study(spec, tmp_path / "sweep", factory=factory, progress=False)
    assert (outcome.failed, outcome.done, outcome.exit_code) == (1, 1, 1)
    runs = json.loads((tmp_path / "sweep" / MANIFEST_NAME).read_text())["runs"]
    assert [r["status"] for r in runs] == ["failed", "done"]
    assert runs[0]["error"].startswith(
        "the delay line of the edge–cloud link (lxfake-ec): was killed by signal 9 (SIGKILL) during the run"
    )
    assert len(beds) == 2, "the next run started on a fresh bed"


# --------------------------------------------------------------------------------------------------
# Real runs (namespaces, the real nodes, a user-space delay line) killed at a random moment.

KILLS = 5


def _real_config(checkpoint: Path) -> RunConfig:
    """A run that would take tens of seconds (one sample per round trip of 2 × 20 ms): it is killed."""
    return RunConfig(
        model="mem",
        exit=2,
        dataset="synthetic",
        checkpoint=checkpoint,
        samples=512,
        batch_size=1,
        inflight=1,
        warmup_batches=1,
        calibrate=False,
        isolation="netns",
        edge_cloud=LinkOptions(rate="10mbit", delay="20ms"),
        ready_timeout_s=60.0,
        run_timeout_s=120.0,
    )


def _kill_mid_run(cfg: RunConfig, target: str, workdir: Path, rng: random.Random) -> NodeFailure:
    """Run ``cfg`` and SIGKILL ``target`` (cloud, edge or delay-line) at a random moment after the test
    node has started; return the error the run ends with."""
    testbeds: list[netem.Testbed] = []
    procs: dict[str, subprocess.Popen[Any]] = {}
    test_started = threading.Event()

    def factory(config: netem.TestbedConfig, *, isolation: str) -> netem.Testbed:
        tb = netem.make_testbed(config, isolation=isolation)
        start = tb.popen

        def popen(node: str, argv: Any, **kw: Any) -> subprocess.Popen[Any]:
            procs[node] = proc = start(node, argv, **kw)
            if node == "test":
                test_started.set()
            return proc

        tb.popen = popen  # type: ignore[method-assign]
        testbeds.append(tb)
        return tb

    def kill() -> None:
        if not test_started.wait(60):
            return
        time.sleep(rng.uniform(0.2, 1.5))  # from the test node's start-up to well into its batches
        tb = testbeds[0]
        pid = tb.helper_pids()[f"{tb.config.prefix}-ec"] if target == "delay-line" else procs[target].pid
        os.kill(pid, signal.SIGKILL)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    try:
        with pytest.raises(NodeFailure) as info:
            run_experiment(cfg, testbed_factory=factory, workdir=workdir)
    finally:
        killer.join(timeout=70)
    return info.value


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("target", ["cloud", "edge", "delay-line"])
def test_the_process_killed_mid_run_is_always_the_one_blamed(
    target: str, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    rng = random.Random()
    cfg = _real_config(tiny_checkpoint)
    for attempt in range(KILLS):
        work = tmp_path / f"kill-{attempt}"
        exc = _kill_mid_run(cfg, target, work, rng)
        text = str(exc)
        first = text.splitlines()[0]
        assert "killed by signal 9 (SIGKILL) during the run" in first, text
        if target == "delay-line":
            assert isinstance(exc, ComponentFailure), text
            assert first.startswith("the delay line of the edge–cloud link"), text
            assert (work / "delay-line-ec.log").is_file()  # its stderr, kept with the nodes' logs
        else:
            assert not isinstance(exc, ComponentFailure) and exc.node == target, text
            assert first.startswith(f"{target} node: "), text
            assert f"--- last lines of the {target} node's log ---" in text
        assert "then: " in text  # what the others did after it


def _children(pid: int) -> dict[int, str]:
    """PID → command line of ``pid``'s children."""
    out = {}
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):
            out[child.pid] = " ".join(child.cmdline())
    return out


@pytest.mark.root
@pytest.mark.slow
def test_a_sweep_whose_delay_line_dies_marks_the_point_failed_exits_1_and_goes_on(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out_dir = tmp_path / "sweep"
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness", "sweep", "--models", "mem", "--exits", "2", "--thresholds", "0.3,0.5",
         "--dataset", "synthetic", "--checkpoint", str(tiny_checkpoint), "--samples", "64", "--batch-size", "1",
         "--inflight", "1", "--bw", "10mbit", "--delay", "20ms", "--no-calibration",
         "--no-progress", "--out-dir", str(out_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # (the failed point's logs are kept: here)
    )  # fmt: skip
    try:
        # The first point's delay line goes once its test node is under way (64 samples ≥ 2.6 s).
        deadline = time.monotonic() + 60
        line = None
        while line is None and proc.poll() is None and time.monotonic() < deadline:
            children = _children(proc.pid)
            if any("nodes.test" in cmd for cmd in children.values()):
                line = next(pid for pid, cmd in children.items() if "netem.run_delayline" in cmd)
            time.sleep(0.05)
        if line is None:
            proc.terminate()  # (SIGTERM: the harness tears its testbed down)
            pytest.fail(f"the first point's test node never started; the sweep said: {proc.communicate()[1]}")
        time.sleep(random.uniform(0.3, 1.0))
        os.kill(line, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=60)
    assert "Traceback" not in err, err
    assert proc.returncode == 1, err  # some point failed; never the exit code of bad input (2)
    # (a sweep runs its points in a random order: the first to run is either)
    points = json.loads((out_dir / MANIFEST_NAME).read_text())["points"]
    assert sorted(p["status"] for p in points) == ["done", "failed"], err
    failed = next(p for p in points if p["status"] == "failed")
    assert "the delay line of the edge–cloud link" in failed["error"]
    assert "killed by signal 9 (SIGKILL)" in failed["error"]
    assert "1 failed" in out
