"""What the harness runs on each host of a hosts file (``python -m harness.remote_node COMMAND``).

Started over ssh (or directly, for a node on the harness's own machine), from the project on that host:

* ``env``: this host's environment as one JSON line (versions, kernel, root, tc's qdiscs), checked
  before anything starts;
* ``prepare --dir RUN``: the run's folder (mode 700), with the nodes' token read from stdin;
* ``run --dir RUN --name NAME -- ARGV``: run a node. It gets a process group of its own (``setsid``),
  recorded in ``RUN/NAME.pid`` so that the harness -- or a later ``clean`` -- stops all of it with
  ``kill -TERM -PGID``; this launcher waits for it and exits with its exit status (128 + N for a node
  killed by signal N, with a line saying so on stderr). When the ssh session that started it ends (the
  harness was killed, the connection dropped), the launcher sees its stdout's reader go away and stops
  the node, so a lost harness leaves no node running;
* ``signal --dir RUN --name NAME --signal TERM|KILL``: signal a node's process group;
* ``shape --dir RUN --peer ADDR [--rate ...]``: shape this host's egress towards ``ADDR`` with tc (htb,
  only what goes to ``ADDR``: :func:`shaping_argvs`);
* ``stop --dir RUN``: stop every node of the run, remove its qdiscs and its folder;
* ``clean --state-dir DIR [--skip PREFIX,...]``: ``stop`` every run folder under ``DIR`` but those.

Each prints what it did as JSON on stdout (``run`` prints the node's output) and one ``error: ...``
line on stderr with exit code 2 when it cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nodes.cli import TOKEN_ENV

#: The launcher checks this often whether its ssh session is still there.
HANGUP_POLL_S = 0.5
#: How long a node gets after SIGTERM before its group is killed (``stop``, ``clean``, a lost session).
STOP_GRACE_S = 5.0
PID_SUFFIX = ".pid"
TOKEN_FILE = "token"
QDISC_FILE = "qdiscs"
#: Run folders are named by the run's prefix (``lx`` + hex digits), nothing else is touched by clean.
RUN_PREFIX = "lx"


class RemoteError(Exception):
    """Something this host cannot do; printed as one ``error:`` line, exit code 2."""


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, sort_keys=True) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# env


def _qdiscs() -> list[str]:
    """The qdiscs tc can use here (probed in a scratch namespace, as on the harness's machine)."""
    from netem.probe import probe_capabilities

    return sorted(probe_capabilities().qdiscs)


def cmd_env(_args: argparse.Namespace) -> int:
    from harness.environment import collect_environment

    env = collect_environment()
    root = os.geteuid() == 0
    env["project"] = str(Path(__file__).resolve().parent.parent)
    env["tc"] = shutil.which("tc") is not None and shutil.which("ip") is not None
    env["qdiscs"] = _qdiscs() if root and env["tc"] else []
    env["boot_id"] = _boot_id()
    _print_json(env)
    return 0


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------------
# prepare, run, signal


def _run_dir(text: str) -> Path:
    path = Path(text)
    if not path.is_absolute() or not path.name.startswith(RUN_PREFIX):
        raise RemoteError(f"a run folder is an absolute path named {RUN_PREFIX}…, not {text!r}")
    return path


def cmd_prepare(args: argparse.Namespace) -> int:
    run = _run_dir(args.dir)
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(run, 0o700)
    token = sys.stdin.readline().strip()
    fd = os.open(run / TOKEN_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    _print_json({"prepared": str(run)})
    return 0


def _session_gone(fd: int) -> bool:
    """Whether the reader of ``fd`` (our stdout: ssh's channel, or the harness's pipe) has gone away."""
    poller = select.poll()
    try:
        poller.register(fd, 0)  # (POLLERR and POLLHUP are reported whatever is asked for)
    except (OSError, ValueError):
        return False
    gone = select.POLLERR | select.POLLHUP | select.POLLNVAL
    return any(events & gone for _fd, events in poller.poll(0))


def _watches_session(fd: int) -> bool:
    """Only a pipe or socket says when its reader has gone; a log file never does."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    import stat

    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float = STOP_GRACE_S, *, ours: bool = False) -> bool:
    """SIGTERM the process group, SIGKILL it after ``grace_s``; False when it was already gone.
    ``ours``: its leader is our child, which only we can reap (a zombie still counts in its group)."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if ours:
            with contextlib.suppress(ChildProcessError):
                if os.waitid(os.P_PID, pgid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break  # (the leader has ended; the caller collects it)
        if not _group_alive(pgid):
            break
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    return True


def cmd_run(args: argparse.Namespace) -> int:
    run = _run_dir(args.dir)
    argv = list(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    if not argv:
        raise RemoteError("run needs the node's command after --")
    env = dict(os.environ)
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep:
            raise RemoteError(f"--env takes NAME=VALUE, not {pair!r}")
        env[key] = value
    token_file = run / TOKEN_FILE
    if token_file.is_file():
        env[TOKEN_ENV] = token_file.read_text().strip()
    cwd = args.cwd or None
    pid = os.fork()
    if pid == 0:  # the node: a process group (and session) of its own, then its program
        try:
            os.setsid()
            if cwd:
                os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"error: cannot start {argv[0]}: {exc.strerror or exc}\n".encode())
        os._exit(127)
    (run / f"{args.name}{PID_SUFFIX}").write_text(f"{pid}\n")

    def forward(signum: int, _frame: object) -> None:  # (stopping the launcher stops the node)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = _wait_child(pid, watch_session=_watches_session(1))
    with contextlib.suppress(OSError):
        (run / f"{args.name}{PID_SUFFIX}").unlink()
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "?"
        sys.stderr.write(f"the {args.name} node was killed by signal {signum} ({name})\n")
        sys.stderr.flush()
        return 128 + signum
    return os.WEXITSTATUS(status)


def _wait_child(pid: int, *, watch_session: bool) -> int:
    """Wait for the node ``pid`` (our child) and return its wait status. Sleeps in one ``poll`` on the
    child (a pidfd) and on our stdout, so that its end is seen at once and, with ``watch_session``, the
    end of the ssh session too (then the node is stopped)."""
    poller = select.poll()
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    if watch_session:
        poller.register(1, 0)  # (POLLERR and POLLHUP are always reported)
    try:
        while True:
            ready = {fd: events for fd, events in poller.poll(HANGUP_POLL_S * 1000)}
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return status
            if 1 in ready and _session_gone(1):
                sys.stderr.write("the session that started this node ended: stopping it\n")
                poller.unregister(1)
                stop_group(pid, ours=True)
    finally:
        os.close(pidfd)


def _pgid(run: Path, name: str) -> int | None:
    try:
        return int((run / f"{name}{PID_SUFFIX}").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cmd_signal(args: argparse.Namespace) -> int:
    run = _run_dir(args.dir)
    pgid = _pgid(run, args.name)
    sent = False
    if pgid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, getattr(signal, f"SIG{args.signal}"))
            sent = True
    _print_json({"signalled": sent, "pgid": pgid})
    return 0


# --------------------------------------------------------------------------------------------------
# shape


def _route_dev(peer: str) -> str:
    words = subprocess.run(
        ["ip", "-o", "route", "get", peer], check=True, capture_output=True, text=True
    ).stdout.split()
    if "dev" not in words:
        raise RemoteError(f"no route to {peer} on this host")
    return words[words.index("dev") + 1]


#: The class of every packet not bound for the peer: no limit worth the name.
UNLIMITED = "100gbit"


def shaping_argvs(
    dev: str, peer: str, spec: Any, qdiscs: frozenset[str]
) -> tuple[list[list[str]], dict[str, str]]:
    """tc commands that shape only the traffic from ``dev`` to ``peer``, and the mechanism of each
    parameter. With ``htb``: an htb root whose default class lets everything else through, a u32 filter
    that sends packets for ``peer`` to a class at the link's rate, and under that class netem (delay,
    jitter, loss, where the kernel has it) or a byte FIFO of the link's queue. Without ``htb``, ``tbf``
    at the root shapes all of ``dev``'s egress (said in the mechanism). Parameters the kernel cannot
    apply are left out of the mechanisms, for the caller to report."""
    from netem.tc import burst_bytes, limit_bytes, netem_argv, netem_limit_packets, tbf_argv

    stage = {"delay": spec.delay_s > 0, "jitter": spec.jitter_s > 0, "loss": spec.loss > 0}
    use_netem = any(stage.values()) and "netem" in qdiscs
    applied: dict[str, str] = {}
    if "htb" not in qdiscs:
        if spec.rate_bps is None or "tbf" not in qdiscs:
            return [], {}
        argv = tbf_argv(dev, spec.rate_bps, limit=limit_bytes(spec))
        return [argv], {"rate": "tbf (all of the interface's egress)"}
    tc = ["tc"]
    rate = f"{spec.rate_bps}bit" if spec.rate_bps is not None else UNLIMITED
    burst = str(burst_bytes(spec.rate_bps)) if spec.rate_bps is not None else str(burst_bytes(10**9))
    commands = [
        [*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "2"],
        [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:2", "htb", "rate", UNLIMITED],
        [*tc, "class", "add", "dev", dev, "parent", "1:", "classid", "1:1", "htb",
         "rate", rate, "ceil", rate, "burst", burst, "cburst", burst],
        [*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "dst", f"{peer}/32", "flowid", "1:1"],
    ]  # fmt: skip
    if spec.rate_bps is not None:
        applied["rate"] = "htb"
    if use_netem:
        commands.append(
            netem_argv(
                dev,
                delay_s=spec.delay_s,
                jitter_s=spec.jitter_s,
                loss=spec.loss,
                limit_packets=netem_limit_packets(spec),
                parent="1:1",
                handle="10:",
            )
        )
        applied.update({name: "netem" for name, on in stage.items() if on})
    elif spec.rate_bps is not None:
        commands.append(
            [*tc, "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", "bfifo",
             "limit", str(limit_bytes(spec))]
        )  # fmt: skip
    return commands, applied


def cmd_shape(args: argparse.Namespace) -> int:
    from netem.spec import LinkSpec

    run = _run_dir(args.dir)
    if os.geteuid() != 0:
        raise RemoteError("shaping needs root on this host")
    spec = LinkSpec.parse(rate=args.rate, delay=args.delay, jitter=args.jitter, loss=args.loss)
    dev = _route_dev(args.peer)
    commands, applied = shaping_argvs(dev, args.peer, spec, frozenset(_qdiscs()))
    with open(run / QDISC_FILE, "a", encoding="utf-8") as fh:  # (first: a half-shaped link is cleaned)
        fh.write(dev + "\n")
    for argv in commands:
        r = subprocess.run(argv, check=False, capture_output=True, text=True)
        if r.returncode != 0:
            raise RemoteError(f"{' '.join(argv)} failed: {r.stderr.strip()}")
    _print_json({"dev": dev, "applied": applied, "commands": commands})
    return 0


# --------------------------------------------------------------------------------------------------
# stop, clean


def stop_run(run: Path, grace_s: float = STOP_GRACE_S) -> list[str]:
    """Stop every node of the run folder ``run``, remove its qdiscs and the folder; what was removed."""
    removed: list[str] = []
    for pidfile in sorted(run.glob(f"*{PID_SUFFIX}")):
        pgid = _pgid(run, pidfile.name.removesuffix(PID_SUFFIX))
        if pgid is not None and stop_group(pgid, grace_s):
            removed.append(f"process group {pgid} ({pidfile.name.removesuffix(PID_SUFFIX)} node)")
    qdisc_file = run / QDISC_FILE
    if qdisc_file.is_file():
        for dev in dict.fromkeys(qdisc_file.read_text().split()):
            r = subprocess.run(["tc", "qdisc", "del", "dev", dev, "root"], check=False, capture_output=True)
            if r.returncode == 0:
                removed.append(f"qdisc on {dev}")
    if run.is_dir():
        shutil.rmtree(run, ignore_errors=True)
        removed.append(f"folder {run}")
    return removed


def cmd_stop(args: argparse.Namespace) -> int:
    _print_json({"removed": stop_run(_run_dir(args.dir), args.grace)})
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    skip = {p for p in args.skip.split(",") if p}
    removed: list[str] = []
    if state.is_dir():
        for run in sorted(state.glob(f"{RUN_PREFIX}*")):
            if run.is_dir() and run.name not in skip:
                removed += stop_run(run, args.grace)
    _print_json({"removed": removed})
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.remote_node", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("env", help="this host's environment as JSON")
    prep = sub.add_parser("prepare", help="make the run's folder; the token comes on stdin")
    prep.add_argument("--dir", required=True)
    run = sub.add_parser("run", help="run a node in a process group of its own")
    run.add_argument("--dir", required=True)
    run.add_argument("--name", required=True)
    run.add_argument("--cwd", default=None)
    run.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    run.add_argument("argv", nargs=argparse.REMAINDER)
    sig = sub.add_parser("signal", help="signal a node's process group")
    sig.add_argument("--dir", required=True)
    sig.add_argument("--name", required=True)
    sig.add_argument("--signal", choices=("TERM", "KILL"), default="TERM")
    shape = sub.add_parser("shape", help="shape this host's egress towards a peer")
    shape.add_argument("--dir", required=True)
    shape.add_argument("--peer", required=True)
    for name in ("rate", "delay", "jitter", "loss"):
        shape.add_argument(f"--{name}", default=None)
    stop = sub.add_parser("stop", help="stop a run's nodes, remove its qdiscs and folder")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--grace", type=float, default=STOP_GRACE_S)
    clean = sub.add_parser("clean", help="stop every run under a state folder but the live ones")
    clean.add_argument("--state-dir", required=True)
    clean.add_argument("--skip", default="", metavar="PREFIX,...")
    clean.add_argument("--grace", type=float, default=STOP_GRACE_S)
    return p


COMMANDS = {
    "env": cmd_env,
    "prepare": cmd_prepare,
    "run": cmd_run,
    "signal": cmd_signal,
    "shape": cmd_shape,
    "stop": cmd_stop,
    "clean": cmd_clean,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (RemoteError, OSError, ValueError, subprocess.CalledProcessError) as exc:
        print(f"error: {platform.node()}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
