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
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, cast

import models
import netem
from contract.errors import LocalExitError
from contract.results import Results, Run
from netem._proc import signals_deferred
from netem.cleanup import make_log_dir
from nodes.cli import NODE_ENV_DEFAULTS, env_defaults
from nodes.records import EXIT_DECISIONS

from . import busy
from . import results as results_mod
from ._pins import PIN_VARIABLES, USER_PINS
from .calibration import calibrate
from .config import NETNS_PORTS, LinkOptions, RunConfig, config_to_dict
from .environment import collect_environment
from .errors import ConfigError, NodeFailure, PortInUseError, UnshapedError
from .link_schedule import parse_schedule, scheduled, starting_point
from .placement import CGROUP, NodePlacement, Placement, place
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
    #: The cloud's CPUs: --cloud-cpuset (checked against the CPUs we may use) or the placement's.
    cloud_cpus: frozenset[int] | None = None
    placement: Placement | None = None  # None: every node may use every CPU (as --placement shared)
    schedule: netem.LinkSchedule | None = None  # --link-schedule/--cpu-schedule, applied during each run
    #: The checkpoint's model (name, class, spec, exits' feature shapes) and each node's device (name,
    #: memory), recorded in the results' config.
    model_info: dict[str, Any] = field(default_factory=dict)
    devices: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: --calibration's file, its sha256 and the thresholds and temperatures in force (results' config)
    calibration: dict[str, Any] | None = None

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

#: Isolations in which every node has addresses of its own, so fixed ports never meet the host's programs.
OWN_ADDRESSES = ("netns", "docker", "hosts")


def node_pid(tb: TestbedLike, node: NodeProcess) -> int:
    """The node's PID on this host, to sample and to check: its ``Popen``'s, or, for a testbed that
    starts nodes through a client (a container's), the one its ``node_pid`` gives."""
    pid_of = getattr(tb, "node_pid", None)
    return node.pid if pid_of is None else int(pid_of(node.popen))


def policy_argv(cfg: RunConfig) -> list[str]:
    """The edge's exit-policy options for ``cfg`` (none for a fixed exit: its command line as before)."""
    if cfg.exit_policy == "fixed":
        return []
    argv = ["--exit-policy", cfg.exit_policy]
    if cfg.latency_slo_ms is not None:
        argv += ["--latency-slo", repr(cfg.latency_slo_ms)]
    if cfg.profile is not None:
        argv += ["--profile", str(cfg.profile)]
    if cfg.exit_policy == "oracle" and cfg.link_schedule is not None:
        argv += ["--link-schedule", cfg.link_schedule]
    return argv


def model_argv(cfg: RunConfig, node: str) -> list[str]:
    """The model options of the ``edge`` or ``cloud`` node: the user's model spec and the node's device
    (none for the shipped models on the CPU: their command line as before)."""
    argv = ["--model-spec", cfg.model_spec] if cfg.model_spec is not None else []
    device = cfg.edge_device if node == "edge" else cfg.cloud_device
    return argv + (["--device", device] if device != "cpu" else [])


