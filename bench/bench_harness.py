"""Harness efficiency: how close a run's measured latency comes to what the work itself costs.

    .venv/bin/python -m bench.bench_harness [--quick]

For MEM at exit 5 on Fashion-MNIST (batch 32, T = 0.3), at 10 mbit and unshaped, ``--runs`` real runs
each (namespaces when root, loopback otherwise), and right after each run the **floor** of that same
run: what the run would take if the edge and the cloud were one process joined by a perfect link at the
configured rate. That is

- compute: the run's batches **replayed back to back in one process** -- for each batch of the run, the
  edge part on that many images (normalisation, blocks 1..k, exit head, entropy), then the cloud part
  on as many features as the batch sent to the cloud -- best of ``REPLAYS`` whole replays after one
  warm-up replay (a child process with torch's default threads and the same process settings as the
  nodes get, the harness's ``NODE_ENV_DEFAULTS``);
- plus, per batch with cloud-exited samples, their features' transfer time at the configured rate (less
  the token bucket the shaper lets through at once: a batch's few KiB of features fit in it) and the
  configured one-way delays (edge → cloud and back).

**Efficiency** = the run's overall latency / that floor (target ≤ 1.15): what the harness, the nodes and
the transport add -- the hops between three processes, and the compute's slowdown when it runs in
turns with idle gaps rather than back to back -- plus whatever other load slowed the run. The table
gives the median run and the range over the runs.

Why a whole replay: the run's latency is the time of the whole sequence of batches, disturbances
included, and the edge and cloud parts alternate in it, so its floor is the least disturbed *whole*
replay of that sequence. The sum of each batch's best time from a tight loop of the same batch size
alone is also shown ("vs sum of bests", measured after each run too; it is the luckiest of 9 timings of a
different workload, so it understates the floor), as is the run against the compute the nodes timed
during the run (procedures 2 and 4, "vs in-run compute": transport and orchestration alone), and the CPU
that programs outside the run used meanwhile ("other load", 100 = one core).

The **idle-gap replay** measures what waiting alone costs the compute: the same one-process replay, but
each part runs after sleeping as long as its node waited for its input in the run (:func:`idle_gaps`),
and only the compute is timed. A serving node always waits between requests; on a VM that halts an idle
vCPU the caches are cold when it wakes (docs/design-notes.md has measurements). "idle-gap replay / floor" is that cost with no second process, no network and none of the
harness; "vs idle-gap replay" is the run against it.

The **split replay** separates what the split itself costs on this machine from what the harness
adds: the same batches, right after the run, through the least a split deployment needs -- this process
as the test node, an edge and a cloud process with the nodes' settings, joined by pipes in the run's
topology and carrying only the batch sizes (:class:`SplitReplay`). "split replay / floor" is the cost of
splitting the model over two processes that compute in turns (nearly all of it slower compute: see
"split / replayed compute"); "vs split
replay" is the run against it, i.e. what the framing, the event loops, the network stack and the
orchestration add.

It also gives the wall time of the paper's full grid (SEM-1…8 and MEM at exits 1…8, T ∈ {0.1, 0.3,
0.5, 0.8}: 64 points on the whole 10 000-image test set). Running it whole takes hours on this machine,
so it is an **estimate**: per point, the measured fixed cost (testbed, process start-up, calibration)
plus the measured time per sample × 10 000.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import struct
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tabulate import tabulate

import models
from harness import PIN_VARIABLES, USER_PINS
from harness.config import LinkOptions, RunConfig
from harness.environment import cpu_model
from harness.runner import NODE_ENV_DEFAULTS, prepare, run_experiment
from harness.sweep import SweepSpec
from models.checkpoint import default_checkpoint, load_checkpoint, save_checkpoint
from models.cnn import build_model, parse_model_choice
from models.entropy import normalized_entropy
from models.partition import partition
from netem.tc import burst_bytes
from reports import stats

TARGET = 1.15
REPEATS = 9  # timings per batch size for the per-batch bests
REPLAYS = 5  # whole replays of a run for its floor
GAPPED_REPLAYS = 2  # whole replays with each node's idle gaps (each sleeps about as long as the run took)
GRID_SAMPLES = 10_000


def checkpoint_for_bench(tmp: Path) -> tuple[Path, str]:
    """The shipped MEM checkpoint, or an untrained default-profile MEM when the zoo is not there yet."""
    try:
        return default_checkpoint("mem", 5, "fashion-mnist"), "shipped mem.pt"
    except models.CheckpointError:
        torch.manual_seed(0)  # the same untrained weights (and so the same exits) on every run
        model = build_model(parse_model_choice("mem", 5))
        path = save_checkpoint(model, tmp / "mem-untrained.pt", dataset="fashion-mnist")
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


def edge_work(edge: Any, images: Any) -> None:
    """What the edge node computes for a batch: normalisation, blocks 1..k, exit head and entropy."""
    _features, logits = edge(edge.prepare(images))
    if logits is not None:
        normalized_entropy(logits)


def cloud_work(cloud: Any, features: Any) -> None:
    """What the cloud node computes for a batch's cloud-exited samples: the rest, and the entropy."""
    normalized_entropy(cloud(features))


