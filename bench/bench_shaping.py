"""Shaping accuracy of the netem testbed, measured through it (needs root for namespaces).

    .venv/bin/python -m bench.bench_shaping [--quick]

Every figure is measured in this run and reported as a ratio against what was configured:

- goodput of one TCP bulk transfer (edge → cloud) at 1, 10 and 100 mbit, against the rate less the
  TCP/IP header overhead (payload 1448 of each 1500-byte packet, plus 14 bytes of Ethernet header on a
  veth, which tbf counts): target within 5 %. Both link kinds: a veth with tbf, and the TUN pair with
  tbf and the user-space delay line (5 ms one-way delay, so the line is in use);
- added round-trip time of small TCP messages at 5, 20 and 50 ms one-way delay, against 2 × delay,
  over the RTT of an unshaped link measured in the same run: target within max(0.5 ms, 5 %);
- the one-way delay distribution of UDP datagrams with 20 ms ± 5 ms jitter (uniform), and the loss
  rate at 1 % and 10 % (binomial 95 % interval);
- the delay line's CPU time per Mbit/s carried, from its /proc counters during the 100 mbit transfer.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import secrets
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

from tabulate import tabulate

from contract.errors import LocalExitError
from netem import LinkSpec, Testbed, TestbedConfig, make_testbed, probe_capabilities

PAYLOAD, IP_PACKET, ETH = 1448, 1500, 14


def _server(tb: Testbed, node: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = tb.popen(
        node,
        [sys.executable, "-m", "netem.measure", *args, "--bind", tb.bind_address(node)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("READY"):
        raise RuntimeError(f"measure server {args[0]} did not start")
    return proc, int(line.split()[1])


def _client(tb: Testbed, src: str, dst: str, port: int, *args: str) -> dict[str, Any]:
    host, p = tb.connect_address(src, dst, port)
    proc = tb.popen(
        src,
        [sys.executable, "-m", "netem.measure", args[0], "--to", f"{host}:{p}", *args[1:]],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=60)
    return json.loads(out)


def _cpu_s(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()  # noqa: SIM115
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _bed(spec: LinkSpec) -> Testbed:
    return make_testbed(TestbedConfig("lx" + secrets.token_hex(3), spec), isolation="netns")


def goodput_rows(quick: bool) -> list[list[Any]]:
    rows = []
    seconds, warmup = (2.5, 0.8) if quick else (6.0, 1.5)
    for mbit in (1, 10, 100):
        for kind, spec in (
            ("veth+tbf", LinkSpec(rate_bps=mbit * 10**6)),
            ("tun+tbf+delay line (5ms)", LinkSpec(rate_bps=mbit * 10**6, delay_s=0.005)),
        ):
            with _bed(spec) as tb:
                sink, port = _server(tb, "cloud", "sink", "--warmup", str(warmup))
                line_pid = tb.helper_pids().get(f"{tb.config.prefix}-ec")
                cpu0 = _cpu_s(line_pid) if line_pid else 0.0
                _client(tb, "edge", "cloud", port, "send", "--seconds", str(seconds))
                cpu1 = _cpu_s(line_pid) if line_pid else 0.0
                r = json.loads(sink.communicate(timeout=30)[0])
            l2 = ETH if kind.startswith("veth") else 0
            expected = mbit * 1e6 * PAYLOAD / (IP_PACKET + l2)
            ratio = r["goodput_bps"] / expected
            cost = ""
            if line_pid:
                mbit_s = r["bytes"] * 8 / 1e6 / seconds  # Mbit/s carried over the whole transfer
                cost = f"{(cpu1 - cpu0) / seconds * 100 / mbit_s:.2f}% core per Mbit/s"
            rows.append(
                [
                    f"goodput {mbit}mbit",
                    kind,
                    f"{expected / 1e6:.3f} Mbit/s",
                    f"{r['goodput_bps'] / 1e6:.3f} Mbit/s",
                    f"{ratio:.3f}",
                    "±5%",
                    "ok" if abs(ratio - 1) <= 0.05 else "MISS",
                    cost,
                ]
            )
    return rows


def delay_rows(quick: bool) -> list[list[Any]]:
    n = 30 if quick else 100
    with _bed(LinkSpec()) as tb:
        _, port = _server(tb, "cloud", "echo")
        base = statistics.median(_client(tb, "edge", "cloud", port, "ping", "--count", str(n))["rtt_ms"])
    rows = [["rtt unshaped", "veth", "-", f"{base:.3f} ms", "-", "baseline", "", ""]]
    for ms in (5, 20, 50):
        with _bed(LinkSpec(delay_s=ms / 1000)) as tb:
            mech = tb.applied["edge_cloud"]["delay"]
            _, port = _server(tb, "cloud", "echo")
            r = _client(tb, "edge", "cloud", port, "ping", "--count", str(n))
        added = statistics.median(r["rtt_ms"]) - base
        tol = max(0.5, 0.05 * 2 * ms)
        rows.append(
            [
                f"added rtt, delay {ms}ms",
                mech,
                f"{2 * ms:.3f} ms",
                f"{added:.3f} ms",
                f"{added / (2 * ms):.3f}",
                f"±{tol:g} ms",
                "ok" if abs(added - 2 * ms) <= tol else "MISS",
                f"handshake {r['connect_ms']:.2f} ms",
            ]
        )
    return rows


def jitter_loss_rows(quick: bool) -> list[list[Any]]:
    rows = []
    n = 150 if quick else 500
    spec = LinkSpec(delay_s=0.02, jitter_s=0.005)
    with _bed(spec) as tb:
        mech = tb.applied["edge_cloud"]["jitter"]
        rx, port = _server(tb, "cloud", "udp-recv", "--count", str(n), "--idle", "0.5")
        # 12 ms apart (> 2 × jitter), so keeping packet order never holds one behind another
        _client(tb, "edge", "cloud", port, "udp-send", "--count", str(n), "--interval", "0.012")
        owd = sorted(json.loads(rx.communicate(timeout=30)[0])["owd_ms"])
    q = [owd[min(len(owd) - 1, math.ceil(p * len(owd)) - 1)] for p in (0.05, 0.5, 0.95)]  # nearest rank
    sd = statistics.pstdev(owd)
    want_sd = 5 / math.sqrt(3)
    rows.append(
        [
            "one-way delay p5/p50/p95",
            mech,
            "16.0/20.0/24.0 ms",
            "/".join(f"{x:.1f}" for x in q) + " ms",
            f"{q[1] / 20:.3f}",
            "p50 ±5%",
            "ok" if abs(q[1] - 20) <= 1 else "MISS",
            f"n={len(owd)}",
        ]
    )
    rows.append(
        [
            "jitter σ (uniform ±5ms)",
            mech,
            f"{want_sd:.2f} ms",
            f"{sd:.2f} ms",
            f"{sd / want_sd:.3f}",
            "±15%",
            "ok" if abs(sd / want_sd - 1) <= 0.15 else "MISS",
            "",
        ]
    )
    n = 1500 if quick else 5000
    for pct in (1, 10):
        with _bed(LinkSpec(loss=pct / 100)) as tb:
            mech = tb.applied["edge_cloud"]["loss"]
            rx, port = _server(tb, "cloud", "udp-recv", "--count", str(n), "--idle", "0.5")
            _client(tb, "edge", "cloud", port, "udp-send", "--count", str(n), "--interval", "0.0005")
            got = json.loads(rx.communicate(timeout=30)[0])["received"]
        p = pct / 100
        half = 1.96 * math.sqrt(p * (1 - p) / n)
        seen = 1 - got / n
        rows.append(
            [
                f"loss {pct}%",
                mech,
                f"{pct:.2f}%",
                f"{seen * 100:.2f}%",
                f"{seen / p:.3f}",
                f"±{half * 100:.2f} pp (95%)",
                "ok" if abs(seen - p) <= half else "MISS",
                f"n={n}",
            ]
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.bench_shaping", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter transfers and fewer probes (< 60 s)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "error: the shaping benchmark needs root (network namespaces); run it with sudo", file=sys.stderr
        )
        return 2
    caps = probe_capabilities()
    t0 = time.monotonic()
    try:
        rows = goodput_rows(args.quick) + delay_rows(args.quick) + jitter_loss_rows(args.quick)
    except LocalExitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"# shaping accuracy — {platform.node()}, kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"qdiscs {sorted(caps.qdiscs)}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{'quick' if args.quick else 'full'}, {time.monotonic() - t0:.0f} s"
    )
    print(
        tabulate(
            rows,
            headers=[
                "measure",
                "mechanism",
                "configured/expected",
                "measured",
                "ratio",
                "target",
                "",
                "note",
            ],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