@dataclass(frozen=True)
class NodeCommands:
    """argv of the three node programs (``python -m nodes.…``); tests substitute other programs."""

    python: str = sys.executable

    def cloud(self, plan: Plan, host: str, port: int) -> list[str]:
        return [
            self.python, "-m", "nodes.cloud",
            "--listen", hostport(host, port),
            "--checkpoint", str(plan.checkpoint), "--exit", str(plan.node_exit),
            *model_argv(plan.config, "cloud"),
        ]  # fmt: skip

    def edge(
        self, plan: Plan, host: str, port: int, cloud: tuple[str, int], threads: int | None
    ) -> list[str]:
        argv = [
            self.python, "-m", "nodes.edge",
            "--listen", hostport(host, port), "--cloud", hostport(*cloud),
            "--checkpoint", str(plan.checkpoint), "--exit", str(plan.node_exit),
        ]  # fmt: skip
        if plan.config.calibration is not None:
            argv += ["--calibration", str(plan.config.calibration)]
        else:
            argv += ["--threshold", repr(plan.config.threshold)]
        if threads is not None:
            argv += ["--threads", str(threads)]
        return argv + policy_argv(plan.config) + model_argv(plan.config, "edge")

    def test(self, plan: Plan, edge: tuple[str, int], cloud: tuple[str, int], out: Path) -> list[str]:
        cfg = plan.config
        argv = [
            self.python, "-m", "nodes.test",
            "--edge", hostport(*edge), "--cloud", hostport(*cloud),
            "--dataset", cfg.dataset, "--samples", str(plan.samples),
            "--batch-size", str(cfg.batch_size), "--inflight", str(cfg.inflight),
            "--warmup-batches", str(cfg.warmup_batches), "--seed", str(cfg.seed),
            "--model", cfg.model, "--exit", str(plan.node_exit), "--threshold", repr(cfg.threshold),
            "--out", str(out),
        ]  # fmt: skip
        if cfg.data_dir is not None:
            argv += ["--data-dir", str(cfg.data_dir)]
        return argv


def hostport(host: str, port: int) -> str:
    """``host:port`` as the nodes' ``--listen``/``--edge``/``--cloud`` take it (IPv6 in brackets)."""
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
    usable = usable_cpus()
    if not cpus <= usable:
        raise ConfigError(
            f"--cloud-cpuset {cfg.cloud_cpuset} asks for CPUs this machine does not give us "
            f"(usable: {netem.format_cpuset(usable)})"
        )
    return cpus


def usable_cpus() -> frozenset[int]:
    """The CPUs this process may run on (its affinity, which a container or ``taskset`` narrows)."""
    return frozenset(os.sched_getaffinity(0))


def _place(
    requested: str,
    limits: netem.EdgeLimits | None,
    cloud_cpus: frozenset[int] | None,
    usable: frozenset[int],
) -> Placement:
    return place(
        usable,
        requested=requested,
        edge_cpuset=netem.parse_cpuset(limits.cpuset) if limits and limits.cpuset else None,
        edge_quota=limits.cpus if limits else None,
        edge_limit_threads=limits.threads() if limits else None,
        cloud_cpuset=cloud_cpus,
        environ={**os.environ, **USER_PINS},
    )


def plan_placement(
    cfg: RunConfig, limits: netem.EdgeLimits | None, cloud_cpus: frozenset[int] | None
) -> Placement:
    """The nodes' CPU sets and threads (``harness.placement``) for ``cfg`` on the CPUs we may use."""
    try:
        return _place(cfg.placement, limits, cloud_cpus, usable_cpus())
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def prepare(cfg: RunConfig, *, devices_here: bool = True) -> Plan:
    """Resolve and check the checkpoint, the dataset, the exit and the link before anything runs.

    ``devices_here``: the nodes run on this machine, so their devices are checked here (else, with
    ``--hosts``, the testbed checks each on the node's host and the plan's ``devices`` stay empty)."""
    edge_cloud = parse_link(cfg.edge_cloud, "edge–cloud")
    test_edge = parse_link(cfg.test_edge, "test–edge") if cfg.test_edge is not None else None
    limits = parse_limits(cfg)
    schedule = parse_schedule(cfg)
    edge_cloud, limits = starting_point(schedule, edge_cloud, limits)
    cloud_cpus = parse_cloud_cpus(cfg)
    placement = plan_placement(cfg, limits, cloud_cpus)
    from models.checkpoint import check_matches, default_checkpoint  # (imports torch)
    from models.devices import describe_device, resolve_device

    devices = {
        node: describe_device(resolve_device(device, option=f"--{node}-device"))
        for node, device in (("edge", cfg.edge_device), ("cloud", cfg.cloud_device))
        if devices_here
    }
    dataset = models.load_dataset(cfg.dataset, "test", cfg.data_dir)
    checkpoint = cfg.checkpoint or default_checkpoint(cfg.model, cfg.exit, cfg.dataset)
    model_info, meta = describe_model(checkpoint, cfg.model_spec)
    check_matches(meta, cfg.model, cfg.exit, cfg.dataset)
    cfg, calibration = resolve_calibration(cfg, meta)
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
        cloud_cpus=placement.cloud.affinity,
        placement=placement,
        schedule=schedule,
        model_info=model_info,
        devices=devices,
        calibration=calibration,
    )


