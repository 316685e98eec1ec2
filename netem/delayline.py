"""A packet-level delay line between two TUN devices (the Mahimahi way), for kernels without ``sch_netem``.

Each TUN device sits in one namespace; its file descriptor stays with this process. Every IP packet
read from one descriptor is written into the other after the one-way delay (plus jitter), or dropped
with the loss probability. TCP in the namespaces therefore sees the real round trip: handshake, data
and ACKs all cross the line. Rate stays in the kernel (tbf/htb on the TUN's egress, before the line).

Jitter is uniform in [delay − jitter, delay + jitter] like netem's default, but packet order is kept
(a packet never leaves before the one ahead of it), unlike netem, which reorders; ``--reorder`` gives
netem's behaviour. Loss is independent per packet in each direction (netem's ``loss random``).

Timing: one ``select()`` loop with microsecond timeouts and 1 ns timer slack; no sleeps.
Run as ``python -m netem.run_delayline --fd-a N --fd-b M --delay-us D ...`` by the testbed, which owns it.

Control channel: the line's stdin takes one JSON object a line, ``{"delay_ns": D, "jitter_ns": J,
"loss": P}``, and answers each on stdout with ``CHANGED`` and the values now in force (or ``ERROR`` and
why), so a link schedule can change a running line (:func:`change`). A change applies to the packets
that arrive from then on; those already waiting keep their release times, as with ``tc … change`` of
netem. The order of packets is still kept: after a cut in delay, new packets queue behind the old.
The owner's end closing (EOF) only ends the changes, never the line.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import fcntl
import heapq
import json
import os
import random
import select
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING

from netem import _proc

if TYPE_CHECKING:  # the child process must not import netem.spec: it pulls in models (torch)
    from pathlib import Path

    from netem.spec import LinkSpec

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
MAX_PACKET = 65535
READ_BATCH = 64
"""Packets read per descriptor per wake-up: amortises select() without starving the other direction."""
MAX_QUEUED = 20_000
"""Packets held per direction (~30 MB); the kernel's rate limiter upstream keeps the line far below it."""
NICE = -10
"""Scheduling priority of the delay line (root only): late packets would be measured as network jitter."""
EARLY_NS = 10_000
"""Release packets up to 10 µs early rather than pay another select() for a wake-up that short."""
MAX_CONTROL_LINE = 4096
"""A control message is ~60 bytes; a longer line is not one of ours, and is dropped with an error."""
CONTROL_TIMEOUT_S = 2.0
"""How long :func:`change` waits for the line's answer: it answers in microseconds, between two
packets; two seconds mean it is stuck or starved, and the change cannot be said to be applied."""
CHANGED = "CHANGED"


