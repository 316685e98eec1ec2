"""Orchestration of one experiment: preflight checks, testbed, the three nodes, repeats, results.

``run_experiment`` is the whole of ``python -m harness``: it checks every input before anything starts
(checkpoint, dataset, exit, link units, ports), builds the testbed (``netem``), and for each repeat starts
fresh cloud and edge processes, waits for READY, runs the test node (which does the warm-up batches and
writes the records file), samples the edge with psutil meanwhile, and stops everything in ``finally``.
It returns the results object; writing it is the caller's job, so nothing is written for an incomplete run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import models
import netem
from models.errors import LocalExitError
from netem._proc import signals_deferred
from netem.cleanup import make_log_dir

from . import results as results_mod
from ._pins import PIN_VARIABLES, USER_PINS
from .calibration import calibrate
from .config import NETNS_PORTS, LinkOptions, RunConfig, config_to_dict
from .environment import collect_environment
from .errors import ConfigError, NodeFailure, PortInUseError, UnshapedError
from .processes import NodeProcess, ResourceSampler, wait_for_test

logger = logging.getLogger(__name__)

LINK_PARAMS = ("rate", "delay", "jitter", "loss")


@dataclass(frozen=True)
class Plan:
    """A ``RunConfig`` with its inputs resolved and checked: the checkpoint file and the sample count."""

    config: RunConfig
    checkpoint: Path
    checkpoint_sha256: str
    dataset_size: int
    samples: int
    edge_cloud: netem.LinkSpec
    test_edge: netem.LinkSpec | None
    edge_limits: netem.EdgeLimits | None
    cloud_cpus: frozenset[int] | None = None  # --cloud-cpuset, checked against the CPUs we may use

    @property
    def node_exit(self) -> int:
        """The exit index the nodes get: 0 for the standard model (every layer in the cloud)."""
        return self.config.exit if self.config.exit is not None else 0


class TestbedLike(Protocol):
    """What the harness uses of ``netem.Testbed`` (tests pass fakes)."""

    isolation: str
    applied: dict[str, dict[str, str]]
    not_applied: list[str]

    def bind_address(self, node: str) -> str: ...
    def connect_address(self, src: str, dst: str, port: int) -> tuple[str, int]: ...
    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]: ...
    def edge_threads(self) -> int | None: ...
    def __enter__(self) -> TestbedLike: ...
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Any: ...


TestbedFactory = Callable[..., TestbedLike]


@dataclass(frozen=True)
class NodeCommands:
    """argv of the three node programs (``python -m nodes.…``); tests substitute other programs."""

    python: str = sys.executable

    def cloud(self, plan: Plan, host: str, port: int) -> list[str]:
        return [
            self.python, "-m", "nodes.cloud",
            "--listen", _hostport(host, port),
            "--checkpoint", str(plan.checkpoint), "--exit", str(plan.node_exit),
        ]  # fmt: skip

    def edge(
        self, plan: Plan, host: str, port: int, cloud: tuple[str, int], threads: int | None
    ) -> list[str]:
        argv = [
            self.python, "-m", "nodes.edge",
            "--listen", _hostport(host, port), "--cloud", _hostport(*cloud),
            "--checkpoint", str(plan.checkpoint), "--exit", str(plan.node_exit),
            "--threshold", repr(plan.config.threshold),
        ]  # fmt: skip
        if threads is not None:
            argv += ["--threads", str(threads)]
        return argv

    def test(self, plan: Plan, edge: tuple[str, int], cloud: tuple[str, int], out: Path) -> list[str]:
        cfg = plan.config
        argv = [
            self.python, "-m", "nodes.test",
            "--edge", _hostport(*edge), "--cloud", _hostport(*cloud),
            "--dataset", cfg.dataset, "--samples", str(plan.samples),
            "--batch-size", str(cfg.batch_size), "--inflight", str(cfg.inflight),
            "--warmup-batches", str(cfg.warmup_batches), "--seed", str(cfg.seed),
            "--model", cfg.model, "--exit", str(plan.node_exit), "--threshold", repr(cfg.threshold),
            "--out", str(out),
        ]  # fmt: skip
        if cfg.data_dir is not None:
            argv += ["--data-dir", str(cfg.data_dir)]
        return argv


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --------------------------------------------------------------------------------------------------
# Preflight: every check that can fail before anything is started.


def parse_link(options: LinkOptions, which: str) -> netem.LinkSpec:
    """``netem.LinkSpec`` of one link, with bad units reported against the option that carried them."""
    try:
        return netem.LinkSpec.parse(
            rate=options.rate, delay=options.delay, jitter=options.jitter, loss=options.loss
        )
    except (ValueError, LocalExitError) as exc:
        opts = {"rate": "--bw", "delay": "--delay", "jitter": "--jitter", "loss": "--loss"}
        given = ", ".join(f"{opts[k]} {v}" for k, v in options.requested().items())
        raise ConfigError(
            f"bad {which} link setting ({given}): {exc}. Units follow tc: rates like 10mbit, 500kbit, "
            "1gbit (mbps would mean megabytes/s); times like 20ms, 1s, 500us; loss like 0.5%"
        ) from exc


def parse_limits(cfg: RunConfig) -> netem.EdgeLimits | None:
    if cfg.edge_cpus is None and cfg.edge_cpuset is None and cfg.edge_mem is None:
        return None
    try:
        return netem.EdgeLimits.parse(cpus=cfg.edge_cpus, cpuset=cfg.edge_cpuset, memory=cfg.edge_mem)
    except (ValueError, LocalExitError) as exc:
        raise ConfigError(f"bad edge limit (--edge-cpus/--edge-cpuset/--edge-mem): {exc}") from exc


def parse_cloud_cpus(cfg: RunConfig) -> frozenset[int] | None:
    """The cloud's CPUs (``--cloud-cpuset``), which must be CPUs this process may run on."""
    if cfg.cloud_cpuset is None:
        return None
    try:
        cpus = frozenset(netem.parse_cpuset(cfg.cloud_cpuset))
    except (ValueError, LocalExitError) as exc:
        raise ConfigError(f"bad --cloud-cpuset: {exc}") from exc
    usable = os.sched_getaffinity(0)
    if not cpus <= usable:
        raise ConfigError(
            f"--cloud-cpuset {cfg.cloud_cpuset} asks for CPUs this machine does not give us "
            f"(usable: {netem.format_cpuset(usable)})"
        )
    return cpus


