"""A stand-in for the three node programs, for fast harness tests that do not need nodes/ or a model.

``fake_node.py cloud|edge --host H --port P`` listens, prints ``READY H:P`` and waits for SIGTERM.
``fake_node.py test --edge H:P --cloud H:P --samples N --batch-size B --warmup W --out FILE`` connects to
both (so wrong addresses fail), then writes a ``localexit-records/1`` file whose batch latencies are
``FAKE_BATCH_MS`` (env, default 2) plus noise. Behaviour switches (env): ``FAKE_FAIL=<role>`` exits 1
with a traceback-like log line before READY; ``FAKE_HANG=<role>`` never prints READY;
``FAKE_DIE_DURING=edge`` makes the edge exit while the test node runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import sys
import time


def serve(role: str, host: str, port: int) -> int:
    if os.environ.get("FAKE_FAIL") == role:
        print(f"Traceback (most recent call last):\nRuntimeError: fake {role} failure", file=sys.stderr)
        return 1
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        print(f"error: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
        return 1
    sock.listen(8)
    if os.environ.get("FAKE_HANG") == role:
        time.sleep(3600)
    print(f"READY {host}:{port}", flush=True)
    print(f"{role} listening", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sock.settimeout(0.05)
    deadline = time.monotonic() + 3600
    while time.monotonic() < deadline:
        try:
            conn, _ = sock.accept()
            conn.close()
            if role == "edge" and os.environ.get("FAKE_DIE_DURING") == "edge":
                print("edge: simulated crash during the run", file=sys.stderr, flush=True)
                return 1
        except TimeoutError:
            pass
    return 0


def run_test(args: argparse.Namespace) -> int:
    for target in (args.edge, args.cloud):
        host, port = target.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    first_send_ns = time.monotonic_ns()
    time.sleep(float(os.environ.get("FAKE_TEST_SLEEP", "0")))
    if os.environ.get("FAKE_DIE_DURING") == "edge":
        time.sleep(2)  # the edge dies meanwhile; the harness must notice
    rng = random.Random(args.seed)
    base = float(os.environ.get("FAKE_BATCH_MS", "2"))
    measured = args.samples
    samples: dict[str, list[object]] = {
        k: [] for k in ("id", "label", "pred", "exit", "entropy", "latency_ms")
    }
    batches = []
    for index, start in enumerate(range(0, measured, args.batch_size)):
        size = min(args.batch_size, measured - start)
        exits = ["edge" if rng.random() < 0.6 else "cloud" for _ in range(size)]
        procs = {
            "1": base * 0.2,
            "2": base * 0.3,
            "3-1": base * 0.1,
            "3-2": base * 0.1,
            "4": base * 0.2,
            "5": base * 0.1,
        }
        procs = {k: v * rng.uniform(0.9, 1.1) for k, v in procs.items()}
        if "cloud" not in exits:
            for k in ("3-2", "4", "5"):
                procs.pop(k)
        latency = sum(procs.values())
        for j, where in enumerate(exits):
            label = rng.randrange(10)
            samples["id"].append(start + j)
            samples["label"].append(label)
            samples["pred"].append(label if rng.random() < 0.8 else (label + 1) % 10)
            samples["exit"].append(where)
            samples["entropy"].append(rng.random())
            path = ("1", "2", "3-1") if where == "edge" else ("1", "2", "3-2", "4", "5")
            samples["latency_ms"].append(sum(procs[p] for p in path))
        batches.append(
            {
                "index": index,
                "size": size,
                "local": exits.count("edge"),
                "cloud": exits.count("cloud"),
                "procedures_ms": procs,
                "latency_ms": latency,
            }
        )
    records = {
        "schema": "localexit-records/1",
        "config": {"batch_size": args.batch_size, "samples": measured, "warmup_batches": args.warmup},
        "samples": samples,
        "batches": batches,
        "overall": {
            "first_send_ns": first_send_ns,
            "last_recv_ns": time.monotonic_ns(),
            "measured_samples": measured,
            "overall_latency_ms": sum(b["latency_ms"] for b in batches) / measured,
        },
        "warmup": {"batches": args.warmup},
    }
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(records, fh)
    os.replace(tmp, args.out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=("cloud", "edge", "test"))
    parser.add_argument("--listen")
    parser.add_argument("--edge")
    parser.add_argument("--cloud")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--warmup-batches", dest="warmup", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out")
    args, _ = parser.parse_known_args()
    if args.role == "test":
        if os.environ.get("FAKE_FAIL") == "test":
            print("error: fake test failure", file=sys.stderr)
            return 1
        return run_test(args)
    host, port = args.listen.rsplit(":", 1)
    return serve(args.role, host, int(port))


if __name__ == "__main__":
    sys.exit(main())
