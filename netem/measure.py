"""Tiny network probes run inside the testbed's namespaces to check what a link really does.

``python -m netem.measure <tool> ...``; servers print ``READY <port>`` once listening, every tool
prints one JSON line with its result. All namespaces share ``CLOCK_MONOTONIC``, so the UDP probe
measures one-way delay exactly.

* ``echo`` / ``ping``: TCP round-trip time of small messages, and of the handshake (``connect_ms``);
* ``sink`` / ``send``: TCP bulk goodput measured at the receiver after a warm-up;
* ``udp-recv`` / ``udp-send``: one-way delay distribution (jitter) and loss of numbered datagrams.
"""

from __future__ import annotations

import argparse
import itertools
import json
import socket
import struct
import sys
import time
from typing import Any

CONNECT_TIMEOUT_S = 10.0
IO_TIMEOUT_S = 30.0
"""Per socket operation; a shaped test link at 1 mbit with 50 ms delay answers far faster."""
_UDP_HEADER = struct.Struct("!QQ")  # sequence number, send time (monotonic ns)


def _emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


def _listen(host: str, port: int, kind: int = socket.SOCK_STREAM) -> socket.socket:
    s = socket.socket(socket.AF_INET, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    if kind == socket.SOCK_STREAM:
        s.listen(8)
    print(f"READY {s.getsockname()[1]}", flush=True)
    return s


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed mid-message")
        buf += chunk
    return bytes(buf)


def echo(host: str, port: int, connections: int) -> None:
    with _listen(host, port) as srv:
        for _ in range(connections):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(IO_TIMEOUT_S)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(65536):
                    conn.sendall(data)


def ping(host: str, port: int, count: int, size: int, interval: float) -> None:
    t0 = time.perf_counter_ns()
    conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    connect_ms = (time.perf_counter_ns() - t0) / 1e6
    rtts = []
    with conn:
        conn.settimeout(IO_TIMEOUT_S)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"x" * size
        for _ in range(count):
            t = time.perf_counter_ns()
            conn.sendall(msg)
            _recv_exact(conn, size)
            rtts.append((time.perf_counter_ns() - t) / 1e6)
            time.sleep(interval)
    _emit({"connect_ms": connect_ms, "rtt_ms": rtts})


def sink(host: str, port: int, warmup_s: float) -> None:
    with _listen(host, port) as srv:
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(IO_TIMEOUT_S)
        total = 0
        first = mark = last = 0
        at_mark = 0
        while data := conn.recv(1 << 18):
            now = time.monotonic_ns()
            if not first:
                first = now
            total += len(data)
            if not mark and now - first >= warmup_s * 1e9:
                mark, at_mark = now, total
            last = now
    span = (last - mark) / 1e9 if mark else 0.0
    goodput = (total - at_mark) * 8 / span if span > 0 else 0.0
    _emit({"bytes": total, "seconds": span, "goodput_bps": goodput, "warmup_s": warmup_s})


def send(host: str, port: int, seconds: float) -> None:
    conn = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S)
    sent = 0
    with conn:
        conn.settimeout(IO_TIMEOUT_S)
        chunk = b"\0" * 65536
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            conn.sendall(chunk)
            sent += len(chunk)
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(4096):  # wait for the sink to finish reading
            pass
    _emit({"sent": sent})


def udp_recv(host: str, port: int, count: int, idle_s: float) -> None:
    with _listen(host, port, socket.SOCK_DGRAM) as s:
        s.settimeout(IO_TIMEOUT_S)
        owd: list[float] = []
        seqs: list[int] = []
        try:
            while len(owd) < count:
                data = s.recv(65536)
                now = time.monotonic_ns()
                seq, sent = _UDP_HEADER.unpack_from(data)
                owd.append((now - sent) / 1e6)
                seqs.append(seq)
                s.settimeout(idle_s)
        except TimeoutError:
            pass
    reordered = sum(1 for a, b in itertools.pairwise(seqs) if b < a)
    _emit({"received": len(owd), "owd_ms": owd, "reordered": reordered})


def udp_send(host: str, port: int, count: int, interval: float, size: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        pad = b"\0" * max(0, size - _UDP_HEADER.size)
        nxt = time.monotonic()
        for seq in range(count):
            s.sendto(_UDP_HEADER.pack(seq, time.monotonic_ns()) + pad, (host, port))
            nxt += interval
            time.sleep(max(0.0, nxt - time.monotonic()))
    _emit({"sent": count})


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m netem.measure", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="tool", required=True)
    for name in ("echo", "sink", "udp-recv"):
        p = sub.add_parser(name)
        p.add_argument("--bind", required=True)
        p.add_argument("--port", type=int, default=0)
    for name in ("ping", "send", "udp-send"):
        p = sub.add_parser(name)
        p.add_argument("--to", required=True, help="HOST:PORT")
    sub.choices["echo"].add_argument("--connections", type=int, default=1)
    sub.choices["sink"].add_argument("--warmup", type=float, default=1.0)
    sub.choices["udp-recv"].add_argument("--count", type=int, required=True)
    sub.choices["udp-recv"].add_argument("--idle", type=float, default=1.0)
    sub.choices["ping"].add_argument("--count", type=int, default=20)
    sub.choices["ping"].add_argument("--size", type=int, default=64)
    sub.choices["ping"].add_argument("--interval", type=float, default=0.005)
    sub.choices["send"].add_argument("--seconds", type=float, default=3.0)
    sub.choices["udp-send"].add_argument("--count", type=int, required=True)
    sub.choices["udp-send"].add_argument("--interval", type=float, default=0.002)
    sub.choices["udp-send"].add_argument("--size", type=int, default=200)
    a = ap.parse_args(argv)
    host, port = "", 0
    if hasattr(a, "to"):
        h, _, p_ = a.to.rpartition(":")
        if not h or not p_.isdigit():
            print(f"error: --to {a.to!r} must be HOST:PORT", file=sys.stderr)
            return 2
        host, port = h, int(p_)
    try:
        if a.tool == "echo":
            echo(a.bind, a.port, a.connections)
        elif a.tool == "ping":
            ping(host, port, a.count, a.size, a.interval)
        elif a.tool == "sink":
            sink(a.bind, a.port, a.warmup)
        elif a.tool == "send":
            send(host, port, a.seconds)
        elif a.tool == "udp-recv":
            udp_recv(a.bind, a.port, a.count, a.idle)
        else:
            udp_send(host, port, a.count, a.interval, a.size)
    except OSError as exc:
        print(f"error: {a.tool}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