def prepare(cfg: RunConfig) -> Plan:
    """Resolve and check the checkpoint, the dataset, the exit and the link before anything runs."""
    edge_cloud = parse_link(cfg.edge_cloud, "edge–cloud")
    test_edge = parse_link(cfg.test_edge, "test–edge") if cfg.test_edge is not None else None
    limits = parse_limits(cfg)
    cloud_cpus = parse_cloud_cpus(cfg)
    dataset = models.load_dataset(cfg.dataset, "test", cfg.data_dir)
    checkpoint = cfg.checkpoint or models.default_checkpoint(cfg.model, cfg.exit, cfg.dataset)
    _model, meta = models.load_checkpoint(checkpoint)
    models.check_matches(meta, cfg.model, cfg.exit, cfg.dataset)
    size = len(dataset)
    if cfg.samples is not None and cfg.samples > size:
        raise ConfigError(f"--samples {cfg.samples} is more than the {size} test images of {cfg.dataset}")
    samples = cfg.samples or size
    return Plan(
        config=cfg,
        checkpoint=Path(checkpoint).resolve(),
        checkpoint_sha256=meta.sha256,
        dataset_size=size,
        samples=samples,
        edge_cloud=edge_cloud,
        test_edge=test_edge,
        edge_limits=limits,
        cloud_cpus=cloud_cpus,
    )