class Floor:
    """Standalone compute times of the edge and cloud parts, per batch size, cached."""

    def __init__(self, checkpoint: Path, exit_: int, images: Any) -> None:
        model, _meta = load_checkpoint(checkpoint)
        self.edge, self.cloud = partition(model, exit_)
        self.images = images
        self.feature_bytes = 4 * int(torch.Size(self.edge.feature_shape()).numel())  # float32 features
        self._edge: dict[int, float] = {}
        self._cloud: dict[int, float] = {}

    def forget(self) -> None:
        self._edge.clear()
        self._cloud.clear()

    @torch.inference_mode()
    def edge_ms(self, n: int) -> float:
        if n not in self._edge:
            batch = self.images[:n]
            self._edge[n] = best_ms(lambda: edge_work(self.edge, batch))
        return self._edge[n]

    @torch.inference_mode()
    def cloud_ms(self, n: int) -> float:
        if n not in self._cloud:
            features, _ = self.edge(self.edge.prepare(self.images[:n]))
            self._cloud[n] = best_ms(lambda: cloud_work(self.cloud, features))
        return self._cloud[n]

    def _work(self, batches: list[dict[str, Any]]) -> list[tuple[Any, Any]]:
        """Per batch of a run: the edge part's images and the cloud part's features (None when no
        sample of the batch went to the cloud). Call under inference mode."""
        features, _ = self.edge(self.edge.prepare(self.images))
        return [(self.images[: b["size"]], features[: b["cloud"]] if b["cloud"] else None) for b in batches]

    @torch.inference_mode()
    def replay_ms(self, batches: list[dict[str, Any]], replays: int = REPLAYS) -> float:
        """Compute of the run's ``batches`` back to back (edge part, then the cloud part on that batch's
        cloud-exited count), total ms: the best of ``replays`` whole replays after a warm-up one."""
        work = self._work(batches)

        def replay() -> None:
            for images, cloud_in in work:
                edge_work(self.edge, images)
                if cloud_in is not None:
                    cloud_work(self.cloud, cloud_in)

        return best_ms(replay, replays)

    @torch.inference_mode()
    def gapped_ms(
        self, batches: list[dict[str, Any]], gaps: tuple[float, float], replays: int = GAPPED_REPLAYS
    ) -> float:
        """Compute of the run's ``batches`` in this one process as in :meth:`replay_ms`, but each part
        after sleeping as long as its node waited for its input in the run (``gaps``: the edge's and
        the cloud's mean idle ms per compute, :func:`idle_gaps`); total ms of compute alone (the sleeps
        are not counted), the least of ``replays`` whole replays. What waiting between requests costs
        the compute on this machine, without a second process, a network or any of the harness."""
        edge_gap, cloud_gap = gaps[0] / 1e3, gaps[1] / 1e3
        work = self._work(batches)
        best = float("inf")
        for _ in range(replays):
            total = 0
            for images, cloud_in in work:
                time.sleep(edge_gap)
                start = time.perf_counter_ns()
                edge_work(self.edge, images)
                total += time.perf_counter_ns() - start
                if cloud_in is not None:
                    time.sleep(cloud_gap)
                    start = time.perf_counter_ns()
                    cloud_work(self.cloud, cloud_in)
                    total += time.perf_counter_ns() - start
            best = min(best, total / 1e6)
        return best


