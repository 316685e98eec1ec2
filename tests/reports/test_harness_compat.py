"""Results built by the harness's own code are read by reports (the contract's results file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reports import load_results, tables

harness_results = pytest.importorskip("harness.results")
make_records = pytest.importorskip("tests.harness.helpers").make_records


def test_harness_built_results_load_and_tabulate(tmp_path: Path) -> None:
    edge_share = {
        ("sem", 1): 1.0,
        ("mem", 1): 0.0,
    }  # SEM-1 never goes to the cloud, MEM@1 never exits locally
    for (kind, e), share in edge_share.items():
        runs = [
            harness_results.build_run(
                i,
                make_records(batches=6, batch_size=8, seed=i, edge_share=share),
                cpu_percent=[],
                rss_mib=[50.0],
                duration_s=1.0,
                calibration_ms=None,
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
        doc = harness_results.build_results(config, {"python": "3"}, runs).to_json()
        (tmp_path / f"{kind}{e}.json").write_text(json.dumps(doc))
    (scn,) = tables.group_scenarios(load_results([tmp_path]))
    assert tables.exits_table(scn, 0.3).rows == ((1, 48, 0, 0, 48),)
    acc = tables.accuracy_table(scn, 0.3).rows[0]
    assert acc[1] == 100.0 and acc[2] is None  # MEM has no edge accuracy: nothing exited there
    procs = {r[0]: r for r in tables.procedures_table(scn, 0.3).rows}
    assert procs["SEM-1"][4] is None  # (3-2) never ran for SEM-1
    assert procs["SEM-1"][7] is None  # CPU was not sampled
    assert procs["SEM-1"][9] == 50.0  # RSS mean
