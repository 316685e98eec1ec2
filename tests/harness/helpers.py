"""Builders of synthetic records and results objects for the harness's pure-logic tests."""

from __future__ import annotations

import random
from typing import Any

from contract.results import Results
from harness.results import build_results, build_run


def make_records(
    batches: int = 20, batch_size: int = 8, batch_ms: float = 2.0, seed: int = 0, edge_share: float = 0.6
) -> dict[str, Any]:
    rng = random.Random(seed)
    samples: dict[str, list[Any]] = {k: [] for k in ("id", "label", "pred", "exit", "entropy", "latency_ms")}
    out_batches: list[dict[str, Any]] = []
    for b in range(batches):
        procs = {"1": 0.2, "2": 0.3, "3-1": 0.1, "3-2": 0.1, "4": 0.2, "5": 0.1}
        procs = {k: v * batch_ms * rng.uniform(0.9, 1.1) for k, v in procs.items()}
        exits = ["edge" if rng.random() < edge_share else "cloud" for _ in range(batch_size)]
        if "cloud" not in exits:
            for k in ("3-2", "4", "5"):
                procs.pop(k)
        if "edge" not in exits:
            procs.pop("3-1")
        for j, where in enumerate(exits):
            label = rng.randrange(10)
            samples["id"].append(b * batch_size + j)
            samples["label"].append(label)
            samples["pred"].append(label if where == "edge" else (label + j % 2) % 10)
            samples["exit"].append(where)
            samples["entropy"].append(rng.random())
            path = ("1", "2", "3-1") if where == "edge" else ("1", "2", "3-2", "4", "5")
            samples["latency_ms"].append(sum(procs[p] for p in path))
        out_batches.append(
            {
                "index": b,
                "size": batch_size,
                "local": exits.count("edge"),
                "cloud": exits.count("cloud"),
                "procedures_ms": procs,
                "latency_ms": sum(procs.values()),
            }
        )
    n = batches * batch_size
    return {
        "schema": "localexit-records/1",
        "config": {},
        "samples": samples,
        "batches": out_batches,
        "overall": {
            "first_send_ns": 0,
            "last_recv_ns": 0,
            "measured_samples": n,
            "overall_latency_ms": sum(b["latency_ms"] for b in out_batches) / n,
        },
        "warmup": {"batches": 2},
    }


def make_config(**overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model": "mem",
        "exit": 5,
        "threshold": 0.3,
        "batch_size": 8,
        "dataset": "synthetic",
        "samples": 160,
        "checkpoint_sha256": "abc",
        "links": {
            "edge_cloud": {"rate": "10mbit", "delay": "0ms", "jitter": "0ms", "loss": "0%", "limit": None},
            "test_edge": None,
        },
        "link_backend": {"edge_cloud": {"rate": "tbf"}, "test_edge": {}},
        "isolation": "netns",
    }
    config.update(overrides)
    return config


def make_results(
    runs: int = 1,
    batch_ms: float = 2.0,
    calibration_ms: float | None = 10.0,
    seed: int = 0,
    batches: int = 20,
    **config: Any,
) -> Results:
    run_objs = [
        build_run(
            i,
            make_records(batches=batches, batch_ms=batch_ms, seed=seed + i),
            cpu_percent=[50.0, 60.0],
            rss_mib=[100.0, 101.0],
            duration_s=1.0,
            calibration_ms=calibration_ms,
        )
        for i in range(runs)
    ]
    return build_results(make_config(**config), {"python": "3"}, run_objs)
