"""The testbed: test, edge and cloud nodes in their own namespaces, joined by shaped links.

Topology (``X`` is derived from the prefix; the addresses exist only inside our namespaces)::

    <p>-test  10.77.X.1/30 ──te── 10.77.X.2/30  <p>-edge  10.77.X.5/30 ──ec── 10.77.X.6/30  <p>-cloud

The edge forwards (``ip_forward=1``), so test↔cloud traffic crosses both links. A link is a veth pair
when the kernel can apply all of its spec; when it lacks ``sch_netem`` and the spec has delay, jitter
or loss, the link is a pair of TUN devices with the user-space delay line between them. Rate is always
shaped by tbf/htb on the egress of both ends. Without namespaces (no root), nodes share 127.0.0.1 and
shaped paths go through a TCP relay; what that cannot do is listed in ``not_applied``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from contract.names import ISOLATIONS
from netem import delayline, relay
from netem._proc import (
    arm_fork_signal,
    child_signal_point,
    kill_and_reap,
    log_tail,
    signal_point,
    signals_deferred,
    stop_process,
)
from netem.cgroups import EdgeCgroup
from netem.cleanup import ROLES, cgroup_name, dev_name, ns_name, register_owner, unregister_owner
from netem.errors import CapabilityError, CommandError, HelperExited, NetemError
from netem.executor import Executor
from netem.probe import (
    Capabilities,
    allowed_congestion_controls,
    available_congestion_controls,
    congestion_control,
    probe_capabilities,
)
from netem.spec import LinkSpec, TestbedConfig
from netem.tc import ShapingPlan, plan_link_change, plan_link_end, qdisc_del_argv

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
#: How long teardown waits for the processes it kills by namespace or cgroup to be gone.
KILL_WAIT_S = 2.0
#: The link a schedule changes (``TestbedConfig.schedule``).
SCHEDULED_LINK = "edge_cloud"


def _note(exc: BaseException, text: str) -> None:
    """Attach ``text`` to the exception in flight, for whoever reports it (``add_note`` on 3.11+,
    whose tracebacks show it; the same ``__notes__`` list by hand on 3.10)."""
    if sys.version_info >= (3, 11):
        exc.add_note(text)
    else:
        exc.__dict__.setdefault("__notes__", []).append(text)


def _run_steps(steps: tuple[Callable[[], object], ...]) -> None:
    """``preexec_fn`` of several steps, in order."""
    for step in steps:
        step()


def _enter_and_pin(enter: Callable[[], None] | None, cpus: frozenset[int]) -> None:
    """``preexec_fn``: the cgroup first (its CPU set bounds the affinity), then the CPUs."""
    if enter is not None:
        enter()
    os.sched_setaffinity(0, cpus)


@dataclass(frozen=True)
class _Link:
    name: str  # "test_edge" | "edge_cloud"
    short: str  # "te" | "ec"
    a: str  # node on one side
    b: str
    spec: LinkSpec
    addr_a: str
    addr_b: str


def subnet_octet(prefix: str) -> int:
    """Third octet of the run's 10.77.X.0/29, from the prefix (stable, 1..254)."""
    return int(hashlib.sha256(prefix.encode()).hexdigest(), 16) % 254 + 1


def _links(config: TestbedConfig) -> list[_Link]:
    x = subnet_octet(config.prefix)
    return [
        _Link(
            "test_edge", "te", "test", "edge", config.test_edge or LinkSpec(), f"10.77.{x}.1", f"10.77.{x}.2"
        ),
        _Link("edge_cloud", "ec", "edge", "cloud", config.edge_cloud, f"10.77.{x}.5", f"10.77.{x}.6"),
    ]