def requested_params(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """What the user asked the testbed to apply: link → parameter → value."""
    req: dict[str, dict[str, str]] = {"edge_cloud": cfg.edge_cloud.requested()}
    if cfg.test_edge is not None:
        req["test_edge"] = cfg.test_edge.requested()
    limits = {"cpus": cfg.edge_cpus, "cpuset": cfg.edge_cpuset, "memory": cfg.edge_mem}
    req["edge_limits"] = {k: v for k, v in limits.items() if v is not None}
    return req


def check_applied(cfg: RunConfig, tb: TestbedLike) -> list[str]:
    """Refuse (``UnshapedError``) when something requested is not applied, unless ``allow_unshaped``.

    Returns the notices to print (what is not applied, when the user allowed it).
    """
    missing = list(tb.not_applied)
    if not missing:
        return []
    not_root = hasattr(os, "geteuid") and os.geteuid() != 0
    what = "; ".join(missing)
    if cfg.allow_unshaped:
        return [f"running with isolation={tb.isolation}; NOT applied: {what}"]
    reason = (
        "not running as root, so the testbed falls back to loopback isolation: the three nodes run as "
        "plain processes talking over 127.0.0.1, without network namespaces, tc or cgroups, and "
        if not_root
        else f"the {tb.isolation} testbed on this machine cannot apply everything asked for: "
    )
    raise UnshapedError(
        f"{reason}these requested settings would not be applied: {what}. Run as root (e.g. with sudo) "
        "for the namespaced, shaped testbed, or pass --allow-unshaped to run anyway (the results file "
        "records what was not applied)"
    )


def _check_port_free(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option as asyncio's start_server, so TIME_WAIT leftovers do not count as "in use".
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    f"port {port} on {host} is already in use by another program; stop it, choose other "
                    "ports with --ports CLOUD,EDGE, or leave --ports out so the harness picks free ones"
                ) from exc
            raise ConfigError(f"cannot use port {port} on {host}: {exc.strerror}") from exc


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def choose_ports(cfg: RunConfig, tb: TestbedLike) -> tuple[int, int]:
    """(cloud, edge) listening ports: fixed in namespaces (own addresses), checked or free on loopback."""
    if tb.isolation == "netns":
        return cfg.ports or NETNS_PORTS
    if cfg.ports is not None:
        _check_port_free(tb.bind_address("cloud"), cfg.ports[0])
        _check_port_free(tb.bind_address("edge"), cfg.ports[1])
        return cfg.ports
    cloud = _free_port(tb.bind_address("cloud"))
    edge = _free_port(tb.bind_address("edge"))
    while edge == cloud:
        edge = _free_port(tb.bind_address("edge"))
    return cloud, edge


# --------------------------------------------------------------------------------------------------
# Running.


@dataclass
class RunContext:
    """Per-invocation state: where logs go and how nodes are started."""

    workdir: Path
    commands: NodeCommands = field(default_factory=NodeCommands)


#: Settings of the node processes (each applied unless the user's environment has it), measured with
#: bench/bench_harness.py on a 2-core VM (2026-11-27):
#:
#: - ``GLIBC_TUNABLES``: glibc returns freed memory above its trim threshold to the kernel and serves
#:   large blocks by mmap; every batch's activations (MiBs) then came back as fresh pages, so a third of
#:   the edge's time went to page faults and zeroing (perf: exc_page_fault, clear_page) and it computed a
#:   batch in 8.9 ms instead of 5.8 ms single-threaded. A fixed 32 MiB mmap threshold and a 256 MiB trim
#:   threshold keep that memory in the process. (Other C libraries ignore the variable.)
#: - ``GOMP_SPINCOUNT``: an idle OpenMP worker spins this many rounds before it sleeps. libgomp's default
#:   (300 000, or forever with OMP_WAIT_POLICY=ACTIVE) kept the idle nodes' threads spinning on the two
#:   cores the computing node needed (a run was 3-16x slower); OMP_WAIT_POLICY=PASSIVE, which sleeps at
#:   once, made every parallel region wake its threads again, and two threads computed slower than one.
#:   30 000 rounds (tens of microseconds) keep the threads awake through one batch's back-to-back
#:   layers and let them sleep between batches: overall latency 0.18 ms/sample unshaped, against 0.43
#:   with PASSIVE and 0.25 at 3 000 or 100 000 rounds.
#: - ``OMP_PROC_BIND``: each OpenMP thread of a node stays on a CPU of its own (thread i on the i-th CPU
#:   the process may use). Unbound, the scheduler at times put both threads of the computing node on one
#:   CPU -- next to another node's thread that had just woken -- and every layer then waited for the
#:   thread that got no CPU: the cloud's compute of a few samples took 2.8 ms on median over a run
#:   instead of 1.8. Three interleaved comparisons (4-8 runs each, unshaped) gave 0.320 -> 0.283, 0.312
#:   -> 0.260 and 0.321 -> 0.260 ms/sample (0.268 with the test node unbound, as now). libgomp pins the
#:   process's main thread when torch is imported, and child processes inherit that pin, so this is set
#:   for the edge and the cloud only, never for the harness's own process (whose children the nodes
#:   are); the bound CPUs are those the process may use, so ``--edge-cpuset`` still holds. The edge's
#:   and the cloud's main threads -- their event loops -- are then on the same CPU and the OpenMP
#:   workers on the others; giving the cloud the places in reverse order (main threads on different
#:   CPUs) made the hops slower (procedure 3-2 0.84 ms against 0.56) and lost most of the gain (0.286
#:   ms/sample): a wake-up on the CPU the waker runs on is cheap here, one on another (halted) vCPU is
#:   not.
NODE_ENV_DEFAULTS = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456",
    "GOMP_SPINCOUNT": "30000",
    "OMP_PROC_BIND": "true",
}