def idle_gaps(records: dict[str, Any]) -> tuple[float, float]:
    """(edge, cloud): how long each node waited, on average, before each of its computes in the run,
    in ms -- the measured span less the node's compute (procedure 2 or 4), over its number of computes.
    (The cloud's is 0 when no sample went to the cloud.)"""
    batches = records["batches"]
    span = (records["overall"]["last_recv_ns"] - records["overall"]["first_send_ns"]) / 1e6
    edge = (span - sum(b["procedures_ms"]["2"] for b in batches)) / len(batches)
    to_cloud = [b for b in batches if b["cloud"]]
    if not to_cloud:
        return max(0.0, edge), 0.0
    cloud = (span - sum(b["procedures_ms"]["4"] for b in to_cloud)) / len(to_cloud)
    return max(0.0, edge), max(0.0, cloud)


def transfer_ms(nbytes: int, rate_bps: int | None) -> float:
    """Least time to send ``nbytes`` over the edge-cloud link as the harness shapes it: a token bucket
    of ``netem.tc.burst_bytes(rate)`` lets that many bytes pass at once when it is full (it refills
    between the batches of a closed loop), the rest goes at the rate."""
    if not rate_bps:
        return 0.0
    return max(0, nbytes - burst_bytes(rate_bps)) * 8 / rate_bps * 1e3


def link_ms(records: dict[str, Any], feature_bytes: int, rate_bps: int | None, delay_s: float) -> float:
    """Least time the run's batches spend on the edge-cloud link: features at the rate, delays; total ms."""
    return sum(
        transfer_ms(b["cloud"] * feature_bytes, rate_bps) + 2 * delay_s * 1e3
        for b in records["batches"]
        if b["cloud"]
    )


def in_run_compute_ms(records: dict[str, Any]) -> float:
    """The run's compute as the nodes timed it (procedures 2 and 4), total ms."""
    return sum(
        b["procedures_ms"]["2"] + (b["procedures_ms"]["4"] if b["cloud"] else 0.0) for b in records["batches"]
    )


# The floor is measured in a child process of its own, started with all of the nodes' settings, like a
# node. This process gets them too, except the pinning ones (harness.PIN_VARIABLES): with OMP_PROC_BIND,
# libgomp pins the main thread to one CPU as torch is imported, and the node processes this thread
# starts would inherit the pin.
_FLOOR: dict[str, Floor] = {}


def _init_floor(checkpoint: str, images: Any) -> None:
    _FLOOR["floor"] = Floor(Path(checkpoint), 5, images)