class Testbed:
    """Brings the topology up in ``__enter__`` and down, in reverse order, in ``__exit__``.

    ``applied`` maps each link to the mechanism that applied each parameter; ``not_applied`` lists in
    plain words what was asked but not applied (loopback mode only: in namespaces an unapplicable
    parameter is refused with ``CapabilityError`` instead).
    """

    __test__ = False

    def __init__(
        self, config: TestbedConfig, isolation: str, caps: Capabilities, executor: Executor | None = None
    ) -> None:
        self.config = config
        self.isolation = isolation
        self.caps = caps
        self.ex = executor or Executor()
        self.applied: dict[str, dict[str, str]] = {"test_edge": {}, "edge_cloud": {}}
        self.not_applied: list[str] = []
        self.edge_limits_mechanism: str | None = None
        # What the nodes' TCP connections use, read back once the testbed is up (see _up_tcp_congestion)
        self.tcp_congestion_control: dict[str, str | None] = {
            "name": None,
            "mechanism": None,
            "requested": config.tcp_congestion_control,
        }
        self.delay_line_stats: dict[str, Any] = {}
        self._links = _links(config)
        self._plans: dict[str, tuple[ShapingPlan, ShapingPlan]] = {}
        self._undo: list[tuple[str, Callable[[], object]]] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._owned: dict[str, subprocess.Popen[str]] = {}  # delay lines and relays, by label
        self._relays: dict[tuple[str, str, int], int] = {}
        self._helper_logs: dict[str, tuple[str, Path | None]] = {}  # by label in _owned: what, its log
        self._cgroup: EdgeCgroup | None = None
        self._up = False
        if isolation == "netns":
            self._plan_netns()
        self._plan_schedule()

    # ---------------------------------------------------------------- planning (no side effects)
    def _plan_netns(self) -> None:
        p = self.config.prefix
        for link in self._links:
            stage = self._scheduled_delay_stage(link)
            plans = (
                plan_link_end(
                    dev_name(p, link.short, link.a[0]),
                    link.spec,
                    self.caps.qdiscs,
                    netns=ns_name(p, link.a),
                    delay_stage=stage,
                ),
                plan_link_end(
                    dev_name(p, link.short, link.b[0]),
                    link.spec,
                    self.caps.qdiscs,
                    netns=ns_name(p, link.b),
                    delay_stage=stage,
                ),
            )
            if plans[0].userspace and not self.caps.tun:
                raise CapabilityError(
                    f"{link.name}: the kernel has no netem qdisc and /dev/net/tun is unavailable, so "
                    f"{', '.join(plans[0].userspace)} cannot be applied; refusing to run unshaped"
                )
            self._plans[link.name] = plans
            self.applied[link.name] = dict(plans[0].applied)
            for param in plans[0].userspace:
                self.applied[link.name][param] = "tun-delay-line"
        limits = self.config.edge_limits
        if limits is not None and limits.any and self.caps.cgroup is None:
            raise CapabilityError(
                "edge limits need cgroups (v1 cpu/cpuset/memory or v2), which were not found"
            )

    def _scheduled_delay_stage(self, link: _Link) -> bool:
        """Whether a step of the schedule sets delay, jitter or loss on ``link``: then the link has a
        delay stage from the start, though the first step may need none, for the later ones to change."""
        sched = self.config.schedule
        return (
            link.name == SCHEDULED_LINK
            and sched is not None
            and any(step.spec.needs_delay_line for step in sched.steps)
        )

    def _plan_schedule(self) -> None:
        """Refuse, before anything is made, a schedule this testbed cannot apply: on loopback any (the
        relays' parameters are fixed when they start), in namespaces a step the live layout cannot take."""
        sched = self.config.schedule
        if sched is None:
            return
        if self.isolation != "netns":
            raise CapabilityError(
                "a link schedule changes tc qdiscs, the delay line and the edge's cgroup during the run, "
                "which needs the namespaced testbed (run as root); loopback isolation cannot apply it"
            )
        link = self._link(SCHEDULED_LINK)
        for step in sched.steps:
            for end in (link.a, link.b):
                plan_link_change(
                    dev_name(self.config.prefix, link.short, end[0]),
                    step.spec,
                    self.applied[link.name],
                    netns=ns_name(self.config.prefix, end),
                )

    # ---------------------------------------------------------------- lifecycle
    def __enter__(self) -> Testbed:
        self.up()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            self.close()
        except NetemError as err:
            if exc is None:
                raise
            # The error in flight (Ctrl-C, a failed node) is what the caller reports; it must also say
            # what is left, which no log line of ours would say as part of that report.
            _note(exc, str(err))

    def up(self) -> None:
        if self._up:
            raise NetemError("testbed is already up")
        self._up = True
        try:
            if os.geteuid() == 0:  # lets `harness clean` tell this live run from a killed one's leftovers
                with signals_deferred():  # (each thing created here is recorded before a Ctrl-C unwinds)
                    register_owner(self.config.prefix)
                    self._push("unregister owner", functools.partial(unregister_owner, self.config.prefix))
            self._up_nodes()
            self._up_tcp_congestion()
            self._up_cgroup()
        except BaseException as exc:
            try:
                self.close()
            except NetemError as err:
                _note(exc, str(err))
            raise
        logger.info(
            "testbed %s up (%s): applied=%s not_applied=%s",
            self.config.prefix,
            self.isolation,
            self.applied,
            self.not_applied,
        )

    def _up_nodes(self) -> None:
        """Where the nodes run and the links between them (``netem.docker`` overrides it)."""
        if self.isolation == "netns":
            self._up_netns()
        else:
            self._up_loopback()

    def _push(self, what: str, fn: Callable[[], object]) -> None:
        self._undo.append((what, fn))

    def close(self) -> None:
        """Stop our processes, then undo every step in reverse; keeps going past failures and Ctrl-C."""
        errors: list[str] = []
        interrupted: BaseException | None = None
        steps: list[tuple[str, Callable[[], object]]] = [("stop node processes", self._stop_procs)]
        steps += reversed(self._undo)
        self._undo = []
        for what, fn in steps:
            try:
                fn()
            except Exception as exc:
                errors.append(f"{what}: {exc}")
            except BaseException as exc:  # KeyboardInterrupt mid-teardown: finish, then re-raise
                interrupted = interrupted or exc
        self._up = False
        if interrupted is not None:
            raise interrupted
        if errors:
            left = "; ".join(errors)
            raise NetemError(f"teardown incomplete: {left}; `python -m harness clean` removes what is left")

    def _stop_procs(self) -> None:
        for proc in reversed(self._procs):
            stop_process(proc)
        self._procs.clear()

    # ---------------------------------------------------------------- netns
    def _up_netns(self) -> None:
        p, ex = self.config.prefix, self.ex
        for role in ROLES:
            ns = ns_name(p, role)
            with signals_deferred():
                try:
                    ex.run(["ip", "netns", "add", ns])
                except CommandError as exc:
                    # `ip` killed part-way (a terminal's Ctrl-C reaches it as well, or its timeout) may
                    # have made the namespace: its removal is recorded all the same
                    if exc.returncode is None or exc.returncode < 0:
                        self._push(f"delete netns {ns}", functools.partial(self._del_netns, ns))
                    raise
                signal_point("netns")
                self._push(f"delete netns {ns}", functools.partial(self._del_netns, ns))
            ex.run(["ip", "-n", ns, "link", "set", "lo", "up"])
            ex.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-qw",
                    "net.ipv6.conf.all.disable_ipv6=1",
                    "net.ipv6.conf.default.disable_ipv6=1",
                ],
                check=False,
            )
        ex.run(["ip", "netns", "exec", ns_name(p, "edge"), "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        for link in self._links:
            self._up_link(link)
        te, ec = self._links
        ex.run(
            [
                "ip",
                "-n",
                ns_name(p, "test"),
                "route",
                "add",
                f"{ec.addr_a.rsplit('.', 1)[0]}.4/30",
                "via",
                te.addr_b,
            ]
        )
        ex.run(
            [
                "ip",
                "-n",
                ns_name(p, "cloud"),
                "route",
                "add",
                f"{te.addr_a.rsplit('.', 1)[0]}.0/30",
                "via",
                ec.addr_a,
            ]
        )

    def _up_link(self, link: _Link) -> None:
        p, ex = self.config.prefix, self.ex
        ns_a, ns_b = ns_name(p, link.a), ns_name(p, link.b)
        dev_a, dev_b = dev_name(p, link.short, link.a[0]), dev_name(p, link.short, link.b[0])
        plan_a, plan_b = self._plans[link.name]
        if plan_a.userspace:
            with signals_deferred():  # the delay line is recorded before a Ctrl-C unwinds
                self._up_tun_pair(link, ns_a, ns_b, dev_a, dev_b)
        else:
            ex.run(
                [
                    "ip",
                    "link",
                    "add",
                    dev_a,
                    "netns",
                    ns_a,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    dev_b,
                    "netns",
                    ns_b,
                ]
            )
            self._push(f"delete link {dev_a}", lambda: self._del_link(ns_a, dev_a))
        for ns, dev, addr in ((ns_a, dev_a, link.addr_a), (ns_b, dev_b, link.addr_b)):
            if not plan_a.userspace and link.spec.rate_bps is not None:
                # one MTU-sized packet per skb: tbf then counts exactly what goes on the wire, instead of
                # 64 KiB GSO super-packets it must split against a bucket sized for the rate
                ex.run(["ip", "-n", ns, "link", "set", "dev", dev, "gso_max_segs", "1"])
            ex.run(["ip", "-n", ns, "addr", "add", f"{addr}/30", "dev", dev])
            ex.run(["ip", "-n", ns, "link", "set", dev, "up"])
        for ns, dev, plan in ((ns_a, dev_a, plan_a), (ns_b, dev_b, plan_b)):
            if not plan.commands:
                continue
            self._push(f"delete qdisc on {dev}", functools.partial(self._del_qdisc, ns, dev))
            for argv in plan.commands:
                ex.run(argv)

    def _up_tun_pair(self, link: _Link, ns_a: str, ns_b: str, dev_a: str, dev_b: str) -> None:
        label = f"{self.config.prefix}-{link.short}"
        try:
            fd_a = delayline.open_tun(dev_a)
        except OSError as exc:
            raise CapabilityError(f"cannot create TUN device {dev_a}: {exc.strerror}") from exc
        try:
            fd_b = delayline.open_tun(dev_b)
        except OSError as exc:
            os.close(fd_a)
            raise CapabilityError(f"cannot create TUN device {dev_b}: {exc.strerror}") from exc
        try:
            # the devices live as long as an fd holds them: ours until the delay line has its copies
            self.ex.run(["ip", "link", "set", dev_a, "netns", ns_a])
            self.ex.run(["ip", "link", "set", dev_b, "netns", ns_b])
            seed = int(hashlib.sha256(label.encode()).hexdigest()[:8], 16)
            params = delayline.DelayLineParams.from_spec(link.spec, seed=seed)
            log = self._helper_log(f"delay-line-{link.short}.log")
            proc = delayline.start(fd_a, fd_b, params, label=label, log=log)
        finally:
            os.close(fd_a)
            os.close(fd_b)
        self._owned[label] = proc
        what = f"the delay line of the {link.name.replace('_', '–')} link ({label})"
        self._helper_logs[label] = (what, log)
        self._push(f"stop delay line {label}", lambda: self._stop_delay_line(link.name, label))

    def _stop_delay_line(self, link_name: str, label: str) -> None:
        proc = self._owned.pop(label)
        stop_process(proc)
        if proc.stdin is not None:  # (the control channel)
            with contextlib.suppress(OSError):
                proc.stdin.close()
        out = proc.stdout.read() if proc.stdout else ""
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                self.delay_line_stats[link_name] = json.loads(line)["stats"]

    def _del_netns(self, ns: str) -> None:
        """Delete a namespace, after killing whatever still runs in it: ``ip netns del`` only unnames it,
        and its processes would live on (a node whose start was cut short is in no ``_procs``)."""
        pids = [int(p) for p in self.ex.run(["ip", "netns", "pids", ns], check=False).stdout.split()]
        if pids:
            logger.info("killing %s, still in %s", pids, ns)
            left = kill_and_reap(pids, KILL_WAIT_S)
            if left:
                raise NetemError(f"processes {left} in {ns} survived SIGKILL")
        r = self.ex.run(["ip", "netns", "del", ns], check=False)
        if r.returncode != 0 and "No such file" not in r.stderr:  # (never made: see _up_netns)
            raise CommandError(r.argv, r.returncode, r.stderr)

    def _del_link(self, ns: str, dev: str) -> None:
        r = self.ex.run(["ip", "-n", ns, "link", "del", dev], check=False)
        if r.returncode != 0 and "Cannot find device" not in r.stderr and "No such" not in r.stderr:
            raise CommandError(r.argv, r.returncode, r.stderr)

    def _del_qdisc(self, ns: str, dev: str) -> None:
        r = self.ex.run(qdisc_del_argv(dev, netns=ns), check=False)
        if r.returncode != 0 and "Cannot find device" not in r.stderr and "No such" not in r.stderr:
            raise CommandError(r.argv, r.returncode, r.stderr)

    # ---------------------------------------------------------------- loopback
    def _up_loopback(self) -> None:
        for link in self._links:
            spec, applied = link.spec, self.applied[link.name]
            for param, on in (
                ("rate", spec.rate_bps is not None),
                ("delay", spec.delay_s > 0),
                ("jitter", spec.jitter_s > 0),
            ):
                if on:
                    applied[param] = "tcp-relay"
            if spec.delay_s > 0 or spec.jitter_s > 0:
                self.not_applied.append(
                    f"{link.name}: delay as TCP sees it (loopback mode: the relay delays data, not the "
                    "handshake or ACKs; run as root for namespaces and a packet-level delay line)"
                )
            if spec.loss > 0:
                self.not_applied.append(
                    f"{link.name}: packet loss {spec.describe()['loss']} (a TCP relay cannot drop packets; "
                    "run as root for namespaces)"
                )

    def _path_spec(self, src: str, dst: str) -> LinkSpec:
        te, ec = (link.spec for link in self._links)
        pair = {src, dst}
        if pair == {"test", "edge"}:
            return te
        if pair == {"edge", "cloud"}:
            return ec
        return te.then(ec)

    # ---------------------------------------------------------------- TCP congestion control
    def _up_tcp_congestion(self) -> None:
        """Set the requested congestion control in each node's namespace (a per-namespace sysctl: the
        machine's own stays as it is) and read back what the nodes' connections get. On loopback the
        machine's setting is in force; one that differs from a request is listed as not applied."""
        want = self.config.tcp_congestion_control
        if self.isolation == "netns":
            names = set()
            for role in ROLES:
                ns = ns_name(self.config.prefix, role)
                if want is not None:
                    r = self.ex.run(
                        ["ip", "netns", "exec", ns, "sysctl", "-qw", f"{TCP_CC_SYSCTL}={want}"], check=False
                    )
                    if r.returncode != 0:
                        allowed = allowed_congestion_controls()
                        if allowed and want not in allowed and want in available_congestion_controls():
                            raise CapabilityError(
                                f"TCP congestion control {want!r} is not allowed in network namespaces on "
                                f"this machine (allowed: {', '.join(allowed)}); choose one of those, or "
                                "allow it first: sysctl -w net.ipv4.tcp_allowed_congestion_control="
                                f"'{' '.join([*allowed, want])}'"
                            )
                        raise CapabilityError(
                            f"TCP congestion control {want!r} cannot be set ({r.stderr.strip() or 'sysctl failed'}); "
                            f"this kernel has: {', '.join(available_congestion_controls()) or 'unknown'}"
                        )
                r = self.ex.run(["ip", "netns", "exec", ns, "sysctl", "-n", TCP_CC_SYSCTL])
                names.add(r.stdout.strip())
            if len(names) != 1 or (want is not None and names != {want}):
                raise NetemError(
                    f"the nodes' namespaces report TCP congestion control {sorted(names)}, not {want}"
                )
            self.tcp_congestion_control.update(
                name=names.pop(), mechanism="sysctl-netns" if want is not None else "kernel-default"
            )
            return
        current = congestion_control()
        self.tcp_congestion_control.update(name=current, mechanism="machine-setting" if current else None)
        if want is not None and want != current:
            self.not_applied.append(
                f"TCP congestion control {want} (loopback mode: the machine's, {current or 'unknown'}, is in "
                "force; run as root for namespaces of the nodes' own)"
            )

    # ---------------------------------------------------------------- cgroup
    def _up_cgroup(self) -> None:
        limits = self.config.edge_limits
        if limits is None or not limits.any:
            return
        if not self.caps.root or self.caps.cgroup is None:
            self.not_applied.append(
                f"edge limits {limits.describe()}: need root and cgroups; the edge runs without them"
            )
            return
        with signals_deferred():
            cg = self._cgroup = EdgeCgroup.create(cgroup_name(self.config.prefix), limits, self.caps.cgroup)
            signal_point("cgroup")
            self._push("remove edge cgroup", cg.remove)
        self.edge_limits_mechanism = f"cgroup-{self.caps.cgroup}"

    # ---------------------------------------------------------------- the API nodes use
    def _check_node(self, node: str) -> None:
        if node not in ROLES:
            raise ValueError(f"node must be one of {ROLES}, got {node!r}")

    def bind_address(self, node: str) -> str:
        """The IP ``node`` listens on (reachable from both other nodes)."""
        self._check_node(node)
        if self.isolation == "loopback":
            return LOOPBACK
        te, ec = self._links
        return {"test": te.addr_a, "edge": te.addr_b, "cloud": ec.addr_b}[node]

    def connect_address(self, src: str, dst: str, port: int) -> tuple[str, int]:
        """Where ``src`` reaches ``dst``'s listener on ``port``; in loopback mode maybe a shaping relay."""
        self._check_node(src)
        self._check_node(dst)
        if not 0 < port < 65536:
            raise ValueError(f"port must be in 1..65535, got {port}")
        if self.isolation == "netns" or src == dst:
            return self.bind_address(dst), port
        spec = self._path_spec(src, dst)
        if spec.rate_bps is None and spec.delay_s == 0 and spec.jitter_s == 0:
            return LOOPBACK, port
        key = (src, dst, port)
        if key not in self._relays:
            if not self._up:
                raise NetemError("the testbed is not up")
            label = f"{self.config.prefix}-rl"
            log = self._helper_log(f"relay-{src}-{dst}-{port}.log")
            with signals_deferred():  # the relay is recorded before a Ctrl-C unwinds
                proc, relay_port = relay.start(
                    relay.RelayParams.from_spec(spec), (LOOPBACK, port), label=label, log=log
                )
                owned = f"{label}{len(self._relays)}"
                self._owned[owned] = proc
                self._push(f"stop relay {src}->{dst}", functools.partial(stop_process, proc))
            self._helper_logs[owned] = (f"the relay from the {src} to the {dst} node ({owned})", log)
            self._relays[key] = relay_port
        return LOOPBACK, self._relays[key]

    def popen(
        self, node: str, argv: Sequence[str], *, cpus: Collection[int] | None = None, **kw: Any
    ) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``node``'s namespace (the edge also in its cgroup, before it execs).

        ``cpus``: the CPUs the process (and every thread it starts) may run on, set before it execs
        (``sched_setaffinity``; inside the edge's CPU set, if it has one). Sets ``OMP_NUM_THREADS`` for
        the edge to ``edge_threads()`` unless ``env`` is given. The testbed stops the process (by PID) at
        teardown if it is still running.
        """
        self._check_node(node)
        if not self._up:
            raise NetemError("the testbed is not up; use it as `with make_testbed(...) as tb:`")
        if "preexec_fn" in kw or "shell" in kw:
            raise ValueError("popen takes no preexec_fn or shell: the testbed sets the process up itself")
        args = list(argv)
        if self.isolation == "netns":
            args = ["ip", "netns", "exec", ns_name(self.config.prefix, node), *args]
        enter = None
        if node == "edge":
            threads = self.edge_threads()
            if threads is not None and "env" not in kw:
                kw["env"] = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
            if self._cgroup is not None:
                enter = self._cgroup.enter
        if cpus is not None:
            kw["preexec_fn"] = functools.partial(_enter_and_pin, enter, frozenset(cpus))
        elif enter is not None:
            kw["preexec_fn"] = enter
        hook = child_signal_point(f"{node}.preexec")  # (a test hook: see netem._proc.SIGNAL_AT_ENV)
        if hook is not None:
            setup = kw.get("preexec_fn")
            kw["preexec_fn"] = hook if setup is None else functools.partial(_run_steps, (setup, hook))
        logger.info("popen on %s: %s", node, args)
        signal_point(f"{node}.popen")
        # A Ctrl-C during the start waits until the child is in _procs: teardown then stops it, and
        # one in the fork's hooks is not dropped (see signals_deferred).
        with signals_deferred():
            if "preexec_fn" in kw:
                arm_fork_signal(f"{node}.fork")
            proc = subprocess.Popen(args, **kw)
            signal_point(f"{node}.spawned")
            self._procs.append(proc)
        return proc

    # ---------------------------------------------------------------- changes during a run
    def _link(self, name: str) -> _Link:
        for link in self._links:
            if link.name == name:
                return link
        raise ValueError(f"no link {name!r}; the links are {[link.name for link in self._links]}")

    def change_link(self, spec: LinkSpec, link: str = SCHEDULED_LINK) -> dict[str, str]:
        """Turn the live ``link`` into ``spec``; returns the mechanism that applied each parameter.

        ``tc … change`` on both ends' qdiscs (each command logged, its status checked: a failure raises
        ``CommandError``), and the delay line's delay, jitter and loss through its control channel,
        answered before this returns. The layout stays as brought up: a step it cannot take (see
        :func:`netem.tc.plan_link_change`) raises ``SpecError``, which the schedule given in the config
        was checked against before anything was made.
        """
        if self.isolation != "netns" or not self._up:
            raise NetemError("a link can be changed only on a namespaced testbed that is up")
        lk = self._link(link)
        p = self.config.prefix
        plans = [
            plan_link_change(
                dev_name(p, lk.short, end[0]), spec, self.applied[lk.name], netns=ns_name(p, end)
            )
            for end in (lk.a, lk.b)
        ]
        # The two ends and the delay line are independent: changed at once, the change takes as long as
        # the slowest of them rather than their sum (each ``tc`` is a process start, milliseconds apiece
        # on a busy machine), and both directions change together.
        tasks: list[Callable[[], object]] = [
            functools.partial(self._run_all, plan.commands) for plan in plans if plan.commands
        ]
        mechanisms = dict(plans[0].applied)
        if plans[0].userspace:
            label = f"{p}-{lk.short}"
            d = spec.describe()
            logger.info(
                "delay line %s: delay %s jitter %s loss %s", label, d["delay"], d["jitter"], d["loss"]
            )
            tasks.append(functools.partial(delayline.change, self._owned[label], spec))
            mechanisms.update(dict.fromkeys(plans[0].userspace, "tun-delay-line"))
        with concurrent.futures.ThreadPoolExecutor(max(1, len(tasks))) as pool:
            for future in [pool.submit(task) for task in tasks]:
                future.result()  # (the first failure is raised once every task has ended)
        return mechanisms

    def _run_all(self, commands: list[list[str]]) -> None:
        for argv in commands:
            self.ex.run(argv)

    def change_edge_cpus(self, cpus: float) -> dict[str, str]:
        """Set the edge's CPU quota to ``cpus`` cores on its live cgroup; returns ``{"cpus": mechanism}``.

        The edge keeps the thread count of its first quota (``edge_threads``): a process cannot be given
        other threads from outside, and a smaller quota over the same threads is what a busier device is.
        """
        if self._cgroup is None:
            raise NetemError(
                "the edge has no cgroup with a CPU quota to change (bring the testbed up with edge_limits.cpus)"
            )
        self._cgroup.set_cpus(cpus)
        return {"cpus": self.edge_limits_mechanism or "cgroup"}

    def edge_threads(self) -> int | None:
        """PyTorch threads for the edge that match its CPU quota / CPU set; None without limits."""
        limits = self.config.edge_limits
        return None if limits is None else limits.threads()

    def helper_pids(self) -> dict[str, int]:
        """PIDs of the testbed's own helpers (delay lines ``<prefix>-te``/``-ec``, relays), e.g. for CPU cost."""
        return {label: proc.pid for label, proc in self._owned.items() if proc.poll() is None}

    def _helper_log(self, name: str) -> Path | None:
        """The file in ``config.log_dir`` a delay line or relay appends its stderr to; None without a
        log directory (the helper then writes to our stderr)."""
        if self.config.log_dir is None:
            return None
        self.config.log_dir.mkdir(parents=True, exist_ok=True)
        return self.config.log_dir / name

    def check(self) -> None:
        """Raise ``HelperExited`` if one of our delay lines or relays has died (the link it carries is
        down), with its exit status and the tail of its log."""
        for label, proc in self._owned.items():
            if proc.poll() is not None:
                what, log = self._helper_logs.get(label, (label, None))
                tail = log_tail(log) if log is not None else ""
                raise HelperExited(label, what, proc.returncode, tail, str(log) if log else None)

    def describe(self) -> dict[str, Any]:
        """For the results file: isolation, link specs, mechanisms, what was not applied, edge limits."""
        limits = self.config.edge_limits
        return {
            "isolation": self.isolation,
            "links": {
                link.name: (
                    None
                    if link.name == "test_edge" and self.config.test_edge is None
                    else link.spec.describe()
                )
                for link in self._links
            },
            "link_backend": self.applied,
            "not_applied": list(self.not_applied),
            "edge_limits": {
                **(limits.describe() if limits else {"cpus": None, "cpuset": None, "memory": None}),
                "mechanism": self.edge_limits_mechanism,
            },
            "tcp_congestion_control": dict(self.tcp_congestion_control),
        }


TCP_CC_SYSCTL = "net.ipv4.tcp_congestion_control"


def make_testbed(
    config: TestbedConfig, *, isolation: str = "auto", caps: Capabilities | None = None
) -> Testbed:
    """Plan a testbed (nothing is created until ``with``/``up()``); refuse what cannot be applied.

    ``isolation``: ``netns`` (needs root and iproute2), ``loopback`` (no root: 127.0.0.1 and relays),
    ``docker`` (containers, ``netem.docker``: root, a Docker daemon and the node image), or ``auto``
    (netns where possible).
    """
    if isolation not in ISOLATIONS:
        raise ValueError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    if caps is None:
        with signals_deferred():  # the probe's scratch namespace is removed before a Ctrl-C unwinds
            caps = probe_capabilities()
    if isolation == "docker":
        from netem.docker import DockerTestbed  # (it builds on this module)

        return DockerTestbed(config, caps)
    can_netns = caps.root and caps.iproute2 and caps.netns
    if isolation == "auto":
        isolation = "netns" if can_netns else "loopback"
        if isolation == "loopback":
            # (info, not a warning: the caller tells the user, or refuses what loopback cannot apply)
            logger.info("no namespaces (%s): nodes run on loopback", "; ".join(caps.notes) or "unknown")
    elif isolation == "netns" and not can_netns:
        raise CapabilityError(
            "network namespaces unavailable: "
            + ("; ".join(caps.notes) or "unknown reason")
            + " (run as root, or use isolation='loopback')"
        )
    return Testbed(config, isolation, caps)
