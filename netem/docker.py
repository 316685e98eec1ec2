"""The Docker testbed: the test, edge and cloud nodes in containers of the project's image.

The same topology, shaping and fall-backs as the namespace testbed (``netem.testbed``), with Docker as
the isolation, the way the paper's testbed ran::

    <p>-test ──[ network <p>-te ]── <p>-edge ──[ network <p>-ec ]── <p>-cloud

Each role has a long-lived container (``<p>-test``, ``<p>-edge``, ``<p>-cloud``: ``sleep infinity``
with ``NET_ADMIN``) that holds its network namespace, as a pod's sandbox does in Kubernetes. Each link
is a Docker bridge network of its own, named with the run's prefix; the edge routes between the two
(``ip_forward``) and the test and cloud containers reach each other through it, so test↔cloud traffic
crosses both links as in the namespaces. The containers' default routes are removed: the nodes reach
each other and nothing else. ``tc`` runs inside the containers (``docker exec``), on their ends of each
link, with the qdiscs the host's probe found (the kernel is the same). Where the kernel lacks
``sch_netem`` and a link has delay, jitter or loss, that link is a TUN pair joined by the user-space
delay line instead, exactly as in the namespaces: the host creates the devices and moves them into the
two containers' namespaces, and the delay line -- a child of this process, like every other testbed
helper -- holds them, so the containers need neither ``/dev/net/tun`` nor anything of the host.

Each node process runs in a container of its own (``<p>-<node>-<n>``, ``docker run --rm``, attached,
so that its ``Popen`` stands for the node: READY on stdout, exit status, SIGTERM forwarded) in its
role's network namespace (``--network container:<p>-<node>``). Absolute paths among its arguments
(checkpoint, data, records) are mounted at the same place, the run's log directory read-write; the
image carries the default dataset. The edge's limits are Docker's own controls (``--cpus``,
``--cpuset-cpus``, ``--memory``) and are read back from the cgroup files inside its container before
the run goes on. ``node_pid`` gives the node's PID on the host (the container's main process), which
the harness samples with psutil and checks CPU affinities on.

Needs root, a running Docker daemon and the image (``deploy/setup-docker.sh`` builds it). Teardown runs
in ``close`` in reverse order, also after a failure or Ctrl-C; ``python -m harness clean`` removes the
containers and networks of killed runs by their prefix and label.

Without the harness (``deploy/compose.yaml``), each container shapes its own end of its link with the
same tc plan and then runs its node: ``python -m netem.run_shape`` (:func:`main`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from netem._proc import signal_point, signals_deferred
from netem.cleanup import (
    CONTAINER_LABEL,
    ROLES,
    container_name,
    dev_name,
    docker_network_name,
)
from netem.errors import CapabilityError, CommandError, HelperExited, NetemError
from netem.executor import CommandResult, Executor
from netem.probe import PROBED_QDISCS, Capabilities, available_congestion_controls
from netem.spec import EdgeLimits, LinkSpec, TestbedConfig, cpuset_cpus, format_cpuset
from netem.tc import ShapingPlan, plan_link_end
from netem.testbed import TCP_CC_SYSCTL, Testbed, _Link

logger = logging.getLogger(__name__)

#: The image the nodes run from, unless ``LOCALEXIT_IMAGE`` names another (deploy/setup-docker.sh).
DEFAULT_IMAGE = "localexit-node:latest"
IMAGE_ENV = "LOCALEXIT_IMAGE"
DOCKER = "docker"
#: The image's interpreter (its virtual environment is first on PATH), standing in for the host's.
CONTAINER_PYTHON = "python"
#: How long a started node container may take to be running, and a holder to answer.
START_TIMEOUT_S = 30.0
POLL_S = 0.05
#: Variables of the harness's environment that shape a node's computation, passed into its container
#: (the rest -- PATH, HOME, a virtual environment's -- describe the host and would break the image's).
NODE_ENV_PREFIXES = ("OMP_", "MKL_", "GOMP_", "KMP_", "OPENBLAS_", "TORCH_", "LOCALEXIT_")
NODE_ENV_NAMES = ("GLIBC_TUNABLES", "PYTHONHASHSEED")
#: sysctls of every node container: IPv4 only, as in the namespaces.
BASE_SYSCTLS = ("net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


# --------------------------------------------------------------------------------------------------
# Pure builders: argv lists and parsers, tested without Docker.


def node_env(env: Mapping[str, str] | None, host_env: Mapping[str, str]) -> dict[str, str]:
    """The variables of ``env`` (a node's environment as the caller built it) to set in its container:
    those the caller set or changed, and the ones that shape a node's computation (threads, allocator,
    test hooks), never the host's paths."""
    if env is None:
        env = host_env
    out = {}
    for key, value in env.items():
        if host_env.get(key) != value or key.startswith(NODE_ENV_PREFIXES) or key in NODE_ENV_NAMES:
            out[key] = value
    return dict(sorted(out.items()))


