"""Hand-written results files and training logs in the ``localexit/1`` / ``localexit-trainlog/1`` formats."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reports.loader import parse_results
from reports.tables import Scenario, group_scenarios

PROCS = ("1", "2", "3-1", "3-2", "4", "5")


def summary(
    local: int,
    cloud: int,
    edge_acc: float | None,
    cloud_acc: float | None,
    overall_acc: float,
    edge_ms: float | None,
    cloud_ms: float | None,
    overall_ms: float,
) -> dict[str, Any]:
    return {
        "samples": local + cloud,
        "local_exits": local,
        "cloud_exits": cloud,
        "edge_accuracy": edge_acc,
        "cloud_accuracy": cloud_acc,
        "overall_accuracy": overall_acc,
        "edge_latency_ms": edge_ms,
        "cloud_latency_ms": cloud_ms,
        "overall_latency_ms": overall_ms,
    }


def run(
    index: int,
    summ: dict[str, Any],
    procs: dict[str, float] | None = None,
    cpu: tuple[float, float] = (50.0, 90.0),
    rss: tuple[float, float] = (300.0, 310.0),
    batch_latency: list[float] | None = None,
    block: int | None = None,
) -> dict[str, Any]:
    procs = procs if procs is not None else {p: 1.0 for p in PROCS}
    out: dict[str, Any] = {
        "index": index,
        "duration_s": 1.0,
        "summary": summ,
        "procedures_ms": {p: {"mean": v, "p50": v, "p95": v, "p99": v, "n": 4} for p, v in procs.items()},
        "edge_cpu_percent": {"mean": cpu[0], "max": cpu[1]},
        "edge_rss_mib": {"mean": rss[0], "max": rss[1]},
        "calibration_ms": 1.0,
    }
    if batch_latency is not None:
        out["per_batch_ms"] = {"latency": batch_latency}
    if block is not None:
        out["block"] = block
    return out


def results_doc(
    kind: str,
    exit_: int | None,
    threshold: float,
    runs: list[dict[str, Any]],
    dataset: str = "fashion-mnist",
    rate: str = "10mbit",
) -> dict[str, Any]:
    return {
        "schema": "localexit/1",
        "config": {
            "model": kind,
            "exit": exit_,
            "threshold": threshold,
            "batch_size": 32,
            "dataset": dataset,
            "samples": runs[0]["summary"]["samples"],
            "warmup_batches": 2,
            "inflight": 1,
            "repeat": len(runs),
            "seed": 0,
            "checkpoint": "zoo/x.pt",
            "checkpoint_sha256": "0" * 64,
            "links": {
                "edge_cloud": {"rate": rate, "delay": "5ms", "jitter": "0ms", "loss": "0%", "limit": None},
                "test_edge": None,
            },
            "link_backend": {"edge_cloud": {"rate": "tbf", "delay": "tun-delay-line"}, "test_edge": {}},
            "edge_limits": {"cpus": None, "cpuset": None, "memory": None, "mechanism": None},
            "isolation": "netns",
        },
        "environment": {
            "python": "3.11.7",
            "torch": "2.13.0",
            "host": "testhost",
            "kernel": "6.1",
            "cpu": "test cpu",
            "cpu_count": 2,
            "git_commit": "abc123",
            "localexit": "0.1.0",
            "started_at": "2026-01-01T00:00:00Z",
        },
        "runs": runs,
        "aggregate": {},
    }


Writer = Callable[[str, dict[str, Any]], Path]


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write a JSON document under tmp_path/results/<name>."""

    def _write(name: str, doc: dict[str, Any]) -> Path:
        path = tmp_path / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(doc))
        return path

    return _write


