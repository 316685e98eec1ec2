"""A study's testbed: one link's testbed and its three nodes, started once and reused for many runs.

``run_once`` (``harness.runner``) starts fresh node processes for every run: bringing up namespaces and
three processes (two of which load torch) costs seconds, most of a short run. A study runs many points
on one link, so :class:`StudyBed` brings the testbed and the nodes up once and runs each point through
a serving test node (``python -m nodes.test --serve``, see ``nodes.serve``): for each run it sends one
request line -- the checkpoint, exit and threshold the nodes are to run, the run's options, the records
file -- and the test node reconfigures the cloud and the edge (``nodes.messages.Configure``), runs the
warm-up batches and the measured ones, and answers one line. The edge is sampled (``ResourceSampler``)
during each run.

While a run is under way every process of the bed is watched as in ``run_once``: when one dies, the run
fails with the culprit (the first to end, node or delay line) and its log. A failed bed is not reused:
the study closes it and brings up a fresh one for its next run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import netem
from netem.errors import HelperExited
from nodes.errors import UsageError
from nodes.serve import SERVE_PROTOCOL, Reply, RunDone, RunFailed, RunRequest, Serving, decode_reply

from .errors import NodeFailure
from .processes import (
    POLL_S,
    REACTION_S,
    Ended,
    ExitWatcher,
    NodeProcess,
    ResourceSampler,
    collect_ends,
    culprit,
    watch_run,
)
from .runner import (
    NodeCommands,
    Plan,
    TestbedFactory,
    TestbedLike,
    check_applied,
    hostport,
    node_pid,
    start_nodes,
    testbed_config,
)

logger = logging.getLogger(__name__)

#: How long the serving test node gets to exit by itself once its stdin is closed, before SIGTERM.
SERVE_EXIT_S = 2.0


class StudyCommands(NodeCommands):
    """``NodeCommands`` plus the argv of the serving test node."""

    def test_server(self, edge: tuple[str, int], cloud: tuple[str, int]) -> list[str]:
        return [
            self.python,
            "-m",
            "nodes.test",
            "--serve",
            "--edge",
            hostport(*edge),
            "--cloud",
            hostport(*cloud),
        ]


class ServingTest(NodeProcess):
    """The serving test node: its requests go to its stdin, its replies (one JSON line each on stdout)
    to :attr:`replies`, ``None`` once stdout has closed."""

    def __init__(self, name: str, popen: subprocess.Popen[Any], log_path: Path, log_file: IO[bytes]) -> None:
        self.replies: queue.Queue[str | None] = queue.Queue()
        super().__init__(name, popen, log_path, log_file)

    def _read_stdout(self) -> None:  # (instead of NodeProcess's, which looks for READY)
        assert self.popen.stdout is not None  # started with a pipe
        for raw in self.popen.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self._stdout_lines.append(line)  # (shown with the log's tail)
            self.replies.put(line)
        self.replies.put(None)

    def send(self, request: RunRequest) -> None:
        """Write one request line; a test node that is gone is noticed by the caller's watch."""
        assert self.popen.stdin is not None  # started with a pipe
        with contextlib.suppress(BrokenPipeError):
            self.popen.stdin.write(request.to_json() + b"\n")
            self.popen.stdin.flush()

    def stop(self) -> int | None:
        """Close stdin (the node's cue to exit 0), give it ``SERVE_EXIT_S``, then stop it as any node."""
        if self.popen.stdin is not None and not self.popen.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.popen.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=SERVE_EXIT_S)
        return super().stop()


@dataclass(frozen=True)
class Measured:
    """One run on a bed: the test node's records and the edge's samples taken meanwhile."""

    records: dict[str, Any]
    duration_s: float
    cpu_percent: list[float]
    rss_mib: list[float]
    host_other_percent: list[float]
    in_window: bool  # samples only from the measured phase (not the warm-up), by the shared clock


