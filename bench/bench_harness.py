"""Harness efficiency: how close a run's measured latency comes to what the work itself costs.

    .venv/bin/python -m bench.bench_harness [--quick]

For MEM at exit 5 on Fashion-MNIST (batch 32, T = 0.3), at 10 mbit and unshaped, one real run each
(namespaces when root, loopback otherwise), then the **floor** of that same run, batch by batch, from its
records: the edge part's compute time for the batch measured standalone in this process, plus — when
the batch had cloud-exited samples — their features' transfer time at the configured rate (less the
token bucket the shaper lets through at once: a batch's few KiB of features fit in it), the
configured one-way delays (edge → cloud and back) and the cloud part's standalone compute time for that
many samples. Each standalone time is the best of several repeats, measured right after the run (one
process, torch's default threads, and the same process settings as the nodes get -- the harness's
``NODE_ENV_DEFAULTS``: the benchmark re-executes itself with them). **Efficiency** = the run's overall latency / the floor (target
≤ 1.15): what the harness, the nodes and the transport add, plus whatever other load slowed the run.

A second ratio replaces the standalone compute by the compute the nodes timed during the run
(procedures 2 and 4): it isolates what transport and orchestration add when other programs on the
machine slow the compute down (the "other load" column: CPU used by other programs, 100 = one core).

It also gives the wall time of the paper's full grid (SEM-1…8 and MEM at exits 1…8, T ∈ {0.1, 0.3,
0.5, 0.8}: 64 points on the whole 10 000-image test set). Running it whole takes hours on this machine,
so it is an **estimate**: per point, the measured fixed cost (testbed, process start-up, calibration)
plus the measured time per sample × 10 000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

import models
from harness.config import LinkOptions, RunConfig
from harness.environment import cpu_model
from harness.runner import NODE_ENV_DEFAULTS, prepare, run_experiment
from harness.sweep import SweepSpec
from netem.tc import burst_bytes

TARGET = 1.15
REPEATS = 9
GRID_SAMPLES = 10_000


def checkpoint_for_bench(tmp: Path) -> tuple[Path, str]:
    """The shipped MEM checkpoint, or an untrained default-profile MEM when the zoo is not there yet."""
    try:
        return models.default_checkpoint("mem", 5, "fashion-mnist"), "shipped mem.pt"
    except models.CheckpointError:
        torch.manual_seed(0)  # the same untrained weights (and so the same exits) on every run
        model = models.build_model(models.parse_model_choice("mem", 5))
        path = models.save_checkpoint(model, tmp / "mem-untrained.pt", dataset="fashion-mnist")
        return path, "untrained default-profile MEM (zoo not shipped yet)"


def best_ms(fn: Any, repeats: int = REPEATS) -> float:
    """Best of ``repeats`` timings after one warm-up call: the least disturbed, i.e. the floor."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append((time.perf_counter_ns() - start) / 1e6)
    return min(times)


class Floor:
    """Standalone compute times of the edge and cloud parts, per batch size, cached."""

    def __init__(self, checkpoint: Path, exit_: int, images: Any) -> None:
        model, _meta = models.load_checkpoint(checkpoint)
        self.edge, self.cloud = models.partition(model, exit_)
        self.images = images
        self.feature_bytes = 4 * int(torch.Size(self.edge.feature_shape()).numel())  # float32 features
        self._edge: dict[int, float] = {}
        self._cloud: dict[int, float] = {}

    @torch.inference_mode()
    def edge_ms(self, n: int) -> float:
        if n not in self._edge:
            batch = self.images[:n]

            def work() -> None:
                _features, logits = self.edge(self.edge.prepare(batch))
                if logits is not None:
                    models.normalized_entropy(logits)

            self._edge[n] = best_ms(work)
        return self._edge[n]

    @torch.inference_mode()
    def cloud_ms(self, n: int) -> float:
        if n not in self._cloud:
            features, _ = self.edge(self.edge.prepare(self.images[:n]))
            self._cloud[n] = best_ms(lambda: self.cloud(features))
        return self._cloud[n]


def transfer_ms(nbytes: int, rate_bps: int | None) -> float:
    """Least time to send ``nbytes`` over the edge-cloud link as the harness shapes it: a token bucket
    of ``netem.tc.burst_bytes(rate)`` lets that many bytes pass at once when it is full (it refills
    between the batches of a closed loop), the rest goes at the rate."""
    if not rate_bps:
        return 0.0
    return max(0, nbytes - burst_bytes(rate_bps)) * 8 / rate_bps * 1e3


def floor_of_run(
    records: dict[str, Any], floor: Floor, rate_bps: int | None, delay_s: float, *, in_run: bool = False
) -> float:
    """Floor of the run's overall latency, ms per sample; ``in_run``: compute as the nodes timed it."""
    total = 0.0
    for batch in records["batches"]:
        procs = batch["procedures_ms"]
        total += procs["2"] if in_run else floor.edge_ms(batch["size"])
        if batch["cloud"]:
            transfer = transfer_ms(batch["cloud"] * floor.feature_bytes, rate_bps)
            compute = procs["4"] if in_run else floor.cloud_ms(batch["cloud"])
            total += transfer + 2 * delay_s * 1e3 + compute
    return total / records["overall"]["measured_samples"]