def small_grid() -> dict[str, dict[str, Any]]:
    """SEM and MEM at exits 1 and 2, T = 0.3 (two runs each) and T = 0.5 (one run): 100 samples.

    Chosen so that every claim's verdict is known by hand:
    - SEM exits more locally at exit 1 and 2; SEM more accurate at exit 1 only; SEM faster at both.
    - later exits exit more: SEM (40 -> 70) and MEM (30 -> 49) at T = 0.3.
    - lower T: more cloud exits and higher accuracy everywhere; higher latency except MEM@2 (0.46 < 0.50).
    """
    docs: dict[str, dict[str, Any]] = {}
    # kind, exit, T -> list of summaries (runs)
    grid = {
        ("sem", 1, 0.3): [
            summary(40, 60, 0.90, 0.80, 0.84, 2.0, 6.0, 0.50),
            summary(40, 60, 0.90, 0.80, 0.84, 2.2, 6.4, 0.70),
        ],
        ("sem", 2, 0.3): [
            summary(70, 30, 0.95, 0.70, 0.875, 3.0, 7.0, 0.40),
            summary(70, 30, 0.95, 0.70, 0.875, 3.0, 7.0, 0.42),
        ],
        ("mem", 1, 0.3): [
            summary(30, 70, 0.80, 0.80, 0.80, 2.5, 6.5, 0.65),
            summary(30, 70, 0.80, 0.80, 0.80, 2.5, 6.5, 0.75),
        ],
        ("mem", 2, 0.3): [
            summary(50, 50, 0.90, 0.86, 0.88, 3.5, 7.5, 0.45),
            summary(48, 52, 0.90, 0.86, 0.88, 3.5, 7.5, 0.47),
        ],
        ("sem", 1, 0.5): [summary(60, 40, 0.85, 0.80, 0.83, 2.0, 6.0, 0.40)],
        ("sem", 2, 0.5): [summary(90, 10, 0.90, 0.60, 0.87, 3.0, 7.0, 0.35)],
        ("mem", 1, 0.5): [summary(55, 45, 0.75, 0.80, 0.7725, 2.5, 6.5, 0.55)],
        ("mem", 2, 0.5): [summary(80, 20, 0.85, 0.85, 0.85, 3.5, 7.5, 0.50)],
    }
    for (kind, e, t), summs in grid.items():
        runs = [
            run(i, s, batch_latency=[10.0 + i + j + (e if kind == "mem" else 0) for j in range(8)])
            for i, s in enumerate(summs)
        ]
        docs[f"{kind}{e}_T{t}.json"] = results_doc(kind, e, t, runs)
    return docs


@pytest.fixture
def small_results(write: Writer) -> Path:
    """The small grid written as files; returns the folder."""
    paths = [write(name, doc) for name, doc in small_grid().items()]
    return paths[0].parent


def train_log(kind: str, exit_: int | None, epochs: int = 3, base: float = 0.6) -> dict[str, Any]:
    keys = [str(exit_)] if kind == "sem" else [str(e) for e in range(1, 9)]
    keys.append("cloud")

    def acc(key: str, ep: int) -> float:
        k = 9 if key == "cloud" else int(key)
        return round(min(0.99, base + 0.02 * k + 0.05 * ep - (0.03 if kind == "mem" else 0.0)), 4)

    return {
        "schema": "localexit-trainlog/1",
        "model": {"kind": kind, "exit": exit_, "widths": [8] * 9, "pool_after": [2, 4, 6]},
        "dataset": "fashion-mnist",
        "seed": 0,
        "loss_weights": {k: 1.0 for k in keys},
        "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0005, "batch_size": 128},
        "epochs": [
            {
                "epoch": ep,
                "loss": 1.0 / ep,
                "seconds": 1.0,
                "train_accuracy": {k: acc(k, ep) for k in keys},
                "test_accuracy": {k: acc(k, ep) - 0.01 for k in keys},
            }
            for ep in range(1, epochs + 1)
        ],
        "final": {
            "train_accuracy": {k: acc(k, epochs) for k in keys},
            "test_accuracy": {k: acc(k, epochs) - 0.01 for k in keys},
        },
    }


def paper_like_grid(samples: int = 1000) -> dict[str, dict[str, Any]]:
    """SEM-1..8 and MEM at exits 1..8, T in {0.1, 0.3, 0.5, 0.8}: smooth, paper-shaped made-up numbers."""
    docs: dict[str, dict[str, Any]] = {}
    for kind in ("sem", "mem"):
        for e in range(1, 9):
            for t in (0.1, 0.3, 0.5, 0.8):
                frac = min(0.97, (0.1 + 0.1 * e) * (0.6 + t) - (0.08 if kind == "mem" else 0.0))
                local = round(samples * max(0.02, frac))
                cloud = samples - local
                edge_acc = min(0.99, 0.80 + 0.02 * e - 0.1 * t - (0.03 if kind == "mem" else 0.0))
                cloud_acc = max(0.5, 0.9 - 0.04 * e - 0.05 * t)
                overall = (local * edge_acc + cloud * cloud_acc) / samples
                edge_ms = 1.0 + 0.4 * e
                cloud_ms = 6.0 + 0.2 * e
                overall_ms = (local * edge_ms + cloud * cloud_ms) / samples / 8
                runs = [
                    run(
                        i,
                        summary(
                            local,
                            cloud,
                            edge_acc,
                            cloud_acc,
                            overall,
                            edge_ms * (1 + 0.01 * i),
                            cloud_ms,
                            overall_ms * (1 + 0.02 * i),
                        ),
                        procs={"1": 0.5, "2": 0.3 * e, "3-1": 0.2, "3-2": 0.4, "4": 0.3 * (9 - e), "5": 0.2},
                        cpu=(40.0 + 5 * e, 95.0),
                        rss=(250.0 + 3 * e, 260.0 + 3 * e),
                        batch_latency=[overall_ms * 32 * (1 + 0.01 * ((j * 7) % 5)) for j in range(40)],
                    )
                    for i in range(3)
                ]
                docs[f"{kind}{e}_T{t}.json"] = results_doc(kind, e, t, runs)
    return docs


