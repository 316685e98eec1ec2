"""The three node programs as real processes: READY line, a full run, exit codes, SIGTERM, a killed peer."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from contract.names import RECORDS_SCHEMA
from models import synthetic_dataset
from nodes import PeerError
from nodes.test import ClientConfig, run_test_client
from tests.programs import host_port, spawn_module, wait_ready

pytestmark = pytest.mark.slow


def _test_cli(
    edge: tuple[str, int], cloud: tuple[str, int], out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "nodes.test",
        "--edge",
        f"{edge[0]}:{edge[1]}",
        "--cloud",
        f"{cloud[0]}:{cloud[1]}",
        "--dataset",
        "synthetic",
        "--out",
        str(out),
        *extra,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


async def test_programs_end_to_end_then_a_killed_cloud(
    tiny_checkpoint: Path, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    ckpt = str(tiny_checkpoint)
    cloud = spawn_module(
        ["nodes.cloud", "--listen", "127.0.0.1:0", "--checkpoint", ckpt, "--exit", "2", "--threads", "1"]
    )
    procs.append(cloud)
    cloud_addr = wait_ready(cloud)
    edge = spawn_module(
        [
            "nodes.edge",
            "--listen",
            "127.0.0.1:0",
            "--cloud",
            host_port(cloud_addr),
            "--checkpoint",
            ckpt,
            "--exit",
            "2",
            "--threshold",
            "0",
            "--threads",
            "1",
        ]
    )
    procs.append(edge)
    edge_addr = wait_ready(edge)

    # a full run of the whole synthetic test set, through the CLI
    out = tmp_path / "records.json"
    done = _test_cli(
        edge_addr, cloud_addr, out, "--model", "mem", "--exit", "2", "--threshold", "0", "--batch-size", "64"
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(out.read_text())
    assert doc["schema"] == RECORDS_SCHEMA and doc["overall"]["measured_samples"] == 512
    assert len(doc["samples"]["id"]) == 512 and set(doc["samples"]["exit"]) == {"cloud"}
    assert len(doc["batches"]) == 8 and doc["config"]["threshold"] == 0

    # bad usage: exit code 2, one clear line, no traceback
    bad = _test_cli(edge_addr, cloud_addr, tmp_path / "x.json", "--exit", "7")
    assert bad.returncode == 2 and "expects exit 7" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x.json").exists()

    # the cloud is killed mid-run: the run fails naming the cloud, nothing passes as complete
    cfg = ClientConfig(edge=edge_addr, cloud=cloud_addr, batch_size=1, warmup_batches=0, timeout=20.0)
    import asyncio

    run = asyncio.ensure_future(run_test_client(cfg, dataset=synthetic_dataset(n=20000)))
    await asyncio.sleep(1.0)
    assert not run.done(), "the run must still be going when the cloud is killed"
    os.kill(cloud.pid, signal.SIGKILL)
    with pytest.raises(PeerError) as info:
        await asyncio.wait_for(run, 30)
    assert info.value.node == "cloud"

    # a run against the dead cloud: exit 1, message names the cloud, no records file
    failed = _test_cli(edge_addr, cloud_addr, tmp_path / "y.json")
    assert failed.returncode == 1 and "cloud node" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "y.json").exists()

    # SIGTERM stops the edge gracefully
    os.kill(edge.pid, signal.SIGTERM)
    assert edge.wait(timeout=15) == 0


def test_bad_command_lines_exit_2_without_traceback(tmp_path: Path) -> None:
    for args in (
        ["nodes.cloud", "--listen", "nonsense", "--checkpoint", "x", "--exit", "1"],
        ["nodes.cloud", "--checkpoint", str(tmp_path / "missing.pt"), "--exit", "1"],
        ["nodes.edge", "--cloud", "127.0.0.1:1", "--checkpoint", "x", "--exit", "1", "--threshold", "2"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert r.returncode == 2, (args, r.stderr)
        assert "Traceback" not in r.stderr and ("error" in r.stderr)