def node_env(tb: TestbedLike, node: str, cpus: frozenset[int] | None = None) -> dict[str, str]:
    """Environment of a node process: ours, plus ``NODE_ENV_DEFAULTS`` unless the user set them, plus
    the edge's thread count under a CPU limit (what ``netem`` would set had we passed no environment),
    or the cloud's for its ``cpus`` (``--cloud-cpuset``: a thread per CPU).

    The test node computes nothing, so it is not bound to CPUs (see ``OMP_PROC_BIND`` above): libgomp
    pins a bound process's main thread as torch loads, and three start-ups then queued on one CPU (a
    run took about 1.3 s longer to start; with the two computing nodes bound, about 0.4 s)."""
    env = {**os.environ, **USER_PINS}
    for key, value in NODE_ENV_DEFAULTS.items():
        if node == "test" and key == "OMP_PROC_BIND" and key not in env:
            continue
        env.setdefault(key, value)
    threads = tb.edge_threads() if node == "edge" else len(cpus) if node == "cloud" and cpus else None
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


@contextlib.contextmanager
def _started(
    tb: TestbedLike,
    name: str,
    argv: list[str],
    workdir: Path,
    *,
    pipe_stdout: bool,
    cpus: frozenset[int] | None = None,
) -> Iterator[NodeProcess]:
    log_path = workdir / f"{name}.log"
    log_file = open(log_path, "ab")  # noqa: SIM115 -- NodeProcess.stop closes it
    logger.info("starting %s node: %s", name, " ".join(argv))
    node: NodeProcess | None = None
    try:
        # A Ctrl-C during the start unwinds only once the node is in hand, so the `finally` stops it.
        with signals_deferred():
            try:
                popen = tb.popen(
                    name,
                    argv,
                    stdin=subprocess.DEVNULL,
                    env=node_env(tb, name, cpus),
                    stdout=subprocess.PIPE if pipe_stdout else log_file,
                    stderr=log_file,
                    **({"cpus": cpus} if cpus is not None else {}),
                )
            except OSError as exc:
                raise NodeFailure(name, f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
            node = NodeProcess(name, popen, log_path, log_file)
        yield node
    finally:
        if node is not None:
            node.stop()
        else:
            log_file.close()


def _check_cpus(node: NodeProcess, cpus: frozenset[int]) -> None:
    """Every thread of the node may run only on ``cpus`` (read back from the kernel: a CPU set is never
    reported that was not applied). Threads, not the process: with ``OMP_PROC_BIND`` libgomp narrows
    each thread to one CPU of the set, the main thread to the first."""
    pid = node.popen.pid
    try:
        actual: set[int] = set()
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):  # (a thread that ended)
                actual |= os.sched_getaffinity(int(tid))
    except OSError as exc:
        raise node.failure(f"cannot read its CPU affinity: {exc.strerror or exc}") from exc
    if not actual or not actual <= cpus:
        raise node.failure(
            f"runs on CPUs {netem.format_cpuset(actual) or 'unknown'}, not within the CPU set {netem.format_cpuset(cpus)} asked for"
        )


def _wait_test(tb: TestbedLike, test: NodeProcess, others: list[NodeProcess], timeout_s: float) -> None:
    """Wait for the test node; when a process of the run dies first, raise for the one that died first."""
    helper_pids = getattr(tb, "helper_pids", None)  # netem.Testbed: its delay lines and relays
    wait_for_test(
        test,
        others,
        timeout_s,
        helper_pids=helper_pids() if helper_pids is not None else None,
        link_check=getattr(tb, "check", None),  # netem.Testbed: raises HelperExited if one of them died
    )