def resolve_calibration(cfg: RunConfig, meta: Any) -> tuple[RunConfig, dict[str, Any] | None]:
    """``cfg`` with the threshold its ``--calibration`` file gives its exit, and what to record of the
    file; ``ConfigError`` before anything starts for a file made for another checkpoint (``meta``'s) or
    one without a threshold for an exit the edge may cut at."""
    if cfg.calibration is None:
        return cfg, None
    from nodes.thresholds import read_calibration

    exits = [cfg.exit or 0] if cfg.exit_policy == "fixed" else list(meta.config.local_exits)
    try:
        cuts = read_calibration(cfg.calibration, meta.sha256)
        cuts.check(exits)
    except ValueError as exc:
        raise ConfigError(f"--calibration: {exc}") from exc
    return cfg.replace(threshold=cuts.threshold(cfg.exit or 0)), cuts.describe(exits)


def describe_model(checkpoint: Path, spec: str | None) -> tuple[dict[str, Any], Any]:
    """Load ``checkpoint`` (checking that it splits at every exit) and describe its model for the
    results: name, class, spec (None: the paper's CNN) and feature bytes per sample at each cut."""
    from models.checkpoint import load_model
    from models.protocol import class_path, feature_shapes, model_name

    model, meta = load_model(checkpoint, spec)
    shapes = feature_shapes(model)
    info = {
        "name": model_name(model),
        "class": class_path(model),
        "spec": meta.spec,
        "parameters": sum(p.numel() for p in model.parameters()),
        # float32 features: what the edge–cloud link carries per unsure sample, by exit (0: the input)
        "feature_bytes": {str(k): 4 * math.prod(shape) for k, shape in shapes.items()},
    }
    final = meta.extra.get("final")
    if isinstance(final, dict) and isinstance(final.get("test_accuracy"), dict):
        # each exit's accuracy on the whole test split, as its training measured it (no early exiting)
        info["test_accuracy"] = dict(final["test_accuracy"])
    return info, meta


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
    if tb.isolation in OWN_ADDRESSES:
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


def node_env(
    tb: TestbedLike,
    node: str,
    cpus: frozenset[int] | None = None,
    *,
    placed: NodePlacement | None = None,
) -> dict[str, str]:
    """Environment of a node process: ours, plus the node's ``NODE_ENV_DEFAULTS`` unless the user set
    them (``nodes.cli.env_defaults``: the test node stays unbound), plus its thread count.

    The threads are ``placed``'s (``harness.placement``; left to the environment when they come from the
    user's ``OMP_NUM_THREADS``); without a placement, the edge's for its limits (what ``netem`` would
    set had we passed no environment) and the cloud's for its ``cpus`` (a thread per CPU)."""
    env = {**os.environ, **USER_PINS}
    for key, value in env_defaults(node).items():
        env.setdefault(key, value)
    if placed is not None:
        threads = None if placed.user_threads else placed.threads
    else:
        threads = tb.edge_threads() if node == "edge" else len(cpus) if node == "cloud" and cpus else None
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def placement_of(plan: Plan) -> Placement:
    """The plan's placement; a plan made without one places nothing beyond ``--cloud-cpuset``."""
    if plan.placement is not None:
        return plan.placement
    usable = usable_cpus() | (plan.cloud_cpus or frozenset())
    return _place("shared", plan.edge_limits, plan.cloud_cpus, usable)