def compute_ratio(records: dict[str, Any], floor: Floor) -> float:
    """How much slower the nodes computed during the run than the same work standalone (procedures 2 + 4)."""
    in_run = standalone = 0.0
    for batch in records["batches"]:
        in_run += batch["procedures_ms"]["2"]
        standalone += floor.edge_ms(batch["size"])
        if batch["cloud"]:
            in_run += batch["procedures_ms"]["4"]
            standalone += floor.cloud_ms(batch["cloud"])
    return in_run / standalone


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 samples per run instead of 2000")
    args = parser.parse_args()
    missing = {key: value for key, value in NODE_ENV_DEFAULTS.items() if key not in os.environ}
    if missing:  # the standalone floor runs with the nodes' settings (read at process start: re-exec)
        env = {**os.environ, **missing}
        os.execve(sys.executable, [sys.executable, "-m", "bench.bench_harness", *sys.argv[1:]], env)
    samples = 320 if args.quick else 2000
    rows = []
    per_point: list[tuple[float, float]] = []  # (fixed seconds, seconds per sample)
    with tempfile.TemporaryDirectory(prefix="bench-harness-") as tmpdir:
        tmp = Path(tmpdir)
        checkpoint, ckpt_note = checkpoint_for_bench(tmp)
        dataset = models.load_dataset("fashion-mnist", "test")
        floor: Floor | None = None
        isolation = "?"
        for rate in ("10mbit", None):
            cfg = RunConfig(
                model="mem", exit=5, samples=samples, checkpoint=checkpoint, edge_cloud=LinkOptions(rate=rate)
            )
            plan = prepare(cfg)
            work = tmp / (rate or "unshaped")
            started = time.monotonic()
            results = run_experiment(cfg, workdir=work)
            wall = time.monotonic() - started
            run = results["runs"][0]
            records = json.loads((work / "run-0" / "records.json").read_text())
            if floor is None:
                floor = Floor(
                    plan.checkpoint,
                    5,
                    dataset.images[plan.samples : plan.samples + 32]
                    if len(dataset) >= plan.samples + 32
                    else dataset.images[:32],
                )
            measured = run["summary"]["overall_latency_ms"]
            floor_ms = floor_of_run(records, floor, plan.edge_cloud.rate_bps, plan.edge_cloud.delay_s)
            ratio = measured / floor_ms
            in_run = floor_of_run(
                records, floor, plan.edge_cloud.rate_bps, plan.edge_cloud.delay_s, in_run=True
            )
            isolation = results["config"]["isolation"]
            backend = results["config"]["link_backend"]["edge_cloud"].get("rate", "none")
            rows.append(
                [
                    rate or "unshaped",
                    backend,
                    run["summary"]["cloud_exits"],
                    f"{measured:.3f}",
                    f"{floor_ms:.3f}",
                    f"{ratio:.2f}",
                    f"≤ {TARGET}",
                    "yes" if ratio <= TARGET else "NO",
                    f"{measured / in_run:.2f}",
                    f"{compute_ratio(records, floor):.1f}",
                    f"{run['host_other_cpu_percent']['mean'] or 0:.0f}%",
                ]
            )
            run_s = (records["overall"]["last_recv_ns"] - records["overall"]["first_send_ns"]) / 1e9
            per_point.append((wall - run_s, run_s / run["summary"]["samples"]))

    print(
        f"harness efficiency — {platform.node()}, {cpu_model()}, {torch.get_num_threads()} torch threads, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, isolation {isolation}"
    )
    print(f"model: {ckpt_note}; {samples} samples, batch 32, T = 0.3, exit 5")
    print("node and floor process settings: " + " ".join(f"{k}={os.environ[k]}" for k in NODE_ENV_DEFAULTS))
    print()
    print(
        tabulate(
            rows,
            headers=[
                "edge–cloud link",
                "rate by",
                "cloud-exited",
                "overall ms/sample",
                "floor ms/sample",
                "efficiency",
                "target",
                "met",
                "vs in-run compute",
                "in-run / standalone compute",
                "other load",
            ],
        )
    )

    points = len(SweepSpec.paper(RunConfig()).points())
    fixed = sum(f for f, _ in per_point) / len(per_point)
    per_sample = {("10mbit", "unshaped")[i]: s for i, (_, s) in enumerate(per_point)}
    grid = [
        [link, points, f"{fixed:.1f}", f"{1e3 * s:.3f}", f"{points * (fixed + s * GRID_SAMPLES) / 3600:.2f}"]
        for link, s in per_sample.items()
    ]
    print("\nfull paper grid (ESTIMATE from the runs above, not a measured sweep)")
    print(tabulate(grid, headers=["link", "points", "fixed s/point", "ms/sample", "estimated hours"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
