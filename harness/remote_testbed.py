"""The hosts testbed: the test, edge and cloud nodes on the machines a hosts file names.

A third implementation of the harness's testbed interface (``harness.runner.TestbedLike``), beside the
namespaces and the containers (``netem``). Bringing it up checks every host before anything is started
-- reachable over ssh, the project there, the same version as ours -- and records each host's
environment; an unusable host is one ``HostsError`` (exit code 2) and nothing is left anywhere. Then on
each host it makes the run's folder (the nodes' token in it, mode 600) and, where the harness is root
there, shapes that host's egress towards the other end of the edge–cloud link with tc (only the traffic
to that address: ``harness.remote_node.shaping_argvs``); without root the link is the real one and the
results say so.

Every node runs under ``python -m harness.remote_node run`` on its host (over ssh, or directly for a
``local`` node): in a process group of its own, recorded in a pid file, with the token from the run's
folder and the node's TLS files from the hosts file. The ``Popen`` the harness gets stands for the node:
its stdout (the READY line) and stderr (the log) and its exit status come through ssh. Stopping it
(``terminate``/``kill``) signals the node's process group on its host. Teardown (``close``, in
``finally``) stops every node and removes the qdiscs and the run folders on every host, in reverse
order; ``harness clean --hosts FILE`` does the same for runs killed before they could.

The edge's CPU and memory are sampled on the edge's host (``harness.remote_sampler``), on that host's
clock: the measured phase is found with the edge's clock offset that the test node measured.

A node on another host writes the files the harness reads -- the test node's records: arguments under
the run's log folder (``TestbedConfig.log_dir``), or a serving test node's ``out`` -- into the run's
folder on its host (:meth:`HostsTestbed.output_path`); :meth:`HostsTestbed.fetch_output` copies one
back over ssh into its place here (atomically) and removes it there, and the run folder's removal at
teardown takes whatever a failed run left.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import json
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import netem
from contract.atomic import atomic_open
from netem._proc import signals_deferred
from netem.cleanup import register_owner, unregister_owner
from netem.docker import NODE_ENV_NAMES, NODE_ENV_PREFIXES
from nodes.cli import TOKEN_ENV

from .environment import collect_environment
from .errors import NodeFailure
from .hosts import HostsError, HostsFile, NodeHost, load_hosts, ssh_argv

logger = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: Seconds a command the harness runs on a host (check, prepare, shape, signal, stop) may take.
COMMAND_TIMEOUT_S = 60.0
#: Seconds fetching one output file (a run's records: MiBs) may take over a slow link.
FETCH_TIMEOUT_S = 300.0
#: A node's output files in the run folder on its host: ``out-<n>-<name>`` (never a pid or token file).
OUTPUT_PREFIX = "out-"
#: How long reading the edge's samples of a phase waits for one taken after it (samples come every
#: 0.1 s, then over ssh).
SAMPLES_WAIT_S = 3.0
LINK = "edge_cloud"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def remote_env(env: Mapping[str, str] | None, host_env: Mapping[str, str]) -> list[str]:
    """``NAME=VALUE`` of ``env`` (a node's environment as the harness built it) to set on another host:
    the variables that shape a node's computation (as for a container: ``netem.docker``) that the user
    set, never this machine's paths or the thread counts the harness computed for this machine's CPUs.
    The token travels in a file of the run's folder instead, off every command line."""
    if env is None:
        return []
    out = []
    for key, value in sorted(env.items()):
        users = host_env.get(key) == value
        if users and (key.startswith(NODE_ENV_PREFIXES) or key in NODE_ENV_NAMES) and key != TOKEN_ENV:
            out.append(f"{key}={value}")
    return out


def map_path(arg: str, project: str | None) -> str:
    """``arg`` with this checkout's folder replaced by the host's project folder (checkpoints and data
    shipped with the project are at the same place under it)."""
    if project is None:
        return arg
    root = str(PROJECT_ROOT)
    if arg == root or arg.startswith(root + "/"):
        return project.rstrip("/") + arg[len(root) :]
    return arg


class RemotePopen(subprocess.Popen[Any]):
    """The ``Popen`` of a node on a host: the ssh client (or local launcher) that carries its output and
    exit status. ``terminate`` and ``kill`` signal the node's process group on its host first."""

    def __init__(self, args: Sequence[str], *, remote_signal: Callable[[str], None], **kw: Any) -> None:
        self._remote_signal = remote_signal
        super().__init__(list(args), **kw)

    def terminate(self) -> None:
        if self.poll() is None:
            self._remote_signal("TERM")

    def kill(self) -> None:
        if self.poll() is None:
            self._remote_signal("KILL")
            super().kill()


class HostsTestbed:
    """The nodes on the hosts of ``hosts`` (see the module). ``isolation == "hosts"``."""

    isolation = "hosts"

    def __init__(self, config: netem.TestbedConfig, hosts: HostsFile) -> None:
        self.config = config
        self.hosts = hosts
        self.applied: dict[str, dict[str, str]] = {LINK: {}, "test_edge": {}}
        self.not_applied: list[str] = []
        self.tcp_congestion_control: dict[str, str] = {}
        self.edge_limits_mechanism: str | None = None
        self.hosts_record: dict[str, Any] = hosts.describe()
        self._token = secrets.token_urlsafe(24)
        self._stack = contextlib.ExitStack()
        self._seq = 0
        self._names: dict[int, tuple[NodeHost, str]] = {}  # Popen pid -> (host, node name)
        self._lock = threading.Lock()
        self._teardown_failures: list[str] = []
        self._samplers: dict[int, RemoteSampler] = {}  # the edge's Popen pid -> its sampler
        self._outputs: dict[tuple[str, Path], str] = {}  # (node, path here) -> its path on the node's host

    # ---------------------------------------------------------------- commands on a host
    def run_dir(self, node: NodeHost) -> str:
        return f"{node.state_dir.rstrip('/')}/{self.config.prefix}"

    def command(self, node: NodeHost, remote: Sequence[str]) -> list[str]:
        """argv that runs ``remote`` (a Python module's command line on that host) there."""
        python = node.interpreter or sys.executable
        argv = [python, *remote]
        return argv if node.local else ssh_argv(node, argv, known_hosts=self.hosts.known_hosts)

    def run_on(self, node: NodeHost, remote: Sequence[str], *, stdin: str = "") -> dict[str, Any]:
        """Run ``remote`` on ``node``'s host, its JSON answer; ``HostsError`` when it fails."""
        argv = self.command(node, remote)
        logger.info("on %s: %s", node.label(), argv)
        try:
            r = subprocess.run(
                argv, input=stdin, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise HostsError(
                f"{node.label()}: no answer within {COMMAND_TIMEOUT_S:g} s to {remote[:3]}"
            ) from exc
        except OSError as exc:
            raise HostsError(f"cannot run {argv[0]} for {node.label()}: {exc.strerror or exc}") from exc
        if r.returncode != 0:
            raise HostsError(_explain(node, r.returncode, r.stderr))
        try:
            answer = json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise HostsError(f"{node.label()}: unexpected answer {r.stdout.strip()[:200]!r}") from exc
        if not isinstance(answer, dict):
            raise HostsError(f"{node.label()}: unexpected answer {answer!r}")
        return answer

    # ---------------------------------------------------------------- bringing it up
    def __enter__(self) -> HostsTestbed:
        try:
            self._up()
        except BaseException:
            self.close(failing=True)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(failing=exc is not None)

    def close(self, *, failing: bool = False) -> None:
        """Tear down on every host, in reverse order; a host that could not be cleaned is an error unless
        the run is failing already (then a warning: the run's own error is the one to show)."""
        self._teardown_failures.clear()
        self._stack.close()
        if self._teardown_failures and not failing:
            raise HostsError(
                "could not clean up on every host ("
                + "; ".join(self._teardown_failures)
                + "): run harness clean --hosts with the same hosts file"
            )

    def check_hosts(self) -> dict[str, dict[str, Any]]:
        """Every host's environment, checked: reachable, the project there, our version. All hosts are
        asked at once; every problem found goes into one ``HostsError``."""
        ours = collect_environment()
        nodes = list(self.hosts.nodes.values())
        envs: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            futures = {
                node.role: pool.submit(self.run_on, node, ["-m", "harness.remote_node", "env"])
                for node in nodes
                if not node.local
            }
            for node in nodes:
                if node.local:
                    envs[node.role] = {**ours, "project": str(PROJECT_ROOT)}
                    continue
                try:
                    env = futures[node.role].result()
                except HostsError as exc:
                    problems.append(str(exc))
                    continue
                if env.get("localexit") != ours.get("localexit"):
                    problems.append(
                        f"{node.label()} has localexit {env.get('localexit')} at {node.project}, this machine "
                        f"{ours.get('localexit')}: install the same version on every host"
                    )
                envs[node.role] = env
        if problems:
            raise HostsError("; ".join(dict.fromkeys(problems)))
        return envs

    def resolve_devices(self, requested: Mapping[str, str]) -> dict[str, dict[str, Any]]:
        """Each node's device (``{"edge": "cpu", "cloud": "cuda:0"}``) as the host that runs the node has
        it -- name, memory -- asked there (``python -m models.devices``), all hosts at once; a device a
        host lacks is a ``HostsError`` naming the option and the host, before any node starts."""
        roles = [role for role in requested if role in self.hosts.nodes]
        devices: dict[str, dict[str, Any]] = {}
        problems: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(roles))) as pool:
            futures = {
                role: pool.submit(
                    self.run_on, self.hosts.node(role), ["-m", "models.devices", requested[role]]
                )
                for role in roles
            }
            for role in roles:
                node, text = self.hosts.node(role), requested[role]
                try:
                    answer = futures[role].result().get(text)
                except HostsError as exc:
                    problems.append(str(exc))
                    continue
                if not isinstance(answer, dict) or "error" in answer or "device" not in answer:
                    why = answer.get("error") if isinstance(answer, dict) else f"unexpected answer {answer!r}"
                    problems.append(f"--{role}-device {text} on {node.label()}: {why}")
                    continue
                devices[role] = {**answer, "host": node.label()}
        if problems:
            raise HostsError("; ".join(problems))
        return devices

    def _up(self) -> None:
        cfg = self.config
        if cfg.test_edge is not None and cfg.test_edge.shaped:
            self.not_applied.append(
                "test–edge link shaping (across hosts only the edge–cloud link is shaped)"
            )
        if cfg.edge_limits is not None and cfg.edge_limits.any:
            self.not_applied.append("edge limits (--edge-cpus/--edge-cpuset/--edge-mem) on another host")
        if cfg.tcp_congestion_control is not None:
            self.not_applied.append(f"TCP congestion control {cfg.tcp_congestion_control} on the hosts")
        if cfg.schedule is not None:
            raise HostsError("a link or CPU schedule changes the testbed during a run: not across hosts yet")
        envs = self.check_hosts()  # (before anything is made on any host)
        for role, env in envs.items():
            self.hosts_record[role]["environment"] = env
        # (without root here there is no owner file, and clean cannot tell a live run from a dead one)
        with signals_deferred(), contextlib.suppress(OSError):
            register_owner(cfg.prefix)
            self._stack.callback(unregister_owner, cfg.prefix)
        for node in self._distinct_hosts():
            with signals_deferred():  # (its removal recorded before it exists)
                self._stack.callback(self._stop_host, node)
                self.run_on(node, ["-m", "harness.remote_node", "prepare", "--dir", self.run_dir(node)],
                            stdin=self._token + "\n")  # fmt: skip
        self._shape(envs)

    def _distinct_hosts(self) -> list[NodeHost]:
        """One node per host and state folder (two nodes on one host share its run folder)."""
        seen: dict[tuple[str, int, str], NodeHost] = {}
        for node in self.hosts.nodes.values():
            seen.setdefault((node.destination, node.port, self.run_dir(node)), node)
        return list(seen.values())

    def _stop_host(self, node: NodeHost) -> None:
        try:
            answer = self.run_on(node, ["-m", "harness.remote_node", "stop", "--dir", self.run_dir(node)])
        except HostsError as exc:
            logger.warning("teardown: %s", exc)
            self._teardown_failures.append(str(exc))
            return
        for item in answer.get("removed", []):
            logger.info("%s: removed %s", node.label(), item)

    def _shape(self, envs: Mapping[str, Mapping[str, Any]]) -> None:
        """Shape each end of the edge–cloud link whose host lets us (root and tc there)."""
        spec = self.config.edge_cloud
        shaped = any(_wanted(spec).values())
        ends: dict[str, Any] = {}
        for role, peer in (("edge", "cloud"), ("cloud", "edge")):
            node, env = self.hosts.node(role), envs[role]
            if not shaped:
                ends[role] = "the real link (nothing asked)"
                continue
            if not (env.get("euid") == 0 and env.get("tc")):
                ends[role] = "the real link, unshaped (no root or no tc on that host)"
                continue
            argv = ["-m", "harness.remote_node", "shape", "--dir", self.run_dir(node),
                    "--peer", self.hosts.node(peer).reach, *_spec_options(spec)]  # fmt: skip
            ends[role] = self.run_on(node, argv)
        edge_end = ends["edge"]
        wanted = [p for p, on in _wanted(spec).items() if on]
        if isinstance(edge_end, dict):
            applied = edge_end.get("applied", {})
            self.applied[LINK] = dict(applied)
            missing = [p for p in wanted if p not in applied]
            if missing:
                self.not_applied.append(
                    f"edge–cloud {', '.join(missing)} (the edge host's kernel has no qdisc for them)"
                )
        elif wanted:
            self.not_applied.append(
                f"edge–cloud {', '.join(wanted)}: the edge host {self.hosts.node('edge').label()} gives us no "
                "root or no tc, so the link is the real one, unshaped"
            )
        self.hosts_record["shaping"] = ends

    # ---------------------------------------------------------------- the API the harness uses
    def bind_address(self, node: str) -> str:
        return self.hosts.node(node).listen

    def connect_address(self, src: str, dst: str, port: int) -> tuple[str, int]:
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        return self.hosts.node(dst).reach, port

    def edge_threads(self) -> int | None:
        return None

    def node_pid(self, proc: subprocess.Popen[Any]) -> int:
        """The node's launcher on this machine or its ssh client: no PID here to read CPUs of."""
        return proc.pid

    def node_path(self, node: str, path: str | Path) -> str:
        """``path`` of this checkout as node ``node`` finds it on its host (under its project)."""
        return map_path(str(path), self.hosts.node(node).project)

    def output_path(self, node: str, path: Path) -> str:
        """Where node ``node`` is to write a file the harness reads at ``path``: ``path`` itself for a
        node on this machine, else a file of the run's folder on its host (see :meth:`fetch_output`)."""
        host = self.hosts.node(node)
        if host.local:
            return str(path)
        with self._lock:
            remote = self._outputs.get((node, path))
            if remote is None:
                self._seq += 1
                remote = f"{self.run_dir(host)}/{OUTPUT_PREFIX}{self._seq}-{path.name}"
                self._outputs[(node, path)] = remote
        return remote

    def fetch_output(self, node: str, path: Path) -> None:
        """Copy the file node ``node`` wrote for ``path`` (:meth:`output_path`) from its host to ``path``
        (atomically: a failed copy leaves nothing there) and remove it on its host; nothing to do for a
        node on this machine. ``NodeFailure`` of that node when the file cannot be had."""
        host = self.hosts.node(node)
        with self._lock:
            remote = self._outputs.pop((node, path), None)
        if host.local or remote is None:
            return
        # (removed there only once all of it has been written to the ssh channel: a run whose copy
        # fails is failed, and its folder's removal at teardown takes the file)
        take = ["sh", "-c", 'cat -- "$1" && rm -f -- "$1"', "sh", remote]
        argv = ssh_argv(host, take, known_hosts=self.hosts.known_hosts)
        logger.info("fetching %s from %s: %s", path.name, host.label(), argv)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with atomic_open(path, "wb") as fh:
                r = subprocess.run(
                    argv, stdout=fh, stderr=subprocess.PIPE, timeout=FETCH_TIMEOUT_S, check=False
                )
                if r.returncode != 0:
                    line = _last_line(r.stderr.decode("utf-8", errors="replace"))
                    raise NodeFailure(
                        node, f"its output {remote} on {host.label()} could not be fetched: {line}"
                    )
        except subprocess.TimeoutExpired as exc:
            raise NodeFailure(
                node, f"its output {remote} on {host.label()} took over {FETCH_TIMEOUT_S:g} s to fetch"
            ) from exc
        except OSError as exc:
            raise NodeFailure(
                node, f"its output could not be written to {path}: {exc.strerror or exc}"
            ) from exc

    def _map_arg(self, node: str, host: NodeHost, arg: str) -> str:
        """A node's argument as its host sees it: this checkout's files under the host's project, a file
        of the run's log folder (an output the harness reads) in the run's folder there."""
        logs = self.config.log_dir
        under_logs = logs is not None and os.path.abspath(arg).startswith(os.path.abspath(logs) + os.sep)
        if not host.local and os.sep in arg and under_logs:
            return self.output_path(node, Path(arg))
        return map_path(arg, host.project)

    def popen(self, node: str, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start node ``node`` (``argv`` as for this machine: its Python and paths are mapped to the
        host's, its outputs to the run's folder there) under ``harness.remote_node run`` on its host;
        see the module."""
        host = self.hosts.node(node)
        kw.pop("cpus", None)  # (CPU placement is this machine's; the CLI refuses it with --hosts)
        env = kw.pop("env", None)
        with self._lock:
            self._seq += 1
            name = f"{node}-{self._seq}"
        node_argv = [self._map_arg(node, host, arg) for arg in argv[1:]] + host.tls_options
        remote = [
            "-m", "harness.remote_node", "run", "--dir", self.run_dir(host), "--name", name,
            *(["--cwd", host.project] if host.project else []),
            *[f"--env={pair}" for pair in remote_env(env, os.environ)],
            "--", host.interpreter or sys.executable, *node_argv,
        ]  # fmt: skip
        args = self.command(host, remote)
        logger.info("popen on %s: %s", host.label(), args)
        proc = RemotePopen(args, remote_signal=functools.partial(self._signal, host, name), **kw)
        self._names[proc.pid] = (host, name)
        if node == "edge":  # (sampling from the start: a sampler's own start over ssh takes a second)
            pidfile = f"{self.run_dir(host)}/{name}.pid"
            sampler = RemoteSampler(
                self.command(host, ["-m", "harness.remote_sampler", "--pidfile", pidfile])
            )
            self._stack.callback(sampler.close)
            self._samplers[proc.pid] = sampler.start()
        return proc

    def _signal(self, host: NodeHost, name: str, sig: str) -> None:
        remote = [
            "-m",
            "harness.remote_node",
            "signal",
            "--dir",
            self.run_dir(host),
            "--name",
            name,
            "--signal",
            sig,
        ]
        try:
            self.run_on(host, remote)
        except HostsError as exc:  # (its host gone: the run folder's stop, or clean, tries again)
            logger.warning("could not signal the %s node: %s", name, exc)

    def resource_sampler(
        self, pid: int, others: Sequence[int] = ()
    ) -> contextlib.AbstractContextManager[RemoteSampler]:
        """The edge's sampler, started with it on its host (``pid``: the edge's ``Popen``'s) and
        stopped at teardown: a study's runs on one edge share it, each reading its own phase."""
        del others  # (the host's other programs are told apart on that host)
        return contextlib.nullcontext(self._samplers[pid])

    def describe(self) -> dict[str, Any]:
        return {"isolation": self.isolation, "hosts": self.hosts_record, "applied": self.applied}


def _wanted(spec: netem.LinkSpec) -> dict[str, bool]:
    return {
        "rate": spec.rate_bps is not None,
        "delay": spec.delay_s > 0,
        "jitter": spec.jitter_s > 0,
        "loss": spec.loss > 0,
    }


def _spec_options(spec: netem.LinkSpec) -> list[str]:
    """``--rate/--delay/--jitter/--loss`` of ``spec`` in tc's units, for ``remote_node shape``."""
    out = []
    if spec.rate_bps is not None:
        out += ["--rate", f"{spec.rate_bps}bit"]
    if spec.delay_s > 0:
        out += ["--delay", f"{round(spec.delay_s * 1e6)}us"]
    if spec.jitter_s > 0:
        out += ["--jitter", f"{round(spec.jitter_s * 1e6)}us"]
    if spec.loss > 0:
        out += ["--loss", f"{spec.loss * 100:.6g}%"]
    return out


def _explain(node: NodeHost, code: int, stderr: str) -> str:
    """What a failed command on ``node``'s host means, in one line."""
    line = _last_line(stderr)
    if not node.local and code == 255:
        return f"cannot reach the {node.label()} host over ssh: {line or 'ssh exited with 255'}"
    if code in (126, 127) or "No such file or directory" in line:
        return (
            f"the {node.label()} host has no localexit project at {node.project} ({node.interpreter}: "
            f"{line or 'not found'}); install it there (docs/hosts.md) or fix project in the hosts file"
        )
    if "No module named" in line:
        return f"the Python at {node.interpreter} on {node.label()} lacks the project ({line})"
    return f"{node.label()}: exit code {code}: {line}"


class RemoteSampler:
    """The edge's samples from ``harness.remote_sampler`` on its host, as ``ResourceSampler`` keeps
    them; ``window_of(records)`` finds the measured phase on the edge's clock."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.times_ns: list[int] = []
        self.cpu_percent: list[float] = []
        self.rss_mib: list[float] = []
        self.host_other_percent: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._arrived = threading.Condition()
        self._ended = False

    def start(self) -> RemoteSampler:
        """Start the sampler on its host (once) and the thread that reads its samples."""
        if self._proc is None:
            logger.info("sampler: %s", self.argv)
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self._reader = threading.Thread(target=self._read, name="remote-sampler", daemon=True)
            self._reader.start()
        return self

    def __enter__(self) -> RemoteSampler:
        return self.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                s = json.loads(line)
                t, cpu, rss, other = int(s["t_ns"]), float(s["cpu"]), float(s["rss"]), float(s["other"])
            except (ValueError, KeyError, TypeError):
                continue
            with self._arrived:
                self.times_ns.append(t)
                self.cpu_percent.append(cpu)
                self.rss_mib.append(rss / 2**20)
                self.host_other_percent.append(other)
                self._arrived.notify_all()
        with self._arrived:
            self._ended = True
            self._arrived.notify_all()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the sampler (its stdin closed: its cue) and wait for its last samples."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(OSError):
            assert proc.stdin is not None
            proc.stdin.close()  # (the sampler's cue to stop)
        try:
            proc.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=5.0)

    def window(self, start_ns: int, end_ns: int, wait_s: float = SAMPLES_WAIT_S) -> tuple[list[int], bool]:
        """Indices of samples within [start_ns, end_ns] on the edge's clock (if none, False and the
        samples just before and after it), once a sample after ``end_ns`` has come (or the sampler ended, or ``wait_s`` passed): samples
        reach us a moment after they are taken, and the sampler runs on after a study's run."""
        with self._arrived:
            self._arrived.wait_for(
                lambda: self._ended or (bool(self.times_ns) and self.times_ns[-1] > end_ns), timeout=wait_s
            )
            times = list(self.times_ns)
        idx = [i for i, t in enumerate(times) if start_ns <= t <= end_ns]
        if idx:
            return idx, True
        # A phase shorter than the sampling interval: the samples on either side of it, not all of
        # them (the sampler of a study's edge has the earlier runs' too).
        before = [i for i, t in enumerate(times) if t < start_ns][-1:]
        after = [i for i, t in enumerate(times) if t > end_ns][:1]
        return before + after, False

    def window_of(self, records: Mapping[str, Any]) -> tuple[list[int], bool]:
        """The samples of the measured phase of ``records`` (test-node clock), moved onto the edge's clock
        by the edge's offset the test node measured."""
        overall = records.get("overall", {})
        clock = records.get("clock", {}).get("edge", {})
        offset = int(clock.get("offset_ns", 0)) if isinstance(clock, dict) else 0
        start, end = int(overall.get("first_send_ns", 0)), int(overall.get("last_recv_ns", 0))
        return self.window(start + offset, end + offset)