def run_once(plan: Plan, tb: TestbedLike, index: int, ctx: RunContext) -> dict[str, Any]:
    """One repeat with fresh node processes; returns the ``runs[]`` entry."""
    cfg = plan.config
    rundir = ctx.workdir / f"run-{index}"
    rundir.mkdir(parents=True, exist_ok=True)
    records_path = rundir / "records.json"
    calibration_ms = calibrate() if cfg.calibrate else None
    cloud_port, edge_port = choose_ports(cfg, tb)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cloud = stack.enter_context(
            _started(
                tb,
                "cloud",
                ctx.commands.cloud(plan, tb.bind_address("cloud"), cloud_port),
                rundir,
                pipe_stdout=True,
                cpus=plan.cloud_cpus,
            )
        )
        edge_to_cloud = tb.connect_address("edge", "cloud", cloud_port)
        edge_argv = ctx.commands.edge(
            plan, tb.bind_address("edge"), edge_port, edge_to_cloud, tb.edge_threads()
        )
        # The edge retries connecting to the cloud until that listens, so both can start at once (saving
        # an interpreter start-up) when the edge reaches the cloud directly; a shaping relay in between
        # would accept the edge's connection and then drop it while the cloud is not up yet.
        direct = edge_to_cloud == (tb.bind_address("cloud"), cloud_port)
        if not direct:
            cloud.wait_ready(cfg.ready_timeout_s)
        edge = stack.enter_context(_started(tb, "edge", edge_argv, rundir, pipe_stdout=True))
        if direct:
            cloud.wait_ready(cfg.ready_timeout_s)
        edge.wait_ready(cfg.ready_timeout_s)
        if plan.cloud_cpus is not None:
            _check_cpus(cloud, plan.cloud_cpus)
        test_argv = ctx.commands.test(
            plan,
            tb.connect_address("test", "edge", edge_port),
            tb.connect_address("test", "cloud", cloud_port),
            records_path,
        )
        test = stack.enter_context(_started(tb, "test", test_argv, rundir, pipe_stdout=False))
        # (started once every process of the run is up: it looks the process trees up only now and then)
        sampler = stack.enter_context(ResourceSampler(edge.pid))
        _wait_test(tb, test, [edge, cloud], cfg.run_timeout_s)
    duration = time.monotonic() - started
    try:
        records = json.loads(records_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeFailure(
            "test", f"exited 0 but its records file {records_path} is unreadable: {exc}"
        ) from exc
    overall = records.get("overall", {}) if isinstance(records, dict) else {}
    idx, in_window = sampler.window(int(overall.get("first_send_ns", 0)), int(overall.get("last_recv_ns", 0)))
    if cfg.calibrate:
        # Best of before and after: the calibration is the machine's speed, not its momentary load.
        after = calibrate()
        calibration_ms = min(after, calibration_ms) if calibration_ms is not None else after
    run = results_mod.build_run(
        index,
        records,
        cpu_percent=[sampler.cpu_percent[i] for i in idx],
        rss_mib=[sampler.rss_mib[i] for i in idx],
        duration_s=duration,
        calibration_ms=calibration_ms,
    )
    # Samples inside the measured phase (by the shared monotonic clock) exclude start-up and warm-up.
    run["edge_resources_window"] = "measured-phase" if in_window else "whole-run"
    run["host_other_cpu_percent"] = results_mod.resource_summary([sampler.host_other_percent[i] for i in idx])
    return run


def results_config(plan: Plan, tb: TestbedLike, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``config`` block of the results file."""
    cfg = plan.config
    applied = {"edge_cloud": {}, "test_edge": {}, **{k: dict(v) for k, v in tb.applied.items()}}
    limits = plan.edge_limits
    mechanism = getattr(tb, "edge_limits_mechanism", None)
    node_envs = {}
    for node in ("edge", "cloud", "test"):
        env = node_env(tb, node, plan.cloud_cpus)
        node_envs[node] = {key: env[key] for key in (*NODE_ENV_DEFAULTS, *PIN_VARIABLES) if key in env}
    return {
        "model": cfg.model,
        "name": cfg.name,
        "exit": cfg.exit,
        "threshold": cfg.threshold,
        "batch_size": cfg.batch_size,
        "dataset": cfg.dataset,
        "data_dir": str(cfg.data_dir) if cfg.data_dir else None,
        "samples": runs[0]["summary"]["samples"],
        "samples_requested": plan.samples,
        "warmup_batches": cfg.warmup_batches,
        "inflight": cfg.inflight,
        "repeat": cfg.repeat,
        "seed": cfg.seed,
        "checkpoint": str(plan.checkpoint),
        "checkpoint_sha256": plan.checkpoint_sha256,
        "links": {
            "edge_cloud": plan.edge_cloud.describe(),
            "test_edge": plan.test_edge.describe() if plan.test_edge is not None else None,
        },
        "link_requested": requested_params(cfg),
        "link_backend": applied,
        "not_applied": list(tb.not_applied),
        "edge_limits": {
            **(limits.describe() if limits else {"cpus": None, "cpuset": None, "memory": None}),
            "mechanism": mechanism if limits else None,
        },
        "cloud_cpuset": (
            None
            if plan.cloud_cpus is None
            else {"cpuset": netem.format_cpuset(plan.cloud_cpus), "mechanism": "sched_setaffinity"}
        ),
        # what the nodes' TCP connections used (a fake testbed may not say)
        "tcp_congestion_control": dict(getattr(tb, "tcp_congestion_control", None) or {}) or None,
        "isolation": tb.isolation,
        "node_env": node_envs,
        "request": config_to_dict(cfg),
    }


def new_prefix() -> str:
    """Per-run prefix carried by every namespace, link, qdisc and cgroup: ``lx`` + 6 hex digits."""
    return "lx" + secrets.token_hex(3)


def run_experiment(
    cfg: RunConfig,
    *,
    testbed_factory: TestbedFactory | None = None,
    commands: NodeCommands | None = None,
    workdir: Path | None = None,
    notify: Callable[[str], None] | None = None,
    on_run: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``cfg.repeat`` runs and return the validated results object (not yet written).

    ``notify`` receives notices meant for the user (isolation fallback, what is not applied).
    Logs of the nodes go to ``workdir`` (a temporary directory by default, removed after a complete or
    interrupted run and kept, with its path in the error, after a failed one).
    """
    plan = prepare(cfg)
    environment = collect_environment()
    factory = testbed_factory or netem.make_testbed
    own_workdir = workdir is None
    work = workdir
    ok = interrupted = False
    try:
        if work is None:
            # (marked with our PID, so that `harness clean` can tell a killed run's logs from a running
            # one's; made with Ctrl-C held, so that it never exists without the `finally` that removes it)
            with signals_deferred():
                work = make_log_dir()
        work.mkdir(parents=True, exist_ok=True)
        ctx = RunContext(workdir=work, commands=commands or NodeCommands())
        tb_config = netem.TestbedConfig(
            prefix=new_prefix(),
            edge_cloud=plan.edge_cloud,
            test_edge=plan.test_edge,
            edge_limits=plan.edge_limits,
            tcp_congestion_control=cfg.tcp_cc,
            log_dir=work,  # the delay lines' and relays' logs, kept with the nodes' after a failed run
        )
        runs: list[dict[str, Any]] = []
        with factory(tb_config, isolation=cfg.isolation) as tb:
            for notice in check_applied(cfg, tb):
                if notify:
                    notify(notice)
            if tb.isolation != "netns" and notify and not tb.not_applied:
                notify(f"isolation={tb.isolation}: nodes share the host's network stack")
            for index in range(cfg.repeat):
                run = run_once(plan, tb, index, ctx)
                runs.append(run)
                if on_run:
                    on_run(run)
            config = results_config(plan, tb, runs)
        results = results_mod.build_results(config, environment, runs)
        ok = True
        return results
    except KeyboardInterrupt:
        interrupted = True  # (stopped by the user: the run's logs go with the rest of it)
        raise
    finally:
        if own_workdir and work is not None:
            if ok or interrupted or not any(work.rglob("*.log")):
                shutil.rmtree(work, ignore_errors=True)
            else:
                logger.warning("node logs kept in %s", work)