def open_tun(name: str) -> int:
    """Create TUN device ``name`` (layer 3, no packet-info header) and return its non-blocking fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(frozen=True)
class DelayLineParams:
    delay_ns: int = 0
    jitter_ns: int = 0
    loss: float = 0.0
    reorder: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.delay_ns < 0 or self.jitter_ns < 0:
            raise ValueError("delay and jitter must not be negative")
        if not 0 <= self.loss < 1:
            raise ValueError("loss must be within [0, 1)")

    @classmethod
    def from_spec(cls, spec: LinkSpec, *, seed: int = 0, reorder: bool = False) -> DelayLineParams:
        return cls(round(spec.delay_s * 1e9), round(spec.jitter_s * 1e9), spec.loss, reorder, seed)


@dataclass
class DirectionStats:
    forwarded: int = 0
    lost: int = 0  # dropped on purpose (loss probability)
    overflow: int = 0  # dropped because MAX_QUEUED packets were waiting
    write_errors: int = 0
    bytes: int = 0


@dataclass
class Stats:
    a_to_b: DirectionStats = field(default_factory=DirectionStats)
    b_to_a: DirectionStats = field(default_factory=DirectionStats)


class _Direction:
    """Packets read from one fd, waiting for their release time before being written to the other."""

    def __init__(self, out_fd: int, params: DelayLineParams, rng: random.Random, stats: DirectionStats):
        self.out_fd = out_fd
        self.p = params
        self.rng = rng
        self.stats = stats
        self.fifo: collections.deque[tuple[int, bytes]] = collections.deque()
        self.heap: list[tuple[int, int, bytes]] = []
        self.last_release = 0
        self.seq = 0

    def __len__(self) -> int:
        return len(self.heap) if self.p.reorder else len(self.fifo)

    def push(self, now: int, pkt: bytes) -> None:
        p = self.p
        if p.loss and self.rng.random() < p.loss:
            self.stats.lost += 1
            return
        if len(self) >= MAX_QUEUED:
            self.stats.overflow += 1
            return
        d = p.delay_ns
        if p.jitter_ns:
            d = max(0, d + round(self.rng.uniform(-p.jitter_ns, p.jitter_ns)))
        release = now + d
        if p.reorder:
            self.seq += 1
            heapq.heappush(self.heap, (release, self.seq, pkt))
        else:
            release = max(release, self.last_release)
            self.last_release = release
            self.fifo.append((release, pkt))

    def next_due(self) -> int | None:
        if self.p.reorder:
            return self.heap[0][0] if self.heap else None
        return self.fifo[0][0] if self.fifo else None

    def flush(self, now: int) -> None:
        limit = now + EARLY_NS
        while True:
            due = self.next_due()
            if due is None or due > limit:
                return
            pkt = heapq.heappop(self.heap)[2] if self.p.reorder else self.fifo.popleft()[1]
            try:
                os.write(self.out_fd, pkt)
            except OSError:
                self.stats.write_errors += 1
            else:
                self.stats.forwarded += 1
                self.stats.bytes += len(pkt)


def control_message(delay_ns: int, jitter_ns: int, loss: float) -> bytes:
    """One line of the control channel: the new delay, jitter and loss."""
    return json.dumps({"delay_ns": delay_ns, "jitter_ns": jitter_ns, "loss": loss}).encode() + b"\n"


def apply_control(line: bytes, params: DelayLineParams) -> tuple[DelayLineParams, str]:
    """The parameters a control line asks for (reorder and seed stay), and the answer to send back."""
    if len(line) > MAX_CONTROL_LINE:
        return params, f"ERROR a control line is at most {MAX_CONTROL_LINE} bytes"
    try:
        msg = json.loads(line)
        new = replace(
            params, delay_ns=int(msg["delay_ns"]), jitter_ns=int(msg["jitter_ns"]), loss=float(msg["loss"])
        )
    except (ValueError, TypeError, KeyError) as exc:  # (json's and the params' errors are ValueErrors)
        return params, f"ERROR {type(exc).__name__}: {exc}"
    values = {"delay_ns": new.delay_ns, "jitter_ns": new.jitter_ns, "loss": new.loss}
    return new, f"{CHANGED} {json.dumps(values)}"


class _Control:
    """Reads control lines from the owner's pipe and hands each complete one on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def read(self) -> list[bytes] | None:
        """The complete lines now readable; None once the owner has closed its end."""
        data = os.read(self.fd, MAX_CONTROL_LINE)
        if not data:
            return None
        lines = (self.buf + data).split(b"\n")
        self.buf = lines.pop()
        if len(self.buf) > MAX_CONTROL_LINE:  # (passed on cut short, for apply_control to refuse)
            lines.append(self.buf[: MAX_CONTROL_LINE + 1])
            self.buf = b""
        return lines


def run(
    fd_a: int,
    fd_b: int,
    params: DelayLineParams,
    stats: Stats,
    on_ready: Callable[[], None],
    control_fd: int | None = None,
    on_control: Callable[[str], None] | None = None,
) -> None:
    """Forward packets between ``fd_a`` and ``fd_b`` until a signal handler raises (SystemExit).

    ``control_fd``: where control lines come from (see the module docstring); each is answered through
    ``on_control``.
    """
    rng = random.Random(params.seed)
    to_b = _Direction(fd_b, params, rng, stats.a_to_b)
    to_a = _Direction(fd_a, params, rng, stats.b_to_a)
    route = {fd_a: to_b, fd_b: to_a}
    fds = [fd_a, fd_b]
    control = _Control(control_fd) if control_fd is not None else None
    if control is not None:
        fds.append(control.fd)
    clock = time.monotonic_ns
    on_ready()
    while True:
        now = clock()
        to_b.flush(now)
        to_a.flush(now)
        dues = [d for d in (to_b.next_due(), to_a.next_due()) if d is not None]
        timeout = max(0.0, (min(dues) - now) / 1e9) if dues else None
        readable, _, _ = select.select(fds, [], [], timeout)
        if control is not None and control.fd in readable:
            # (first: a change is applied before the packets that arrived with it are pushed)
            lines = control.read()
            if lines is None:
                fds.remove(control.fd)
                control = None
            for line in lines or ():
                params, answer = apply_control(line, params)
                to_b.p = to_a.p = params
                if on_control is not None:
                    on_control(answer)
        now = clock()
        for fd in readable:
            direction = route.get(fd)
            if direction is None:
                continue
            for _ in range(READ_BATCH):
                try:
                    pkt = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                except OSError:  # device going away during teardown
                    return
                direction.push(now, pkt)


