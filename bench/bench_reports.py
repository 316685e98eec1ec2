"""How long ``reports`` takes to turn the paper's whole grid into a report, against a limit.

The grid is the reproduction's: SEM-1…8 and MEM at exits 1…8, T ∈ {0.1, 0.3, 0.5, 0.8} (64 results files),
each with 3 runs of 313 per-batch latencies (10 000 samples at batch 32), made up but full-sized. The
report must not be what makes ``python -m harness reproduce`` slow: the limit is 30 s for the whole build.

Run from the repository root: ``.venv/bin/python -m bench.bench_reports``
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tabulate import tabulate

from reports import claims, figures, load_results, tables
from reports.report import build_report

LIMIT_S = 30.0
BATCHES = 313


def _grid(folder: Path) -> None:
    from tests.reports.conftest import paper_like_grid

    for name, doc in paper_like_grid(samples=10_000).items():
        for run in doc["runs"]:
            lat = run["per_batch_ms"]["latency"]
            run["per_batch_ms"]["latency"] = [lat[i % len(lat)] * (1 + i % 7 / 100) for i in range(BATCHES)]
        (folder / name).write_text(json.dumps(doc))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        _grid(root / "in")
        results = load_results([root / "in"])
        (scn,) = tables.group_scenarios(results)
        rows = [
            ("load + validate 64 files", _timed(lambda: load_results([root / "in"]))),
            (
                "tables + claims",
                _timed(
                    lambda: (
                        tables.spread_table(scn),
                        claims.claims_table(scn, 0.3),
                        claims.sem_vs_mem_table(scn, 0.3),
                        tables.threshold_table(scn),
                    )
                ),
            ),
            ("figures (PNG + SVG)", _timed(lambda: figures.scenario_figures(scn, 0.3, root / "figs"))),
            ("whole report (build_report)", _timed(lambda: build_report([root / "in"], root / "out"))),
        ]
    table = [(name, f"{s:.2f}", f"{s / LIMIT_S:.2f}") for name, s in rows]
    print(f"reports on the paper grid — {platform.node()}, {platform.processor() or platform.machine()}")
    print(tabulate(table, headers=["step", "seconds", f"ratio to {LIMIT_S:.0f} s limit"]))
    whole = rows[-1][1]
    print(f"\nwhole report: {'within' if whole <= LIMIT_S else 'OVER'} the limit ({whole / LIMIT_S:.2f}×)")


if __name__ == "__main__":
    main()