def _within(path: Path, roots: Sequence[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)


def mounts_for(argv: Sequence[str], writable: Sequence[Path] = ()) -> list[tuple[Path, bool]]:
    """The host paths a node's ``argv`` names, to mount at the same place: ``(path, read_only)``.

    ``writable``: folders mounted read-write (the run's log directory, where records are written). An
    absolute path among the arguments (also as ``--opt=/path``) that exists is mounted read-only; one
    that does not (an output file) has its folder mounted read-write. Paths under a mounted folder are
    not mounted again.
    """
    mounts: list[tuple[Path, bool]] = [(Path(d), False) for d in writable]
    for arg in argv[1:]:  # (the program is the image's)
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if not value.startswith("/"):
            continue
        path = Path(os.path.normpath(value))
        if _within(path, [m for m, _ in mounts]):
            continue
        if path.exists():
            mounts.append((path, True))
        elif path.parent.is_dir() and path.parent != Path("/"):
            mounts.append((path.parent, False))
    return mounts


def mount_args(mounts: Sequence[tuple[Path, bool]]) -> list[str]:
    """``--mount`` options of bind mounts at the same path (refusing paths ``--mount`` cannot carry)."""
    out = []
    for path, read_only in mounts:
        if "," in str(path) or "=" in str(path):
            raise NetemError(f"cannot mount {path} into a container: its name has ',' or '='")
        spec = f"type=bind,source={path},target={path}" + (",readonly" if read_only else "")
        out += ["--mount", spec]
    return out


def limit_args(limits: EdgeLimits | None) -> list[str]:
    """Docker's controls for the edge's limits: ``--cpus``, ``--cpuset-cpus``, ``--memory``."""
    if limits is None:
        return []
    out = []
    if limits.cpus is not None:
        out += ["--cpus", f"{limits.cpus:g}"]
    if limits.cpuset is not None:
        out += ["--cpuset-cpus", limits.cpuset]
    if limits.memory_bytes is not None:
        # swap as large as the memory: no swap beyond the limit, as the cgroup of the namespaces
        out += ["--memory", f"{limits.memory_bytes}b", "--memory-swap", f"{limits.memory_bytes}b"]
    return out


def node_run_argv(
    *,
    name: str,
    prefix: str,
    role: str,
    image: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    mounts: Sequence[tuple[Path, bool]],
    limits: EdgeLimits | None = None,
    interactive: bool = False,
    host_python: str = sys.executable,
) -> list[str]:
    """``docker run`` of one node process in its role's network namespace, attached (not ``-d``).

    ``argv[0]`` that is the host's Python (``host_python``, or any ``python*``) becomes the image's.
    ``limits``: the node's CPU quota, CPU set and memory (the edge's limits, or a node's CPU set).
    """
    if not argv:
        raise ValueError("empty argv")
    program = argv[0]
    if program == host_python or Path(program).name.startswith("python"):
        program = CONTAINER_PYTHON
    out = [
        DOCKER, "run", "--rm", "--name", name,
        "--label", f"{CONTAINER_LABEL}={prefix}",
        "--network", f"container:{container_name(prefix, role)}",
        "--log-driver", "none",  # (its output comes to us through the attached client; no copy on disk)
    ]  # fmt: skip
    if interactive:
        out.append("--interactive")
    for key, value in env.items():
        out += ["--env", f"{key}={value}"]
    out += mount_args(mounts)
    out += limit_args(limits)
    return [*out, image, program, *argv[1:]]


def holder_run_argv(
    *,
    prefix: str,
    role: str,
    image: str,
    network: str,
    sysctls: Sequence[str] = (),
) -> list[str]:
    """``docker create`` of the container that holds ``role``'s network namespace (started later)."""
    out = [
        DOCKER, "create", "--name", container_name(prefix, role),
        "--label", f"{CONTAINER_LABEL}={prefix}",
        "--network", network,
        "--cap-add", "NET_ADMIN",  # tc, addresses and routes inside it
        "--init",  # (sleep as PID 1 would not die of SIGTERM; docker-init passes it on)
    ]  # fmt: skip
    for sysctl in (*BASE_SYSCTLS, *sysctls):
        out += ["--sysctl", sysctl]
    return [*out, image, "sleep", "infinity"]


def parse_addresses(text: str) -> dict[str, str]:
    """``ip -o -4 addr show`` → {address: interface}."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            out[parts[3].split("/")[0]] = parts[1].split("@")[0]
    return out


#: Where a container sees its own cgroup's limits, by cgroup version: (cpu quota, cpu period, cpuset,
#: memory). In cgroup v2 the quota and period are one file (``cpu.max``: ``max 100000`` or ``Q P``).
CGROUP_FILES = {
    "v1": (
        "/sys/fs/cgroup/cpu/cpu.cfs_quota_us",
        "/sys/fs/cgroup/cpu/cpu.cfs_period_us",
        "/sys/fs/cgroup/cpuset/cpuset.cpus",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ),
    "v2": ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpuset.cpus.effective", "/sys/fs/cgroup/memory.max"),
}
#: A memory limit at or above this reads as "none" (cgroup v1 writes 2^63 rounded to pages).
NO_MEMORY_LIMIT = 2**62


def parse_limits(text: str) -> dict[str, Any]:
    """The limits in force from ``cat`` of ``CGROUP_FILES[version]`` (four fields in both versions):
    ``{"cpus", "cpuset", "memory_bytes"}``, None where none is set."""
    try:
        quota, period, cpuset, memory = text.split()
        cpus = None if quota in ("-1", "max") else int(quota) / int(period)
        mem = None if memory == "max" or int(memory) >= NO_MEMORY_LIMIT else int(memory)
    except (IndexError, ValueError) as exc:
        raise NetemError(f"cannot read the container's cgroup limits from {text!r}") from exc
    return {"cpus": cpus, "cpuset": cpuset, "memory_bytes": mem}


def limits_mismatch(want: EdgeLimits, have: Mapping[str, Any], page: int = 4096) -> list[str]:
    """What of ``want`` the container's cgroup does not hold, in words ([] when all of it does)."""
    out = []
    if want.cpus is not None and (have["cpus"] is None or abs(have["cpus"] - want.cpus) > 1e-3):
        out.append(f"CPU quota {have['cpus']} cores, not {want.cpus:g}")
    if want.cpuset is not None and cpuset_cpus(have["cpuset"]) != cpuset_cpus(want.cpuset):
        out.append(f"CPU set {have['cpuset']}, not {want.cpuset}")
    if want.memory_bytes is not None and (
        have["memory_bytes"] is None or abs(have["memory_bytes"] - want.memory_bytes) >= page
    ):
        out.append(f"memory limit {have['memory_bytes']} bytes, not {want.memory_bytes}")
    return out


# --------------------------------------------------------------------------------------------------
# Talking to Docker.


def docker_server_version(ex: Executor) -> str:
    """The daemon's version; ``CapabilityError`` when there is no Docker client or daemon to talk to."""
    try:
        r = ex.run([DOCKER, "version", "--format", "{{.Server.Version}}"])
    except CommandError as exc:
        raise CapabilityError(
            f"Docker is not available ({exc.stderr.strip() or exc}); install and start it with "
            "deploy/setup-docker.sh (as root)"
        ) from exc
    return r.stdout.strip()


def image_id(ex: Executor, image: str) -> str:
    """The id of the local image ``image``; ``CapabilityError`` (saying how to build it) when absent."""
    r = ex.run([DOCKER, "image", "inspect", "--format", "{{.Id}}", image], check=False)
    if r.returncode != 0:
        raise CapabilityError(
            f"the node image {image} is not on this machine ({r.stderr.strip()}); build it with "
            f"deploy/setup-docker.sh, or name another with {IMAGE_ENV}"
        )
    return r.stdout.strip()


def _remove_container(ex: Executor, name: str) -> None:
    r = ex.run([DOCKER, "rm", "--force", "--volumes", name], check=False)
    if r.returncode != 0 and "No such container" not in r.stderr:
        raise CommandError(r.argv, r.returncode, r.stderr)


def _remove_network(ex: Executor, name: str) -> None:
    r = ex.run([DOCKER, "network", "rm", name], check=False)
    if r.returncode != 0 and "not found" not in r.stderr and "No such network" not in r.stderr:
        raise CommandError(r.argv, r.returncode, r.stderr)


def _alive(pid: int) -> bool:
    """Whether ``pid`` (a container's main process: not our child) still runs."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


# --------------------------------------------------------------------------------------------------


class DockerTestbed(Testbed):
    """``netem.Testbed`` with containers as the isolation; the same interface, ``isolation == "docker"``.

    ``container`` holds what the results file records of the containers: the runtime's version, the
    image and its id, and the edge's limits as read back inside its container.
    """

    def __init__(
        self,
        config: TestbedConfig,
        caps: Capabilities,
        executor: Executor | None = None,
        *,
        image: str | None = None,
    ) -> None:
        self.image = image or os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
        super().__init__(config, "docker", caps, executor)
        self.container: dict[str, Any] = {
            "runtime": DOCKER,
            "server_version": None,
            "image": self.image,
            "image_id": None,
            "edge_limits_read_back": None,
        }
        self._holders: dict[str, int] = {}  # role -> PID of its holder container's main process
        self._nodes: dict[int, str] = {}  # Popen pid of a node's client -> its container's name
        self._node_pids: dict[int, int] = {}  # Popen pid -> the node's PID on the host
        self._seq = 0
        self._bridged: set[str] = set()  # links carried by their Docker network (the others: TUN pairs)
        self._plan_docker()

    # ---------------------------------------------------------------- planning (no side effects)
    def _plan_schedule(self) -> None:
        if self.config.schedule is not None:
            raise CapabilityError(
                "a link schedule changes the links during the run, which only the namespaced testbed does "
                "(--isolation netns)"
            )

    def _plan_docker(self) -> None:
        """Which links Docker networks carry (tc can apply all of the spec) and which need TUN pairs and
        the delay line (a kernel without ``sch_netem``), and the mechanism of each parameter."""
        if not (self.caps.root and self.caps.iproute2):
            raise CapabilityError(
                "the Docker testbed needs root and iproute2 (the host moves delay-line devices into the "
                "containers and probes the kernel's qdiscs)"
            )
        for link in self._links:
            plan = plan_link_end("probe", link.spec, self.caps.qdiscs)
            if plan.userspace and not self.caps.tun:
                raise CapabilityError(
                    f"{link.name}: the kernel has no netem qdisc and /dev/net/tun is unavailable, so "
                    f"{', '.join(plan.userspace)} cannot be applied; refusing to run unshaped"
                )
            if not plan.userspace:
                self._bridged.add(link.name)
            self.applied[link.name] = dict(plan.applied)
            for param in plan.userspace:
                self.applied[link.name][param] = "tun-delay-line"

    # ---------------------------------------------------------------- bringing it up
    def _up_nodes(self) -> None:
        ex, p = self.ex, self.config.prefix
        self.container["server_version"] = docker_server_version(ex)
        self.container["image_id"] = image_id(ex, self.image)
        for short in ("te", "ec"):
            net = docker_network_name(p, short)
            with signals_deferred():  # (removal recorded first: removing what is not there is no error)
                self._push(f"remove network {net}", functools.partial(_remove_network, ex, net))
                ex.run(
                    [
                        DOCKER, "network", "create", "--driver", "bridge",
                        "--label", f"{CONTAINER_LABEL}={p}",
                        # no NAT to the outside: the nodes talk to each other only
                        "--opt", "com.docker.network.bridge.enable_ip_masquerade=false",
                        net,
                    ]
                )  # fmt: skip
        want_cc = self.config.tcp_congestion_control
        cc = [f"{TCP_CC_SYSCTL}={want_cc}"] if want_cc is not None else []
        for role, net in (("test", "te"), ("edge", "te"), ("cloud", "ec")):
            name = container_name(p, role)
            sysctls = [*cc, *(["net.ipv4.ip_forward=1"] if role == "edge" else [])]
            with signals_deferred():
                self._push(f"remove container {name}", functools.partial(_remove_container, ex, name))
                ex.run(
                    holder_run_argv(
                        prefix=p,
                        role=role,
                        image=self.image,
                        network=docker_network_name(p, net),
                        sysctls=sysctls,
                    )
                )
                signal_point("container")
        ex.run([DOCKER, "network", "connect", docker_network_name(p, "ec"), container_name(p, "edge")])
        for role in ROLES:
            try:
                ex.run([DOCKER, "start", container_name(p, role)])
            except CommandError as exc:  # (the sysctls are set as it starts)
                if want_cc is not None and "tcp_congestion_control" in exc.stderr:
                    raise CapabilityError(
                        f"TCP congestion control {want_cc!r} cannot be set in the containers "
                        f"({exc.stderr.strip()}); this kernel has: "
                        f"{', '.join(available_congestion_controls()) or 'unknown'}"
                    ) from exc
                raise
            self._holders[role] = int(self._inspect(container_name(p, role), "{{.State.Pid}}"))
        self._links = [self._up_docker_link(link) for link in self._links]
        te, ec = self._links
        for role in ROLES:
            self._exec(role, ["ip", "route", "del", "default"], check=False)
        self._exec("test", ["ip", "route", "add", f"{ec.addr_b}/32", "via", te.addr_b])
        self._exec("cloud", ["ip", "route", "add", f"{te.addr_a}/32", "via", ec.addr_a])

    def _up_docker_link(self, link: _Link) -> _Link:
        """Shape ``link`` inside its two containers; returns it with the addresses the nodes use."""
        p = self.config.prefix
        if link.name in self._bridged:
            net = docker_network_name(p, link.short)
            addrs = []
            for role in (link.a, link.b):
                networks = json.loads(
                    self._inspect(container_name(p, role), "{{json .NetworkSettings.Networks}}")
                )
                addrs.append(networks[net]["IPAddress"])
            link = dataclasses.replace(link, addr_a=addrs[0], addr_b=addrs[1])
            devs = [self._interface(role, addr) for role, addr in zip((link.a, link.b), addrs, strict=True)]
        else:
            devs = [dev_name(p, link.short, link.a[0]), dev_name(p, link.short, link.b[0])]
            with signals_deferred():  # the delay line is recorded before a Ctrl-C unwinds
                self._up_tun_pair(
                    link, str(self._holders[link.a]), str(self._holders[link.b]), devs[0], devs[1]
                )
            for role, dev, addr in ((link.a, devs[0], link.addr_a), (link.b, devs[1], link.addr_b)):
                self._exec(role, ["ip", "addr", "add", f"{addr}/30", "dev", dev])
                self._exec(role, ["ip", "link", "set", dev, "up"])
        for role, dev in zip((link.a, link.b), devs, strict=True):
            plan: ShapingPlan = plan_link_end(dev, link.spec, self.caps.qdiscs)
            if link.name in self._bridged and link.spec.rate_bps is not None:
                # one MTU-sized packet per skb, as on the namespaces' veths (see Testbed._up_link)
                self._exec(role, ["ip", "link", "set", "dev", dev, "gso_max_segs", "1"])
            for argv in plan.commands:
                self._exec(role, argv)
        return link

    def _interface(self, role: str, addr: str) -> str:
        found = parse_addresses(self._exec(role, ["ip", "-o", "-4", "addr", "show"]).stdout)
        if addr not in found:
            raise NetemError(f"the {role} container has no interface with {addr} (it has {found})")
        return found[addr]

    def _exec(self, role: str, argv: Sequence[str], *, check: bool = True) -> CommandResult:
        """Run ``argv`` inside ``role``'s holder container (``docker exec``), logged and checked."""
        return self.ex.run([DOCKER, "exec", container_name(self.config.prefix, role), *argv], check=check)

    def _inspect(self, name: str, fmt: str) -> str:
        return str(self.ex.run([DOCKER, "inspect", "--format", fmt, name]).stdout.strip())

    def _up_tcp_congestion(self) -> None:
        """The congestion control was set as each container started (``--sysctl``); read it back."""
        want = self.config.tcp_congestion_control
        names = {
            self._exec(role, ["cat", f"/proc/sys/{TCP_CC_SYSCTL.replace('.', '/')}"]).stdout.strip()
            for role in ROLES
        }
        if len(names) != 1 or (want is not None and names != {want}):
            raise NetemError(f"the node containers report TCP congestion control {sorted(names)}, not {want}")
        self.tcp_congestion_control.update(
            name=names.pop(), mechanism="docker-sysctl" if want is not None else "kernel-default"
        )

    def _up_cgroup(self) -> None:
        """The edge's limits are options of its container (see ``popen``), read back as it starts."""
        limits = self.config.edge_limits
        if limits is not None and limits.any:
            self.edge_limits_mechanism = "docker"

    # ---------------------------------------------------------------- the API nodes use
    def connect_address(self, src: str, dst: str, port: int) -> tuple[str, int]:
        """Where ``src`` reaches ``dst``'s listener: its own address (routed through the edge)."""
        self._check_node(src)
        self._check_node(dst)
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        return self.bind_address(dst), port

    def popen(
        self, node: str, argv: Sequence[str], *, cpus: Collection[int] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in a container of its own in ``node``'s network namespace; the ``Popen`` is the
        attached Docker client, which passes on the node's output, exit status and SIGTERM.

        ``env``: the node's environment as for the namespaces (what matters of it goes into the
        container, see :func:`node_env`). ``cpus``: the CPUs it may use (``--cpuset-cpus``). The edge
        gets the run's limits, read back inside its container before this returns. The testbed removes
        the container at teardown if it is still there.
        """
        self._check_node(node)
        if not self._up:
            raise NetemError("the testbed is not up; use it as `with make_testbed(...) as tb:`")
        if "preexec_fn" in kw or "shell" in kw:
            raise ValueError("popen takes no preexec_fn or shell: the testbed sets the process up itself")
        env = node_env(kw.pop("env", None), os.environ)
        limits = self.config.edge_limits if node == "edge" else None
        if node == "edge" and "OMP_NUM_THREADS" not in env and (threads := self.edge_threads()) is not None:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        if cpus is not None:  # (within the edge's own CPU set, as the affinity in the namespaces is)
            allowed = set(cpus) & set(cpuset_cpus(limits.cpuset)) if limits and limits.cpuset else set(cpus)
            limits = dataclasses.replace(limits or EdgeLimits(), cpuset=format_cpuset(sorted(allowed)))
        self._seq += 1
        name = container_name(self.config.prefix, node, self._seq)
        stdin = kw.get("stdin")
        args = node_run_argv(
            name=name,
            prefix=self.config.prefix,
            role=node,
            image=self.image,
            argv=argv,
            env=env,
            mounts=mounts_for(argv, [self.config.log_dir] if self.config.log_dir else []),
            limits=limits,
            interactive=stdin is not None and stdin != subprocess.DEVNULL,
        )
        logger.info("popen on %s: %s", node, args)
        signal_point(f"{node}.popen")
        with signals_deferred():
            self._push(f"remove container {name}", functools.partial(_remove_container, self.ex, name))
            proc = subprocess.Popen(args, **kw)
            signal_point(f"{node}.spawned")
            self._procs.append(proc)
            self._nodes[proc.pid] = name
        if limits is not None and limits.any:
            self._read_back_limits(node, proc, limits)
        return proc

    def _container_pid(self, proc: subprocess.Popen[Any]) -> int | None:
        """The host PID of ``proc``'s container's main process once it runs; None if it ended first."""
        name = self._nodes[proc.pid]
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            r = self.ex.run([DOCKER, "inspect", "--format", "{{.State.Pid}}", name], check=False)
            pid = int(r.stdout.strip() or 0) if r.returncode == 0 else 0
            if pid > 0:
                return pid
            if proc.poll() is not None:
                return None
            if time.monotonic() > deadline:
                raise NetemError(f"container {name} did not start within {START_TIMEOUT_S:g} s")
            time.sleep(POLL_S)

    def _read_back_limits(self, node: str, proc: subprocess.Popen[Any], limits: EdgeLimits) -> None:
        """Read a node's limits from the cgroup files inside its container; refuse a mismatch. The
        edge's, as read, go into ``container`` for the results file."""
        if self._container_pid(proc) is None:
            return  # (it ended before it ran: the harness reports its exit and log)
        version = self.caps.cgroup or "v2"
        name = self._nodes[proc.pid]
        r = self.ex.run([DOCKER, "exec", name, "cat", *CGROUP_FILES[version]], check=False)
        if r.returncode != 0:
            if proc.poll() is not None:
                return
            raise CommandError(r.argv, r.returncode, r.stderr)
        have = parse_limits(r.stdout)
        wrong = limits_mismatch(limits, have)
        if wrong:
            raise CapabilityError(f"the {node}'s container does not hold its limits: {'; '.join(wrong)}")
        if node != "edge":
            return
        self.edge_limits_mechanism = f"docker-cgroup-{version}"
        self.container["edge_limits_read_back"] = {
            "cpus": None if have["cpus"] is None else f"{have['cpus']:g}",
            "cpuset": have["cpuset"],
            "memory": None if have["memory_bytes"] is None else f"{have['memory_bytes'] // 2**20}m",
        }

    def node_pid(self, proc: subprocess.Popen[Any]) -> int:
        """The PID on the host of the node that ``proc`` (from ``popen``) started: its container's main
        process, for psutil and CPU affinities. ``proc``'s own PID when it has ended."""
        if proc.pid not in self._nodes:
            return proc.pid
        if proc.pid not in self._node_pids:
            pid = self._container_pid(proc)
            if pid is None:
                return proc.pid
            self._node_pids[proc.pid] = pid
        return self._node_pids[proc.pid]

    def check(self) -> None:
        """Raise ``HelperExited`` if a delay line or a role's holder container has died (its links are
        down, and no node can start in it)."""
        super().check()
        for role, pid in self._holders.items():
            if not _alive(pid):
                name = container_name(self.config.prefix, role)
                r = self.ex.run([DOCKER, "inspect", "--format", "{{.State.ExitCode}}", name], check=False)
                code = int(r.stdout.strip()) if r.returncode == 0 and r.stdout.strip().isdigit() else -9
                raise HelperExited(name, f"the {role} node's network container {name}", code)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "container": dict(self.container)}


