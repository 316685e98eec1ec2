"""A fixed CPU workload timed in the same run, so results from a slower or faster machine can be compared.

The regression check divides every latency by its run's ``calibration_ms`` (see ``harness.check``): a
machine that got 20 % slower makes both the calibration and the compute part of the latency 20 % slower.
The workload mixes what a run spends its CPU on: small float32 matrix products in torch on one thread
(the models' convolutions) and a pure-Python loop (the nodes' event loops and codecs).
"""

from __future__ import annotations

import time

import torch

#: Sized to take a few milliseconds per repetition on a laptop-class core: long enough to time with
#: perf_counter, short enough that calibrating costs well under a second.
MATMUL_SIZE = 96
MATMUL_ITERS = 20
PY_ITERS = 40_000
REPETITIONS = 15
#: A fresh process runs its first ~0.1 s of this workload markedly slower (caches, page faults, CPU
#: frequency), so the workload is run this long before anything is timed.
WARMUP_S = 0.25


def _workload() -> float:
    a = torch.full((MATMUL_SIZE, MATMUL_SIZE), 0.5)
    b = torch.eye(MATMUL_SIZE)
    for _ in range(MATMUL_ITERS):
        a = torch.mm(a, b)
    acc = 0
    for i in range(PY_ITERS):
        acc = (acc + i * i) % 1_000_003
    return float(a[0, 0]) + acc


def calibrate(repetitions: int = REPETITIONS) -> float:
    """Milliseconds of the fixed workload: the minimum of ``repetitions`` timings (the least disturbed)."""
    if repetitions < 1:
        raise ValueError(f"repetitions must be at least 1, got {repetitions}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        warm_until = time.perf_counter() + WARMUP_S
        while time.perf_counter() < warm_until:
            _workload()
        best = float("inf")
        for _ in range(repetitions):
            start = time.perf_counter_ns()
            _workload()
            best = min(best, (time.perf_counter_ns() - start) / 1e6)
    finally:
        torch.set_num_threads(threads)
    return best
