"""Container overhead: the same experiment under ``--isolation netns`` and ``--isolation docker``.

    .venv/bin/python -m bench.bench_docker [--pairs N] [--samples N] [--bw 10mbit]

Needs root, Docker and the node image (deploy/setup-docker.sh). Runs ``pairs`` pairs of one run each,
interleaved in ABBA order (netns, docker, docker, netns, ...) so that a drift of the machine's speed
falls on both alike, and reports the docker/netns ratio in each pair of each latency figure, of each
procedure's median time and of the edge's mean CPU and RSS: the median ratio and its range. Exit counts
and accuracies must be identical in every run (the same model, data and threshold): the benchmark fails
(exit 1) if not.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
from datetime import datetime, timezone
from typing import Any

from tabulate import tabulate

from contract.names import PROCEDURES
from harness.config import LinkOptions, RunConfig
from harness.runner import run_experiment

FIGURES = ("overall_latency_ms", "edge_latency_ms", "cloud_latency_ms")
#: (The medians of the procedures, contract.names.PROCEDURES, tell the hops -- the links, the containers'
#: network path -- from the computing.)
COUNTS = ("local_exits", "cloud_exits", "edge_accuracy", "cloud_accuracy", "overall_accuracy")
ISOLATIONS = ("netns", "docker")


def _run(isolation: str, args: argparse.Namespace) -> dict[str, Any]:
    cfg = RunConfig(
        model="mem",
        exit=5,
        samples=args.samples,
        isolation=isolation,
        edge_cloud=LinkOptions(rate=args.bw),
        busy_retries=0,
        calibrate=False,
    )
    run = run_experiment(cfg).to_json()["runs"][0]
    return {
        **{k: run["summary"][k] for k in (*FIGURES, *COUNTS)},
        **{f"procedure {p} p50": run["procedures_ms"][p]["p50"] for p in PROCEDURES},
        "edge_cpu": run["edge_cpu_percent"]["mean"],
        "edge_rss": run["edge_rss_mib"]["mean"],
        "other_cpu": (run.get("host_other_cpu_percent") or {}).get("mean"),
    }


def _ratio(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--bw", default="10mbit")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    pairs: list[dict[str, dict[str, Any]]] = []
    for i in range(args.pairs):
        order = ISOLATIONS if i % 2 == 0 else ISOLATIONS[::-1]
        pair = {iso: _run(iso, args) for iso in order}
        pairs.append(pair)
        print(
            f"pair {i + 1}/{args.pairs}: "
            + ", ".join(f"{iso} {pair[iso]['overall_latency_ms']:.3f} ms/sample" for iso in order),
            flush=True,
        )
    rows = []
    for key in (*FIGURES, *(f"procedure {p} p50" for p in PROCEDURES), "edge_cpu", "edge_rss"):
        ratios = [p["docker"][key] / p["netns"][key] for p in pairs if p["netns"][key]]
        medians = {iso: statistics.median(p[iso][key] for p in pairs) for iso in ISOLATIONS}
        rows.append([key, f"{medians['netns']:.3f}", f"{medians['docker']:.3f}", _ratio(ratios)])
    print(
        f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; mem exit 5, T=0.3, {args.samples} samples, "
        f"edge–cloud {args.bw}; {args.pairs} interleaved pairs (ABBA)\n"
    )
    print(tabulate(rows, headers=["figure", "netns (median)", "docker (median)", "docker/netns (range)"]))
    other = {
        iso: [p[iso]["other_cpu"] for p in pairs if p[iso]["other_cpu"] is not None] for iso in ISOLATIONS
    }
    if all(other.values()):  # (the containers' processes count as the run's, not as other programs')
        print(
            "\nother programs' CPU during the runs (median): "
            + ", ".join(f"{iso} {statistics.median(v):.0f} %" for iso, v in other.items())
        )
    same = all(p["docker"][k] == p["netns"][k] for p in pairs for k in COUNTS)
    print(f"exit counts and accuracies identical in every pair: {'yes' if same else 'NO'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