# --------------------------------------------------------------------------------------------------
# Inside a container, where no harness shapes the link: deploy/compose.yaml.


def _interface_to(ex: Executor, peer: str) -> str:
    """The interface this container reaches ``peer`` through (``ip route get``)."""
    words = ex.run(["ip", "-o", "-4", "route", "get", peer]).stdout.split()
    if "dev" not in words:
        raise NetemError(f"no route to {peer} in this container")
    return words[words.index("dev") + 1]


def _local_qdiscs(ex: Executor) -> frozenset[str]:
    """The qdiscs this kernel has, tried on the container's loopback (the host's probe, in one place)."""
    found = set()
    for kind, args in PROBED_QDISCS.items():
        if ex.run(["tc", "qdisc", "add", "dev", "lo", "root", *args], check=False).returncode == 0:
            found.add(kind)
            ex.run(["tc", "qdisc", "del", "dev", "lo", "root"], check=False)
    return frozenset(found)


def shape_here(spec: LinkSpec, peer: str, routes: Sequence[tuple[str, str]], ex: Executor) -> dict[str, str]:
    """Shape the egress of the interface toward ``peer`` with ``spec``, drop the default route and add
    ``routes`` (destination, via); returns the mechanism of each parameter. Refuses (``CapabilityError``)
    what tc cannot apply here: without ``sch_netem`` delay, jitter and loss need the harness's delay line
    (``--isolation docker``), which runs on the host."""
    dev = _interface_to(ex, peer)
    plan = plan_link_end(dev, spec, _local_qdiscs(ex))
    if plan.userspace:
        raise CapabilityError(
            f"this kernel has no netem qdisc, so {', '.join(plan.userspace)} cannot be applied inside the "
            "container; run the experiment through the harness (python -m harness --isolation docker), "
            "whose delay line applies them, or leave them out"
        )
    if spec.rate_bps is not None:
        ex.run(["ip", "link", "set", "dev", dev, "gso_max_segs", "1"])
    for argv in plan.commands:
        ex.run(argv)
    ex.run(["ip", "route", "del", "default"], check=False)
    for dest, via in routes:
        ex.run(["ip", "route", "add", dest, "via", via])
    return dict(plan.applied)


