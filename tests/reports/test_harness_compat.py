"""Results objects built by the harness's own code are read by reports (the localexit/1 contract)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from reports import load_results, tables

harness_results = pytest.importorskip("harness.results")


def _records(seed: int, edge_share: float, batches: int = 6, size: int = 8) -> dict[str, Any]:
    rng = random.Random(seed)
    cols: dict[str, list[Any]] = {k: [] for k in ("id", "label", "pred", "exit", "entropy", "latency_ms")}
    out = []
    for b in range(batches):
        exits = ["edge" if rng.random() < edge_share else "cloud" for _ in range(size)]
        procs = {"1": 0.4, "2": 1.0, "3-1": 0.2, "3-2": 0.3, "4": 0.8, "5": 0.2}
        if "cloud" not in exits:
            for k in ("3-2", "4", "5"):
                procs.pop(k)
        if "edge" not in exits:
            procs.pop("3-1")
        for j, where in enumerate(exits):
            cols["id"].append(b * size + j)
            cols["label"].append(j % 10)
            cols["pred"].append(j % 10 if where == "edge" or j % 3 else (j + 1) % 10)
            cols["exit"].append(where)
            cols["entropy"].append(0.1 if where == "edge" else 0.6)
            cols["latency_ms"].append(1.6 if where == "edge" else 2.7)
        out.append(
            {
                "index": b,
                "size": size,
                "local": exits.count("edge"),
                "cloud": exits.count("cloud"),
                "procedures_ms": procs,
                "latency_ms": sum(procs.values()),
            }
        )
    n = batches * size
    return {
        "schema": "localexit-records/1",
        "config": {},
        "samples": cols,
        "batches": out,
        "overall": {"first_send_ns": 0, "last_recv_ns": 0, "measured_samples": n, "overall_latency_ms": 0.3},
        "warmup": {"batches": 2},
    }


def test_harness_built_results_load_and_tabulate(tmp_path: Path) -> None:
    edge_share = {
        ("sem", 1): 1.0,
        ("mem", 1): 0.0,
    }  # SEM-1 never goes to the cloud, MEM@1 never exits locally
    for (kind, e), share in edge_share.items():
        runs = [
            harness_results.build_run(
                i, _records(i, share), cpu_percent=[], rss_mib=[50.0], duration_s=1.0, calibration_ms=None
            )
            for i in range(2)
        ]
        config = {
            "model": kind,
            "exit": e,
            "threshold": 0.3,
            "batch_size": 8,
            "dataset": "synthetic",
            "samples": 48,
            "links": {
                "edge_cloud": {
                    "rate": "10mbit",
                    "delay": "0ms",
                    "jitter": "0ms",
                    "loss": "0%",
                    "limit": None,
                },
                "test_edge": None,
            },
            "link_backend": {"edge_cloud": {"rate": "tbf"}, "test_edge": {}},
            "isolation": "netns",
        }
        doc = harness_results.build_results(config, {"python": "3"}, runs)
        (tmp_path / f"{kind}{e}.json").write_text(json.dumps(doc))
    (scn,) = tables.group_scenarios(load_results([tmp_path]))
    assert tables.exits_table(scn, 0.3).rows == ((1, 48, 0, 0, 48),)
    acc = tables.accuracy_table(scn, 0.3).rows[0]
    assert acc[1] == 100.0 and acc[2] is None  # MEM has no edge accuracy: nothing exited there
    procs = {r[0]: r for r in tables.procedures_table(scn, 0.3).rows}
    assert procs["SEM-1"][4] is None  # (3-2) never ran for SEM-1
    assert procs["SEM-1"][7] is None  # CPU was not sampled
    assert procs["SEM-1"][9] == 50.0  # RSS mean