@contextlib.contextmanager
def node_pins() -> Iterator[None]:
    """Within the block, processes started get the nodes' pinning settings (the harness's default, or
    the user's own, which ``harness._pins`` kept aside); this process's environment is restored after."""
    pins = {**{key: NODE_ENV_DEFAULTS[key] for key in PIN_VARIABLES if key in NODE_ENV_DEFAULTS}, **USER_PINS}
    added = [key for key in pins if key not in os.environ]
    os.environ.update({key: pins[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def start_floor_worker(checkpoint: Path, images: Any) -> ProcessPoolExecutor:
    """The process that measures floors: spawned with the nodes' settings, pinning included."""
    pool = ProcessPoolExecutor(
        1, mp_context=mp.get_context("spawn"), initializer=_init_floor, initargs=(str(checkpoint), images)
    )
    with node_pins():
        pool.submit(int).result()  # (the worker starts here, with this environment)
    return pool


_BATCH = struct.Struct("<ii")  # test -> edge: batch size, cloud-exited count; edge -> cloud: count
_NS = struct.Struct("<q")  # edge or cloud -> test: the compute it timed, ns


def _split_node(
    role: str, checkpoint: str, exit_: int, images: Any, inbox: Any, to_test: Any, to_cloud: Any
) -> None:
    """An edge or cloud process of :class:`SplitReplay`: computes its part on each request and reports
    the time it took; the edge then hands the batch's cloud-exited count to the cloud, as the edge node
    does after replying to the test node."""
    model, _meta = load_checkpoint(checkpoint)
    edge, cloud = partition(model, exit_)
    with torch.inference_mode():
        features, _ = edge(edge.prepare(images))
        to_test.send_bytes(b"ready")
        while msg := inbox.recv_bytes():
            start = time.perf_counter_ns()
            if role == "edge":
                size, n_cloud = _BATCH.unpack(msg)
                edge_work(edge, images[:size])
            else:
                n_cloud = _BATCH.unpack(msg)[0]
                cloud_work(cloud, features[:n_cloud])
            to_test.send_bytes(_NS.pack(time.perf_counter_ns() - start))
            if role == "edge" and n_cloud:
                to_cloud.send_bytes(_BATCH.pack(n_cloud, 0))
    if to_cloud is not None:
        to_cloud.send_bytes(b"")  # the cloud stops after the edge


SPLIT_START_S = 120.0  # for a split replay's process to load its model
SPLIT_REPLY_S = 60.0  # for one batch's reply


def _recv(conn: Any, role: str, timeout: float = SPLIT_REPLY_S) -> bytes:
    if not conn.poll(timeout):
        raise RuntimeError(f"the split replay's {role} process did not answer within {timeout:g} s")
    try:
        data: bytes = conn.recv_bytes()
    except EOFError:
        raise RuntimeError(f"the split replay's {role} process exited (see its traceback above)") from None
    return data


class SplitReplay:
    """The run's batches through the least a split deployment needs: this process as the test node and
    an edge and a cloud process (spawned with the nodes' settings) joined by pipes in the run's topology
    -- test -> edge -> cloud -> test, the edge replying to the test node first -- carrying only each
    batch's sizes (no tensors, no framing, no event loop, no network). What the split costs on this
    machine by itself: the compute runs in turns in two processes, with hops between them."""

    def __init__(self, checkpoint: Path, exit_: int, images: Any) -> None:
        ctx = mp.get_context("spawn")
        edge_in, self._to_edge = ctx.Pipe(duplex=False)
        self._from_edge, edge_out = ctx.Pipe(duplex=False)
        cloud_in, edge_to_cloud = ctx.Pipe(duplex=False)
        self._from_cloud, cloud_out = ctx.Pipe(duplex=False)
        args = (str(checkpoint), exit_, images)
        self._procs = [
            ctx.Process(target=_split_node, args=("edge", *args, edge_in, edge_out, edge_to_cloud)),
            ctx.Process(target=_split_node, args=("cloud", *args, cloud_in, cloud_out, None)),
        ]
        with node_pins():
            for proc in self._procs:
                proc.start()
        for end in (edge_in, edge_out, cloud_in, edge_to_cloud, cloud_out):
            end.close()  # (the children's ends: a child that dies then reads as end of file at once)
        try:
            for conn, role in ((self._from_edge, "edge"), (self._from_cloud, "cloud")):
                _recv(conn, role, SPLIT_START_S)
        except BaseException:
            self.close()
            raise

    def replay_ms(self, batches: list[dict[str, Any]], replays: int = REPLAYS) -> tuple[float, float]:
        """(wall ms, compute ms the two processes timed) of the least disturbed of ``replays`` whole
        replays of ``batches`` after a warm-up one."""
        work = [(_BATCH.pack(b["size"], b["cloud"]), b["cloud"]) for b in batches]
        best = (float("inf"), 0.0)
        for index in range(replays + 1):
            compute = 0
            start = time.perf_counter_ns()
            for request, n_cloud in work:
                self._to_edge.send_bytes(request)
                compute += _NS.unpack(_recv(self._from_edge, "edge"))[0]
                if n_cloud:
                    compute += _NS.unpack(_recv(self._from_cloud, "cloud"))[0]
            wall = (time.perf_counter_ns() - start) / 1e6
            if index and wall < best[0]:
                best = (wall, compute / 1e6)
        return best

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._to_edge.send_bytes(b"")
        for proc in self._procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def __enter__(self) -> SplitReplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _floor_of(records: dict[str, Any]) -> tuple[float, float, float, int]:
    """(replayed compute, sum of per-batch bests, gapped replay's compute, feature bytes per sample) for a
    run's records, in ms."""
    floor = _FLOOR["floor"]
    floor.forget()  # (each run's floor measured afresh, right after it: the machine's speed drifts)
    batches = records["batches"]
    bests = 0.0
    for b in batches:
        bests += floor.edge_ms(b["size"]) + (floor.cloud_ms(b["cloud"]) if b["cloud"] else 0.0)
    replayed = floor.replay_ms(batches)
    return replayed, bests, floor.gapped_ms(batches, idle_gaps(records)), floor.feature_bytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="320 samples per run instead of 2000, 1 run")
    parser.add_argument("--runs", type=int, default=None, help="runs per link (default 3; 1 with --quick)")
    args = parser.parse_args()
    missing = {
        key: value
        for key, value in NODE_ENV_DEFAULTS.items()
        if key not in os.environ and key not in PIN_VARIABLES
    }
    if missing:  # the floor runs with the nodes' settings (read at process start: re-exec)
        env = {**os.environ, **USER_PINS, **missing}  # (the new process keeps the pins aside again)
        os.execve(sys.executable, [sys.executable, "-m", "bench.bench_harness", *sys.argv[1:]], env)
    samples = 320 if args.quick else 2000
    runs = args.runs or (1 if args.quick else 3)
    if runs < 1:
        parser.error("--runs must be >= 1")
    rows = []
    per_point: list[tuple[float, float]] = []  # (fixed seconds, seconds per sample)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-harness-")))
        checkpoint, ckpt_note = checkpoint_for_bench(tmp)
        dataset = models.load_dataset("fashion-mnist", "test")
        pool: ProcessPoolExecutor | None = None
        split: SplitReplay | None = None
        isolation = "?"
        for rate in ("10mbit", None):
            cfg = RunConfig(
                model="mem", exit=5, samples=samples, checkpoint=checkpoint, edge_cloud=LinkOptions(rate=rate)
            )
            plan = prepare(cfg)
            measured_runs = []
            for index in range(runs):
                work = tmp / f"{rate or 'unshaped'}-{index}"
                started = time.monotonic()
                results = run_experiment(cfg, workdir=work).to_json()
                wall = time.monotonic() - started
                run = results["runs"][0]
                records = json.loads((work / "run-0" / "records.json").read_text())
                if pool is None:
                    images = (
                        dataset.images[plan.samples : plan.samples + 32]
                        if len(dataset) >= plan.samples + 32
                        else dataset.images[:32]
                    )
                    pool = stack.enter_context(start_floor_worker(plan.checkpoint, images))
                    split = stack.enter_context(SplitReplay(plan.checkpoint, 5, images))
                replayed, bests, gapped, feature_bytes = pool.submit(_floor_of, records).result()
                assert split is not None
                split_wall, split_compute = split.replay_ms(records["batches"])
                n = records["overall"]["measured_samples"]
                link = link_ms(records, feature_bytes, plan.edge_cloud.rate_bps, plan.edge_cloud.delay_s)
                measured = run["summary"]["overall_latency_ms"]
                floor_ms = (replayed + link) / n
                in_run = in_run_compute_ms(records)
                measured_runs.append(
                    {
                        "measured": measured,
                        "floor": floor_ms,
                        "efficiency": measured / floor_ms,
                        "bests": measured / ((bests + link) / n),
                        "in_run": measured / ((in_run + link) / n),
                        "compute_ratio": in_run / replayed,
                        "gapped": measured / ((gapped + link) / n),
                        "gapped_floor": (gapped + link) / (replayed + link),
                        "split": measured / ((split_wall + link) / n),
                        "split_floor": (split_wall + link) / (replayed + link),
                        "split_compute": split_compute / replayed,
                        "other": run["host_other_cpu_percent"]["mean"] or 0.0,
                        "cloud": run["summary"]["cloud_exits"],
                    }
                )
                isolation = results["config"]["isolation"]
                backend = results["config"]["link_backend"]["edge_cloud"].get("rate", "none")
                run_s = (records["overall"]["last_recv_ns"] - records["overall"]["first_send_ns"]) / 1e9
                per_point.append((wall - run_s, run_s / run["summary"]["samples"]))
            effs = [r["efficiency"] for r in measured_runs]
            mid = sorted(measured_runs, key=lambda r: r["efficiency"])[(len(measured_runs) - 1) // 2]
            rows.append(
                [
                    rate or "unshaped",
                    backend,
                    mid["cloud"],
                    f"{mid['measured']:.3f}",
                    f"{mid['floor']:.3f}",
                    f"{mid['efficiency']:.2f}",
                    f"{min(effs):.2f}–{max(effs):.2f}" if len(effs) > 1 else "",
                    f"≤ {TARGET}",
                    "yes" if stats.median(effs) <= TARGET else "NO",
                    f"{mid['bests']:.2f}",
                    f"{mid['in_run']:.2f}",
                    f"{mid['compute_ratio']:.2f}",
                    f"{mid['gapped']:.2f}",
                    f"{mid['gapped_floor']:.2f}",
                    f"{mid['split']:.2f}",
                    f"{mid['split_floor']:.2f}",
                    f"{mid['split_compute']:.2f}",
                    f"{mid['other']:.0f}%",
                ]
            )

    print(
        f"harness efficiency — {platform.node()}, {cpu_model()}, {torch.get_num_threads()} torch threads, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, isolation {isolation}"
    )
    print(
        f"model: {ckpt_note}; {samples} samples, batch 32, T = 0.3, exit 5; {runs} run(s) per link, "
        "the median run shown"
    )
    print(
        "node and floor process settings: "
        + " ".join(f"{k}={USER_PINS.get(k, os.environ.get(k, v))}" for k, v in NODE_ENV_DEFAULTS.items())
    )
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
                "range",
                "target",
                "met",
                "vs sum of bests",
                "vs in-run compute",
                "in-run / replayed compute",
                "vs idle-gap replay",
                "idle-gap replay / floor",
                "vs split replay",
                "split replay / floor",
                "split / replayed compute",
                "other load",
            ],
        )
    )

    points = len(SweepSpec.paper(RunConfig()).points())
    half = len(per_point) // 2
    fixed = stats.median([f for f, _ in per_point])
    per_sample = {
        "10mbit": stats.median([s for _, s in per_point[:half]]),
        "unshaped": stats.median([s for _, s in per_point[half:]]),
    }
    grid = [
        [link, points, f"{fixed:.1f}", f"{1e3 * s:.3f}", f"{points * (fixed + s * GRID_SAMPLES) / 3600:.2f}"]
        for link, s in per_sample.items()
    ]
    print("\nfull paper grid (ESTIMATE from the runs above, not a measured sweep)")
    print(tabulate(grid, headers=["link", "points", "fixed s/point", "ms/sample", "estimated hours"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