@contextlib.contextmanager
def _started(
    tb: TestbedLike,
    name: str,
    argv: list[str],
    workdir: Path,
    *,
    pipe_stdout: bool,
    pipe_stdin: bool = False,
    placed: NodePlacement,
    node_type: type[NodeProcess] = NodeProcess,
) -> Iterator[NodeProcess]:
    """Start node ``name`` with its log file, its environment and ``placed``'s affinity; stopped on exit.
    ``pipe_stdin``: its stdin is a pipe (a serving test node's requests), else ``/dev/null``."""
    cpus = placed.affinity
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
                    stdin=subprocess.PIPE if pipe_stdin else subprocess.DEVNULL,
                    env=node_env(tb, name, placed=placed),
                    stdout=subprocess.PIPE if pipe_stdout else log_file,
                    stderr=log_file,
                    **({"cpus": cpus} if cpus is not None else {}),
                )
            except OSError as exc:
                raise NodeFailure(name, f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
            node = node_type(name, popen, log_path, log_file)
        yield node
    finally:
        if node is not None:
            node.stop()
        else:
            log_file.close()


def _check_cpus(node: NodeProcess, cpus: frozenset[int], pid: int | None = None) -> None:
    """Every thread of the node (``pid``: its PID where that is not its ``Popen``'s, see ``node_pid``)
    may run only on ``cpus`` (read back from the kernel: a CPU set is never reported that was not
    applied). Threads, not the process: with ``OMP_PROC_BIND`` libgomp narrows each thread to one CPU
    of the set, the main thread to the first."""
    pid = node.popen.pid if pid is None else pid
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


def _wait_test(
    tb: TestbedLike,
    test: NodeProcess,
    others: list[NodeProcess],
    timeout_s: float,
    schedule_check: Callable[[], None] | None = None,
) -> None:
    """Wait for the test node; when a process of the run dies first, raise for the one that died first.
    ``schedule_check`` raises when a change of the link schedule failed, which fails the run at once."""
    helper_pids = getattr(tb, "helper_pids", None)  # netem.Testbed: its delay lines and relays
    tb_check = getattr(tb, "check", None)  # netem.Testbed: raises HelperExited if one of them died

    def link_check() -> None:
        if tb_check is not None:  # (first: a dead delay line is the cause of a change it did not take)
            tb_check()
        if schedule_check is not None:
            schedule_check()

    wait_for_test(
        test,
        others,
        timeout_s,
        helper_pids=helper_pids() if helper_pids is not None else None,
        link_check=link_check,
    )


@dataclass(frozen=True)
class StartedNodes:
    """The three node processes of a run (or of a study's bed), started by :func:`start_nodes`."""

    test: NodeProcess
    edge: NodeProcess
    cloud: NodeProcess

    def by_name(self) -> dict[str, NodeProcess]:
        return {"test": self.test, "edge": self.edge, "cloud": self.cloud}


#: The test node's argv, given the addresses at which it reaches the edge and the cloud.
TestArgv = Callable[[tuple[str, int], tuple[str, int]], list[str]]


def start_nodes(
    plan: Plan,
    tb: TestbedLike,
    workdir: Path,
    stack: contextlib.ExitStack,
    *,
    commands: NodeCommands,
    test_argv: TestArgv,
    serving: type[NodeProcess] | None = None,
) -> StartedNodes:
    """Start the cloud, the edge and the test node of ``plan`` on ``tb`` (their logs in ``workdir``),
    each entered into ``stack``, which stops them in reverse order.

    The placement (``harness.placement``) is applied to all three: each node starts with its CPU set
    as its affinity, which is read back from the kernel once it runs (a set not in force fails the
    start), and with its thread count (its environment; the edge's also as ``--threads``). Returns once
    the cloud and the edge are ready and the test node is started. ``serving``: the process type of a
    test node that serves runs on its stdin (``harness.bed``), started with stdin and stdout piped;
    None: a test node that runs once, its output in its log.
    """
    cfg = plan.config
    placement = placement_of(plan)
    cloud_port, edge_port = choose_ports(cfg, tb)
    cloud = stack.enter_context(
        _started(
            tb,
            "cloud",
            commands.cloud(plan, tb.bind_address("cloud"), cloud_port),
            workdir,
            pipe_stdout=True,
            placed=placement.cloud,
        )
    )
    edge_to_cloud = tb.connect_address("edge", "cloud", cloud_port)
    edge_argv = commands.edge(plan, tb.bind_address("edge"), edge_port, edge_to_cloud, placement.edge.threads)
    # The edge retries connecting to the cloud until that listens, so both can start at once (saving
    # an interpreter start-up) when the edge reaches the cloud directly; a shaping relay in between
    # would accept the edge's connection and then drop it while the cloud is not up yet.
    direct = edge_to_cloud == (tb.bind_address("cloud"), cloud_port)
    if not direct:
        cloud.wait_ready(cfg.ready_timeout_s)
    edge = stack.enter_context(
        _started(tb, "edge", edge_argv, workdir, pipe_stdout=True, placed=placement.edge)
    )
    if direct:
        cloud.wait_ready(cfg.ready_timeout_s)
    edge.wait_ready(cfg.ready_timeout_s)
    for node, placed in ((cloud, placement.cloud), (edge, placement.edge)):
        if placed.affinity is not None:
            _check_cpus(node, placed.affinity, node_pid(tb, node))
    argv = test_argv(
        tb.connect_address("test", "edge", edge_port), tb.connect_address("test", "cloud", cloud_port)
    )
    test = stack.enter_context(
        _started(
            tb,
            "test",
            argv,
            workdir,
            pipe_stdout=serving is not None,
            pipe_stdin=serving is not None,
            placed=placement.test,
            node_type=serving or NodeProcess,
        )
    )
    if placement.test.affinity is not None:  # (at once: it may finish quickly, but stays until reaped)
        _check_cpus(test, placement.test.affinity, node_pid(tb, test))
    return StartedNodes(test=test, edge=edge, cloud=cloud)


def run_once(plan: Plan, tb: TestbedLike, index: int, ctx: RunContext, attempt: int = 0) -> Run:
    """One repeat (its ``attempt``-th try) with fresh node processes; the run holds its per-sample
    records (``Run.samples``) until the results are written."""
    cfg = plan.config
    rundir = ctx.workdir / (f"run-{index}" if attempt == 0 else f"run-{index}-retry-{attempt}")
    rundir.mkdir(parents=True, exist_ok=True)
    records_path = rundir / "records.json"
    calibration_ms = calibrate() if cfg.calibrate else None
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        nodes = start_nodes(
            plan,
            tb,
            rundir,
            stack,
            commands=ctx.commands,
            test_argv=lambda edge, cloud: ctx.commands.test(plan, edge, cloud, records_path),
        )
        schedule = stack.enter_context(scheduled(tb, plan.schedule))  # (time 0: the test node's start)
        # (started once every process of the run is up: it looks the process trees up only now and then)
        processes = (nodes.edge, nodes.cloud, nodes.test)
        pids = {node.name: node_pid(tb, node) for node in processes}
        others = [pid for node in processes if (pid := pids[node.name]) != node.pid]
        # (a testbed of several hosts samples the edge on its own host)
        make_sampler = getattr(tb, "resource_sampler", ResourceSampler)
        sampler = stack.enter_context(make_sampler(pids["edge"], others=others))
        _wait_test(tb, nodes.test, [nodes.edge, nodes.cloud], cfg.run_timeout_s, schedule.check)
    duration = time.monotonic() - started
    fetch = getattr(tb, "fetch_output", None)  # (a test node on another host wrote its records there)
    if fetch is not None:
        fetch("test", records_path)
    try:
        records = json.loads(records_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NodeFailure(
            "test", f"exited 0 but its records file {records_path} is unreadable: {exc}"
        ) from exc
    overall = records.get("overall", {}) if isinstance(records, dict) else {}
    window_of = getattr(sampler, "window_of", None)  # (samples on another host's clock: it finds the phase)
    first, last = int(overall.get("first_send_ns", 0)), int(overall.get("last_recv_ns", 0))
    idx, in_window = window_of(records) if window_of else sampler.window(first, last)
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
        host_other_percent=[sampler.host_other_percent[i] for i in idx],
        # (samples inside the measured phase, by the shared monotonic clock, exclude start-up and warm-up)
        in_window=in_window,
    )
    run = replace(run, link_schedule=schedule.record(overall))
    if isinstance(records, dict) and EXIT_DECISIONS in records:  # (the exit each batch was cut at, and why)
        run = replace(run, extra={**run.extra, EXIT_DECISIONS: records[EXIT_DECISIONS]})
    check_run_clocks(run, records_path, strict=cfg.strict_clocks)
    return run


def check_run_clocks(run: Run, records_path: Path, *, strict: bool) -> None:
    """Warn about a run whose clock corrections the test node does not trust; with ``--strict-clocks``
    fail it. That is a failed measurement, not a mistake of the user: a ``NodeFailure`` of the node that
    measured it (exit code 1; a study records the run as failed and goes on), with the node logs and
    records kept."""
    warnings = run.clock_warnings
    for warning in warnings:
        logger.warning("run %d: clocks: %s", run.index, warning)
    if strict and warnings:
        raise NodeFailure(
            "test",
            "the clock offsets it measured are not known well enough for the procedure times "
            f"(--strict-clocks): {'; '.join(warnings)} (records: {records_path})",
        )


def results_config(plan: Plan, tb: TestbedLike, runs: Sequence[Run]) -> dict[str, Any]:
    """The ``config`` block of the results file."""
    cfg = plan.config
    applied = {"edge_cloud": {}, "test_edge": {}, **{k: dict(v) for k, v in tb.applied.items()}}
    limits = plan.edge_limits
    mechanism = getattr(tb, "edge_limits_mechanism", None)
    placement = placement_of(plan)
    node_envs = {}
    for node in ("edge", "cloud", "test"):
        env = node_env(tb, node, placed=placement.node(node))
        node_envs[node] = {key: env[key] for key in (*NODE_ENV_DEFAULTS, *PIN_VARIABLES) if key in env}
    placed = placement.describe()
    if placement.edge.mechanism == CGROUP and not mechanism:  # (--edge-cpuset, not applied here)
        placed["nodes"]["edge"]["mechanism"] = "not applied"
    return {
        "model": cfg.model,
        "name": cfg.name,
        "exit": cfg.exit,
        "threshold": cfg.threshold,
        "batch_size": cfg.batch_size,
        "dataset": cfg.dataset,
        "data_dir": str(cfg.data_dir) if cfg.data_dir else None,
        "samples": runs[0].summary.samples,
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
        # the containers' runtime, image id and the edge's limits as read inside (a container testbed)
        **({"container": dict(c)} if (c := getattr(tb, "container", None)) else {}),
        # where each node ran, each host's environment and how its end of the link was shaped (--hosts)
        **({"hosts": dict(h)} if (h := getattr(tb, "hosts_record", None)) else {}),
        "node_env": node_envs,
        "placement": placed,
        "max_other_cpu_percent": cfg.max_other_cpu,
        "link_schedule": plan.schedule.to_json() if plan.schedule is not None else None,
        "busy_retries": cfg.busy_retries,
        # the model the checkpoint holds (its spec: None for the paper's CNN) and where each node ran it
        **({"model_info": dict(plan.model_info)} if plan.model_info else {}),
        **({"devices": {k: dict(v) for k, v in plan.devices.items()}} if plan.devices else {}),
        # --calibration: the file, its sha256 and each exit's threshold and temperature in force
        **({"calibration": dict(plan.calibration)} if plan.calibration is not None else {}),
        "request": config_to_dict(cfg),
    }


def run_until_quiet(
    plan: Plan, tb: TestbedLike, index: int, ctx: RunContext, notify: Callable[[str], None] | None = None
) -> tuple[Run, list[Run]]:
    """Run ``index`` again while other programs used more CPU than ``--max-other-cpu`` during it, up to
    ``--busy-retries`` times (``harness.busy``); returns the kept run and the discarded attempts."""
    cfg = plan.config
    return busy.rerun_while_busy(
        lambda attempt: run_once(plan, tb, index, ctx, attempt),
        limit=cfg.max_other_cpu,
        retries=cfg.busy_retries,
        where=f"run {index + 1}/{cfg.repeat}",
        notify=notify,
    )


def new_prefix() -> str:
    """Per-run prefix carried by every namespace, link, qdisc and cgroup: ``lx`` + 6 hex digits."""
    return "lx" + secrets.token_hex(3)


def testbed_config(plan: Plan, log_dir: Path, *, scheduled: bool = True) -> netem.TestbedConfig:
    """The testbed of ``plan`` under a fresh prefix; ``log_dir`` takes the delay lines' and relays'
    logs (kept with the nodes' after a failed run); ``scheduled``: with the plan's link schedule."""
    return netem.TestbedConfig(
        prefix=new_prefix(),
        edge_cloud=plan.edge_cloud,
        test_edge=plan.test_edge,
        edge_limits=plan.edge_limits,
        tcp_congestion_control=plan.config.tcp_cc,
        log_dir=log_dir,
        schedule=plan.schedule if scheduled else None,
    )


def run_experiment(
    cfg: RunConfig,
    *,
    testbed_factory: TestbedFactory | None = None,
    commands: NodeCommands | None = None,
    workdir: Path | None = None,
    notify: Callable[[str], None] | None = None,
    on_run: Callable[[Run], None] | None = None,
) -> Results:
    """Run ``cfg.repeat`` runs and return their results (validated, not yet written).

    ``notify`` receives notices meant for the user (isolation fallback, what is not applied).
    Logs of the nodes go to ``workdir`` (a temporary directory by default, removed after a complete or
    interrupted run and kept, with its path in the error, after a failed one).
    """
    factory = testbed_factory or netem.make_testbed
    # (--hosts: the nodes' devices are their hosts', asked once the hosts are checked)
    devices_here = not getattr(factory, "resolves_devices", False)
    plan = prepare(cfg, devices_here=devices_here)
    environment = collect_environment()
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
        tb_config = testbed_config(plan, work)
        runs: list[Run] = []
        discarded: list[Run] = []
        with factory(tb_config, isolation=cfg.isolation) as tb:
            if not devices_here:
                requested = {"edge": cfg.edge_device, "cloud": cfg.cloud_device}
                # (a testbed that resolves devices is a HostsTestbed, which TestbedLike does not name)
                plan = replace(plan, devices=cast(Any, tb).resolve_devices(requested))
            for notice in check_applied(cfg, tb):
                if notify:
                    notify(notice)
            if tb.isolation not in OWN_ADDRESSES and notify and not tb.not_applied:
                notify(f"isolation={tb.isolation}: nodes share the host's network stack")
            for index in range(cfg.repeat):
                run, thrown = run_until_quiet(plan, tb, index, ctx, notify)
                runs.append(run)
                discarded += thrown
                if on_run:
                    on_run(run)
            config = results_config(plan, tb, runs)
        results = results_mod.build_results(config, environment, runs, discarded)
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
