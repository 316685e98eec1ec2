"""Model benchmarks: training throughput, and the edge part's batch-32 latency against a plain forward.

For every exit k the edge part (``models.partition``) is timed against a plain eager forward of the
same layers (the model's own blocks 1..k and head k called in a loop), interleaved in the same run, so
the ratio shows what the partition wrapper adds. Target: ratio ≤ 1.05.

Inference is timed on one torch thread by the CPU time of that thread (``time.thread_time``), not by
wall time: on these shared 2-core machines other processes steal the core at random, which moves wall
times by tens of percent, while the CPU time the forward itself needs stays put.

    .venv/bin/python -m bench.bench_models [--quick]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone

import torch
from tabulate import tabulate

from contract.names import LOCAL_EXITS
from models import synthetic_dataset
from models.cnn import ModelConfig, build_model
from models.partition import partition
from models.train import TrainConfig, train

LIMIT = 1.05


def _interleaved(
    a: Callable[[], object], b: Callable[[], object], rounds: int, inner: int
) -> tuple[float, float]:
    """Median per-call CPU seconds of ``a`` and ``b``, timed alternately so drift hits both alike."""
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(10):  # warm-up: allocator, caches, CPU frequency
        a()
        b()
    for r in range(rounds):
        order = (a, b) if r % 2 == 0 else (b, a)
        for fn in order:
            t0 = time.thread_time()
            for _ in range(inner):
                fn()
            dt = (time.thread_time() - t0) / inner
            (ta if fn is a else tb).append(dt)
    return statistics.median(ta), statistics.median(tb)


def bench_edge_parts(rounds: int, inner: int) -> list[list[object]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelConfig(kind="mem")).eval()
    x = torch.randn(32, 1, 28, 28)
    rows: list[list[object]] = []
    for k in LOCAL_EXITS:
        edge, _ = partition(model, k)
        blocks = list(model.blocks)[:k]
        head = model.heads[str(k)]

        def plain(blocks: list[torch.nn.Module] = blocks, head: torch.nn.Module = head) -> object:
            h = x
            for blk in blocks:
                h = blk(h)
            return h, head(h)

        def part(edge: torch.nn.Module = edge) -> object:
            return edge(x)

        with torch.inference_mode():
            t_part, t_plain = _interleaved(part, plain, rounds, inner)
        ratio = t_part / t_plain
        rows.append(
            [
                k,
                f"{t_plain * 1e3:.3f}",
                f"{t_part * 1e3:.3f}",
                f"{ratio:.3f}",
                "ok" if ratio <= LIMIT else f"ABOVE {LIMIT}",
            ]
        )
    torch.set_num_threads(threads)
    return rows


def bench_training(samples: int) -> list[list[object]]:
    data = synthetic_dataset(n=samples, seed=0, split="train")
    rows: list[list[object]] = []
    for cfg in (ModelConfig(kind="standard"), ModelConfig(kind="sem", exit=4), ModelConfig(kind="mem")):
        _, log = train(
            cfg, data, synthetic_dataset(n=64, seed=1), TrainConfig(epochs=1, seed=0), progress=False
        )
        seconds = log["epochs"][0]["seconds"]
        rows.append(
            [
                cfg.name,
                samples,
                f"{seconds:.1f}",
                f"{samples / seconds:.0f}",
                f"{60000 / (samples / seconds):.0f}",
            ]
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (about 30 s)")
    args = parser.parse_args()
    rounds, inner, samples = (10, 5, 2048) if args.quick else (30, 10, 8192)
    print(
        f"# models benchmark — {platform.node()}, {platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print(
        "\nEdge part vs plain eager forward of the same layers (MEM, default profile, batch 32, 1 thread, CPU ms)"
    )
    print(
        tabulate(
            bench_edge_parts(rounds, inner),
            headers=["exit", "plain ms", "edge part ms", "ratio", f"≤ {LIMIT}"],
            tablefmt="github",
        )
    )
    print("\nTraining throughput (one epoch, batch 128, all exits' losses)")
    print(
        tabulate(
            bench_training(samples),
            headers=["model", "images", "seconds", "images/s", "s per 60k epoch"],
            tablefmt="github",
        )
    )


if __name__ == "__main__":
    main()