def paper_like_logs() -> dict[str, dict[str, Any]]:
    logs = {f"sem{e}.json": train_log("sem", e, epochs=10, base=0.45) for e in range(1, 9)}
    logs["mem.json"] = train_log("mem", None, epochs=10, base=0.45)
    return logs


@dataclass(frozen=True)
class Study:
    """A synthetic blocked study: every point runs once per block, and a block's load (other work on the
    machine) slows every point in it alike — which pairing by block cancels and pooling does not.

    Times are lognormal: each run's overall latency and procedure (2) time are the point's base time ×
    the block's load × the run's own noise. ``sem_speed`` multiplies SEM's overall latency (0.8: SEM 20 %
    faster in every block); ``aa_bias`` multiplies SEM's procedure (2), which should equal MEM's at the
    same exit (1.0: the A/A control holds). Counts and accuracies are exact, as a fixed test set gives.
    """

    blocks: int = 6
    seed: int = 0
    exits: tuple[int, ...] = (1, 2, 3)
    thresholds: tuple[float, ...] = (0.3,)
    sem_speed: float = 1.0
    aa_bias: float = 1.0
    block_load: float = 0.4
    run_noise: float = 0.03
    proc2_noise: float = 0.01
    with_blocks: bool = True
    samples: int = 1000
    edge_accuracy: Mapping[int, float] | None = None  # by exit; default rises with the exit
    edge_t_slope: float = -0.1  # change of edge accuracy per unit of T (the paper: it falls as T rises)
    sem_burst: Mapping[int, float] | None = None  # block -> extra slowdown of SEM's runs in that block only

    def docs(self) -> dict[str, dict[str, Any]]:
        rng = np.random.default_rng(self.seed)
        points = [(k, e, t) for k in ("sem", "mem") for e in self.exits for t in self.thresholds]
        runs: dict[tuple[str, int, float], list[dict[str, Any]]] = {p: [] for p in points}
        for b in range(self.blocks):
            load = math.exp(rng.normal(0.0, self.block_load))
            for p in points:
                runs[p].append(self._run(p, b, load, rng))
        return {f"{k}{e}_T{t}.json": results_doc(k, e, t, runs[(k, e, t)]) for k, e, t in points}

    def _run(
        self, point: tuple[str, int, float], block: int, load: float, rng: np.random.Generator
    ) -> dict[str, Any]:
        kind, e, t = point
        mem = kind == "mem"
        local = round(self.samples * min(0.95, 0.2 + 0.1 * e + 0.3 * t - (0.05 if mem else 0.0)))
        cloud = self.samples - local
        edge_acc = (
            (self.edge_accuracy or {}).get(e, 0.80 + 0.02 * e)
            + self.edge_t_slope * t
            - (0.03 if mem else 0.0)
        )
        cloud_acc = 0.9 - 0.04 * e - 0.05 * t
        overall_acc = (local * edge_acc + cloud * cloud_acc) / self.samples
        slow = load * math.exp(rng.normal(0.0, self.run_noise))
        if not mem:
            slow *= (self.sem_burst or {}).get(block, 1.0)
        overall = (1.0 + 0.1 * e) * (1.0 + 0.5 * (1 - t)) * (1.0 if mem else self.sem_speed) * slow
        proc2 = (
            (0.5 + 0.2 * e)
            * (1.0 if mem else self.aa_bias)
            * load
            * math.exp(rng.normal(0.0, self.proc2_noise))
        )
        procs = {
            "1": 0.3 * load,
            "2": proc2,
            "3-1": 0.2 * load,
            "3-2": 0.4 * load,
            "4": 0.5 * load,
            "5": 0.2 * load,
        }
        summ = summary(local, cloud, edge_acc, cloud_acc, overall_acc, 2.0 * slow, 6.0 * slow, overall)
        return run(
            block,
            summ,
            procs=procs,
            batch_latency=[32 * overall * (1 + 0.01 * (j % 5)) for j in range(10)],
            block=block if self.with_blocks else None,
        )

    def scenario(self) -> Scenario:
        return as_scenario(self.docs())


def as_scenario(docs: Mapping[str, Mapping[str, Any]]) -> Scenario:
    """Results documents parsed as the loader parses files (without writing them), as one scenario."""
    (scn,) = group_scenarios([parse_results(Path(name), doc) for name, doc in docs.items()])
    return scn


def write_all(root: Path, docs: Mapping[str, Mapping[str, Any]], sub: str = "results") -> Path:
    """Write documents as files under ``root/sub``; returns that folder."""
    folder = root / sub
    folder.mkdir(parents=True, exist_ok=True)
    for name, doc in docs.items():
        (folder / name).write_text(json.dumps(doc))
    return folder


def verdicts(claims: Sequence[Any]) -> dict[str, str]:
    return {c.statement: c.verdict for c in claims}