def main(argv: list[str] | None = None) -> int:
    """``python -m netem.run_shape --peer ADDR [--rate R ...] [--route DEST VIA] -- NODE ARGV``"""
    ap = argparse.ArgumentParser(
        prog="python -m netem.run_shape",
        description="Shape this container's end of a link with tc, route through the edge, then run a "
        "node in this process's place (deploy/compose.yaml: the harness does this itself).",
    )
    ap.add_argument("--peer", required=True, help="an address across the link: its interface is shaped")
    for name in ("rate", "delay", "jitter", "loss"):
        ap.add_argument(f"--{name}", default=None, help=f"the link's {name} in tc's notation")
    ap.add_argument("--route", nargs=2, action="append", default=[], metavar=("DEST", "VIA"))
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- then the node's command line")
    args = ap.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        ap.error("give the node's command after --")
    logging.basicConfig(level=logging.INFO, format="netem.run_shape: %(message)s")
    try:
        spec = LinkSpec.parse(rate=args.rate or None, delay=args.delay, jitter=args.jitter, loss=args.loss)
        applied = shape_here(spec, args.peer, [tuple(r) for r in args.route], Executor())
    except NetemError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logger.info("link toward %s: %s", args.peer, applied or "unshaped")
    sys.stdout.flush()
    os.execvp(command[0], command)