def start(
    fd_a: int,
    fd_b: int,
    params: DelayLineParams,
    *,
    label: str,
    log: Path | None = None,
    timeout_s: float = 10.0,
) -> subprocess.Popen[str]:
    """Start the delay line as an owned child holding ``fd_a``/``fd_b``; returns once it is forwarding.

    The child dies with its parent (PDEATHSIG), and with it the TUN devices, so a killed harness leaves
    no delay line behind. Its stdin is the control channel (:func:`change`). ``label`` (e.g. ``lx1a2b3c-ec``) tags the command line for ``clean``. ``log``:
    the file its stderr is appended to (kept, so that a line that dies later can show why); without it,
    the child writes to our stderr.
    """
    argv = [
        sys.executable,
        "-m",
        "netem.run_delayline",
        "--label",
        label,
        "--fd-a",
        str(fd_a),
        "--fd-b",
        str(fd_b),
        "--delay-ns",
        str(params.delay_ns),
        "--jitter-ns",
        str(params.jitter_ns),
        "--loss",
        repr(params.loss),
        "--seed",
        str(params.seed),
    ]
    if params.reorder:
        argv.append("--reorder")
    with open(log, "ab") if log is not None else contextlib.nullcontext() as stderr:
        # (the child has its own copy of the log's descriptor; ours closes once it is started)
        proc = subprocess.Popen(
            argv,
            pass_fds=(fd_a, fd_b),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            preexec_fn=_proc.die_with_parent,  # noqa: PLW1509 - see die_with_parent
        )
    _proc.wait_ready(proc, f"delay line {label}", timeout_s, log)
    return proc


def change(
    proc: subprocess.Popen[str], spec: LinkSpec, *, timeout_s: float = CONTROL_TIMEOUT_S
) -> dict[str, float]:
    """Give a running delay line (from :func:`start`) the delay, jitter and loss of ``spec``; returns
    once the line has answered that they are in force, with the values it reports.

    One change at a time (the answer is read from the line's stdout): the caller serialises them.
    Raises :class:`~netem.errors.NetemError` if the line refuses, has exited, or does not answer within
    ``timeout_s``.
    """
    from netem.errors import NetemError  # here, not at the top: the child program imports this module

    if proc.stdin is None or proc.stdout is None:
        raise ValueError("the delay line has no control channel: start it with delayline.start")
    want = DelayLineParams.from_spec(spec)
    msg = control_message(want.delay_ns, want.jitter_ns, want.loss)
    try:
        proc.stdin.write(msg.decode())
        proc.stdin.flush()
    except OSError as exc:  # (BrokenPipeError: the line has exited)
        raise NetemError(f"cannot reach the delay line (pid {proc.pid}): {exc.strerror or exc}") from exc
    ready, _, _ = select.select([proc.stdout.fileno()], [], [], timeout_s)
    if not ready:
        raise NetemError(f"the delay line (pid {proc.pid}) did not answer a change within {timeout_s:g} s")
    answer = proc.stdout.readline().strip()
    head, _, body = answer.partition(" ")
    if head != CHANGED:
        why = answer or f"it exited (status {proc.poll()})"
        raise NetemError(
            f"the delay line (pid {proc.pid}) did not take the change {msg.decode().strip()}: {why}"
        )
    values: dict[str, float] = json.loads(body)
    if (values["delay_ns"], values["jitter_ns"], values["loss"]) != (
        want.delay_ns,
        want.jitter_ns,
        want.loss,
    ):
        raise NetemError(f"the delay line (pid {proc.pid}) applied {values}, not {msg.decode().strip()}")
    return values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.run_delayline", description=__doc__.splitlines()[0])
    ap.add_argument("--label", required=True, help="owner tag, e.g. <prefix>-ec")
    ap.add_argument("--fd-a", type=int, required=True)
    ap.add_argument("--fd-b", type=int, required=True)
    ap.add_argument("--delay-ns", type=int, default=0)
    ap.add_argument("--jitter-ns", type=int, default=0)
    ap.add_argument("--loss", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reorder", action="store_true")
    args = ap.parse_args(argv)
    try:
        params = DelayLineParams(args.delay_ns, args.jitter_ns, args.loss, args.reorder, args.seed)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _proc.fine_timer_slack()
    # the line stands in for a network, so it goes ahead of CPU-bound work (training, the nodes) on a
    # busy machine; without root the priority stays as it is
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, NICE)
    stats = Stats()

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    # Ctrl-C reaches the whole process group; the owner decides when the line stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def ready() -> None:
        print("READY", flush=True)

    def answer(text: str) -> None:
        with contextlib.suppress(BrokenPipeError):  # (an owner that is gone asks nothing more)
            print(text, flush=True)

    control = sys.stdin.fileno() if sys.stdin is not None else None
    try:
        run(args.fd_a, args.fd_b, params, stats, ready, control, answer)
    finally:
        _report(stats)
    return 0


def _report(stats: Stats) -> None:
    """Print the counters for the owner, which reads them at teardown. An owner that is gone (killed:
    PDEATHSIG stopped the line) reads nothing, and that is no failure of the line to put in its log."""
    try:
        print(json.dumps({"stats": asdict(stats)}), flush=True)
    except BrokenPipeError:
        # (else the interpreter's last flush of stdout fails the same way, and says so on stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
