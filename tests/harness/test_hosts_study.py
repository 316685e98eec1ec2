"""``--hosts`` with the test node on another host, and studies (``sweep --hosts``) across hosts -- the
hosts are network namespaces each running its own sshd, the cloud's clock 5000 s ahead
(``tests/harness/hosts_net.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .hosts_net import CLOUD_CLOCK_SHIFT_S, HostsNet, hosts_net, sshd_skip_reason
from .test_hosts_ssh import NOTHING, SAMPLES, harness, leftovers, run_args

__all__ = ["hosts_net"]  # (the fixture)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(sshd_skip_reason() is not None, reason=sshd_skip_reason() or ""),
]

SHIFT_NS = CLOUD_CLOCK_SHIFT_S * 10**9
#: Far below the shift: a procedure time that crossed the clocks uncorrected is off by ~5 000 000 ms.
PROCEDURE_BOUND_MS = 1000


def assert_true_procedure_times(run: dict[str, Any]) -> None:
    for name in ("1", "2", "3-2", "4", "5"):
        assert 0 <= run["procedures_ms"][name]["mean"] < PROCEDURE_BOUND_MS, (
            name,
            run["procedures_ms"][name],
        )


def test_a_test_node_on_another_host_has_its_records_fetched_back(
    hosts_net: HostsNet, tmp_path: Path
) -> None:
    # (the two-machine case: the test node beside the cloud on the server, the harness elsewhere)
    out = tmp_path / "results.json"
    r = harness(*run_args(hosts_net.hosts_file(test_on="cloud"), out, "--bw", "10mbit"))
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    run = results["runs"][0]
    assert run["summary"]["local_exits"] + run["summary"]["cloud_exits"] == int(SAMPLES)
    assert_true_procedure_times(run)
    # the offsets are the nodes' clocks against the test node's, which is the shifted one now
    clock = run["clock"]
    assert abs(clock["edge"]["offset_ns"] + SHIFT_NS) < 10**9, clock
    assert abs(clock["cloud"]["offset_ns"]) < 10**9, clock
    # the edge's samples found on its clock through that offset
    assert run["edge_resources_window"] == "measured-phase"
    cloud = hosts_net.hosts["cloud"].address
    assert results["config"]["hosts"]["test"]["where"] == f"root@{cloud}:22"
    assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}


def test_a_sweep_across_hosts_reconfigures_the_nodes_and_leaves_nothing(
    hosts_net: HostsNet, tmp_path: Path
) -> None:
    out_dir = tmp_path / "sweep"
    hosts = hosts_net.hosts_file(test_on="edge")
    r = harness(
        "sweep", "--hosts", str(hosts), "--models", "mem", "--exits", "5", "--thresholds", "0.1,0.3",
        "--repeat", "2", "--samples", SAMPLES, "--warmup-batches", "1", "--no-calibration",
        "--max-other-cpu", "10000", "--no-progress", "--out-dir", str(out_dir),
        timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    points = sorted((out_dir / "points").glob("*.json"))
    assert len(points) == 2, r.stdout
    thresholds = set()
    for path in points:
        results = json.loads(path.read_text())
        assert results["config"]["isolation"] == "hosts"
        assert results["config"]["hosts"]["test"]["where"].startswith("root@")
        thresholds.add(results["config"]["threshold"])
        assert len(results["runs"]) == 2
        for run in results["runs"]:
            assert_true_procedure_times(run)
            assert abs(run["clock"]["cloud"]["offset_ns"] - SHIFT_NS) < 10**9, run["clock"]
            assert run["edge_resources_window"] == "measured-phase"
    # each point ran its own threshold on the same nodes (reconfigured between runs)
    assert thresholds == {0.1, 0.3}
    assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}