class StudyBed:
    """The testbed of one link with its cloud, edge and serving test node, for many runs.

    Use as a context manager: ``__enter__`` brings the testbed up (refusing, as ``run_experiment`` does,
    what it cannot apply), starts the cloud and the edge with ``plan``'s configuration -- only the first
    one: each run configures the nodes again -- and the test node; ``__exit__`` stops them and tears the
    testbed down, in reverse order. ``plan`` also gives what every run on the bed shares: the link, the
    edge limits, the cloud's CPUs, the congestion control, the isolation and the timeouts.
    """

    def __init__(
        self,
        plan: Plan,
        workdir: Path,
        *,
        factory: TestbedFactory | None = None,
        commands: StudyCommands | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self._factory = factory or netem.make_testbed
        self._commands = commands or StudyCommands()
        self._notify = notify
        self._stack = contextlib.ExitStack()
        self.tb: TestbedLike | None = None
        self._nodes: dict[str, NodeProcess] = {}

    @property
    def testbed(self) -> TestbedLike:
        if self.tb is None:
            raise RuntimeError("the bed is not up: use it as a context manager")
        return self.tb

    def __enter__(self) -> StudyBed:
        try:
            self._up()
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stack.close()

    def _up(self) -> None:
        plan, cfg, stack = self.plan, self.plan.config, self._stack
        self.workdir.mkdir(parents=True, exist_ok=True)
        tb_config = testbed_config(plan, self.workdir, scheduled=False)
        tb = self.tb = stack.enter_context(self._factory(tb_config, isolation=cfg.isolation))
        for notice in check_applied(cfg, tb):
            if self._notify:
                self._notify(notice)
        # (the nodes start as a run's do: the same placement, threads and checks)
        commands = self._commands
        nodes = start_nodes(
            plan,
            tb,
            self.workdir,
            stack,
            commands=commands,
            test_argv=commands.test_server,
            serving=ServingTest,
        )
        self._nodes = nodes.by_name()
        first = self._await_reply(cfg.ready_timeout_s, what="to start serving")
        if not isinstance(first, Serving) or first.protocol != SERVE_PROTOCOL:
            raise nodes.test.failure(f"started with {first!r} instead of serving {SERVE_PROTOCOL}")

    def run(self, plan: Plan, records_path: Path) -> Measured:
        """Run ``plan``'s point once on this bed, the test node's records written to ``records_path``
        (left there: the caller removes it once it has what it needs); ``NodeFailure`` when a process
        of the bed dies or the run fails (close the bed then: it is not reused)."""
        cfg = plan.config
        if plan.edge_cloud != self.plan.edge_cloud or cfg.isolation != self.plan.config.isolation:
            raise ValueError(f"{cfg.label()} is not a point of this bed's link")
        test = self._nodes["test"]
        assert isinstance(test, ServingTest)  # (set so by _up)
        pids = {name: node_pid(self.testbed, node) for name, node in self._nodes.items()}
        others = [pid for name, pid in pids.items() if pid != self._nodes[name].pid]
        tb = self.testbed
        # (nodes on other hosts: this checkout's files are under their project, the records go to the
        # run's folder on the test node's host and are fetched back once it answers)
        on_host = getattr(tb, "node_path", _same_path)
        request = RunRequest(
            out=getattr(tb, "output_path", _same_path)("test", records_path),
            checkpoint=on_host("edge", plan.checkpoint),  # (the cloud's too: one path for both)
            sha256=plan.checkpoint_sha256,
            model=cfg.model,
            exit=plan.node_exit,
            threshold=cfg.threshold,
            dataset=cfg.dataset,
            data_dir=on_host("test", cfg.data_dir) if cfg.data_dir is not None else None,
            samples=plan.samples,
            batch_size=cfg.batch_size,
            inflight=cfg.inflight,
            warmup_batches=cfg.warmup_batches,
            seed=cfg.seed,
        )
        records_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        make_sampler = getattr(tb, "resource_sampler", ResourceSampler)  # (hosts: on the edge's host)
        with make_sampler(pids["edge"], others=others) as sampler:
            test.send(request)
            reply = self._await_reply(cfg.run_timeout_s, what="to finish the run (--run-timeout)")
        duration = time.monotonic() - started
        if not isinstance(reply, RunDone):
            raise test.failure(f"answered a run with {reply!r}")
        fetch = getattr(tb, "fetch_output", None)
        if fetch is not None:
            fetch("test", records_path)
        records = _read_records(records_path)
        overall = records.get("overall", {}) if isinstance(records, dict) else {}
        window_of = getattr(sampler, "window_of", None)  # (samples on another host's clock)
        first, last = int(overall.get("first_send_ns", 0)), int(overall.get("last_recv_ns", 0))
        idx, in_window = window_of(records) if window_of else sampler.window(first, last)
        return Measured(
            records=records,
            duration_s=duration,
            cpu_percent=[sampler.cpu_percent[i] for i in idx],
            rss_mib=[sampler.rss_mib[i] for i in idx],
            host_other_percent=[sampler.host_other_percent[i] for i in idx],
            in_window=in_window,
        )

    def _await_reply(self, timeout_s: float, *, what: str) -> Reply:
        """The test node's next reply, while watching every process of the bed as ``wait_for_test``
        does: when one ends first, raise for it (after up to ``REACTION_S`` for the others' reactions);
        a failure the test node reports with every process alive is raised against the node it names."""
        test = self._nodes["test"]
        assert isinstance(test, ServingTest)
        tb = self.testbed
        helper_pids = getattr(tb, "helper_pids", None)  # netem.Testbed: its delay lines and relays
        link_check = getattr(tb, "check", None)  # netem.Testbed: raises HelperExited if one died
        deadline = time.monotonic() + timeout_s
        reply: Reply | None = None
        failed_at: float | None = None
        ended: list[Ended] = []
        links: dict[str, HelperExited] = {}
        with ExitWatcher() as watcher:
            watch_run(watcher, self._nodes.values(), helper_pids() if helper_pids is not None else {})
            while True:
                if reply is None:
                    with contextlib.suppress(queue.Empty):
                        line = test.replies.get(timeout=POLL_S)
                        if line is not None:
                            reply = _decode(test, line)
                else:
                    time.sleep(POLL_S)
                collect_ends(watcher, self._nodes, 0, link_check, links, ended)
                now = time.monotonic()
                if ended:
                    # A process that ended before the reply was seen fails the run whatever the test
                    # node answered, as in `run`: the run may have measured its loss (a delay line
                    # gone, a node restarting), and the bed is not whole for the next run.
                    test_reacted = reply is not None or any(end.key == "test" for end in ended[1:])
                    if test_reacted or time.monotonic_ns() - ended[0].seen_ns >= REACTION_S * 1e9:
                        raise culprit(ended, self._nodes, links)
                elif isinstance(reply, (Serving, RunDone)):
                    return reply
                elif isinstance(reply, RunFailed):
                    # (a node that died is the cause, not the test node's report of it: give its end
                    # the moment it takes to be seen)
                    failed_at = failed_at if failed_at is not None else now
                    if now - failed_at >= REACTION_S:
                        blamed = self._nodes.get(reply.node or "test", test)
                        raise blamed.failure(f"the run failed: {reply.message}")
                elif now > deadline:
                    raise test.failure(f"did not answer within {timeout_s:g} s {what}")


def _same_path(_node: str, path: Path) -> str:
    """A file's path as a node on this machine sees it (a testbed without other hosts)."""
    return str(path)


def _decode(test: NodeProcess, line: str) -> Reply:
    try:
        return decode_reply(line)
    except UsageError as exc:
        raise test.failure(f"printed something other than a reply: {line[:200]!r}") from exc


def _read_records(path: Path) -> dict[str, Any]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeFailure(
            "test", f"reported its run done, but its records file {path} is unreadable: {exc}"
        ) from exc
    if not isinstance(records, dict):
        raise NodeFailure("test", f"its records file {path} does not hold a JSON object")
    return records