@dataclass(frozen=True)
class HostsFactory:
    """A testbed factory for ``run_experiment`` over the hosts of a hosts file."""

    hosts: HostsFile
    #: The nodes' devices are those of their hosts: ``run_experiment`` asks the testbed
    #: (:meth:`HostsTestbed.resolve_devices`), not this machine.
    resolves_devices: ClassVar[bool] = True

    def __call__(self, config: netem.TestbedConfig, **_kw: Any) -> HostsTestbed:
        return HostsTestbed(config, self.hosts)


def hosts_factory(path: Path) -> Callable[..., HostsTestbed]:
    """A testbed factory for ``run_experiment``: the hosts of the file at ``path`` (read now, so that a
    bad file is refused before anything runs)."""
    return HostsFactory(load_hosts(path))


def study_factory(path: Path) -> Callable[..., HostsTestbed]:
    """:func:`hosts_factory` for a study (``sweep``/``reproduce --hosts``), refusing a hosts file it
    cannot run: the test node tells the edge and the cloud each point's checkpoint by one path, so
    their projects must be at the same folder (the nodes check the checkpoint's digest too)."""
    factory = hosts_factory(path)
    hosts = load_hosts(path)
    edge, cloud = (map_path(str(PROJECT_ROOT), hosts.node(role).project) for role in ("edge", "cloud"))
    if edge != cloud:
        raise HostsError(
            f"hosts file {path}: a study reconfigures the edge and the cloud with one checkpoint path, so "
            f"their projects must be at the same folder (edge: {edge}, cloud: {cloud})"
        )
    return factory


def clean_hosts(path: Path, *, force: bool = False) -> list[str]:
    """Stop the nodes, remove the qdiscs and the run folders that killed runs left on every host of the
    hosts file (runs still in progress on this machine are left alone unless ``force``)."""
    hosts = load_hosts(path)
    live = set() if force else netem.cleanup.live_prefixes()
    bed = HostsTestbed(netem.TestbedConfig(prefix="lx0", edge_cloud=netem.LinkSpec()), hosts)
    removed: list[str] = []
    problems: list[str] = []
    for node in bed._distinct_hosts():
        remote = [
            "-m",
            "harness.remote_node",
            "clean",
            "--state-dir",
            node.state_dir,
            "--skip",
            ",".join(sorted(live)),
        ]
        try:
            answer = bed.run_on(node, remote)
        except HostsError as exc:
            problems.append(str(exc))
            continue
        removed += [f"{node.label()}: {item}" for item in answer.get("removed", [])]
    if problems:
        raise HostsError("clean --hosts: " + "; ".join(problems))
    return removed
