"""Reconfiguring running nodes (``Configure``) and the serving test node (``python -m nodes.test --serve``)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from models import synthetic_dataset
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from nodes import HandshakeError, Hello, PeerError
from nodes.cloud import CloudConfig, CloudNode
from nodes.compute import PartsCache, load_parts, run_edge
from nodes.edge import EdgeConfig, EdgeNode
from nodes.errors import ConfigureError
from nodes.handshake import client_handshake
from nodes.messages import Configure
from nodes.records import RecordsResult
from nodes.serve import RunDone, RunFailed, RunRequest, Serving, decode_reply
from nodes.test import Connections, measure, run_test_client
from nodes.transport import open_stream
from tests.programs import Nodes

SAMPLES = 320
DATA = synthetic_dataset(n=SAMPLES, seed=5)


@pytest.fixture(scope="module")
def sem3_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model(ModelConfig(kind="sem", exit=3, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-sem3.pt", dataset="synthetic")


def _median_entropy(checkpoint: Path, exit: int) -> float:
    """A threshold that sends about half of the samples to each exit (the models are untrained)."""
    out = run_edge(load_parts(checkpoint, exit), DATA.images, 0.5)
    return float(np.median(out.entropy))


async def _start(checkpoint: Path, exit: int, threshold: float) -> Nodes:
    """Nodes as the programs start them: a fresh cache, the command line's configuration in it."""
    torch.set_num_threads(1)
    cloud_cache, edge_cache = PartsCache(), PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cloud_cache.get(checkpoint, exit), cloud_cache)
    cloud_addr = await cloud.start()
    edge = EdgeNode(
        EdgeConfig(cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=threshold, timeout=5.0),
        edge_cache.get(checkpoint, exit),
        edge_cache,
    )
    return Nodes(cloud, edge, cloud_addr, await edge.start())


@pytest.fixture
async def nodes(tiny_checkpoint: Path) -> AsyncIterator[Nodes]:
    started = await _start(tiny_checkpoint, 3, 0.5)
    try:
        yield started
    finally:
        await started.close()


def _figures(result: RecordsResult) -> tuple[list[tuple[int, int, str]], int, float]:
    """What a reconfiguration must not change: each sample's prediction and exit, the local exits, the
    accuracy."""
    per_sample = sorted((s.id, s.pred, s.exit) for s in result.samples)
    local = sum(1 for s in result.samples if s.exit == "edge")
    accuracy = sum(1 for s in result.samples if s.pred == s.label) / len(result.samples)
    return per_sample, local, accuracy


async def test_reconfigured_nodes_give_what_fresh_nodes_with_that_configuration_give(
    nodes: Nodes, tiny_checkpoint: Path, sem3_checkpoint: Path
) -> None:
    """From MEM at exit 3 to SEM-3, to MEM at exit 2, each with a threshold that splits the samples:
    every sample's exit and prediction as with nodes started on that configuration."""
    targets = [
        (sem3_checkpoint, 3, _median_entropy(sem3_checkpoint, 3)),
        (tiny_checkpoint, 2, _median_entropy(tiny_checkpoint, 2)),
    ]
    conns = await Connections.open(nodes.client())
    try:
        for checkpoint, exit, threshold in targets:
            await conns.configure(Configure(checkpoint=str(checkpoint), exit=exit, threshold=threshold))
            assert (conns.edge_ready.exit, conns.edge_ready.threshold) == (exit, threshold)
            assert (
                conns.cloud_ready.sha256
                == conns.edge_ready.sha256
                == load_parts(checkpoint, exit).meta.sha256
            )
            cfg = nodes.client(exit=exit, threshold=threshold)
            reconfigured = _figures(await measure(cfg, DATA, conns))
            fresh_nodes = await _start(checkpoint, exit, threshold)
            try:
                fresh = _figures(await run_test_client(fresh_nodes.client(), dataset=DATA))
            finally:
                await fresh_nodes.close()
            assert 0 < reconfigured[1] < SAMPLES, "both exits are used"
            assert reconfigured == fresh
    finally:
        await conns.close()


async def test_a_bad_checkpoint_is_refused_with_one_clear_error_and_the_nodes_run_on(
    nodes: Nodes, tmp_path: Path
) -> None:
    missing = tmp_path / "missing.pt"
    conns = await Connections.open(nodes.client())
    try:
        with pytest.raises(ConfigureError) as info:
            await conns.configure(Configure(checkpoint=str(missing), exit=2, threshold=0.5))
        assert info.value.node == "cloud" and info.value.exit_code == 2
        assert str(info.value).startswith(f"the cloud node cannot run {missing} at exit 2: checkpoint")
        assert "not found" in str(info.value)
        # The same connections go on with the configuration in force: MEM at exit 3, T=0.5.
        result = await measure(nodes.client(samples=64), DATA, conns)
        assert len(result.samples) == 64 and result.config["exit"] == 3
    finally:
        await conns.close()


async def test_a_checkpoint_other_than_expected_or_an_exit_it_lacks_is_refused(
    nodes: Nodes, tiny_checkpoint: Path, sem3_checkpoint: Path
) -> None:
    conns = await Connections.open(nodes.client())
    try:
        with pytest.raises(ConfigureError, match="it holds a sem model, not mem"):
            await conns.configure(
                Configure(checkpoint=str(sem3_checkpoint), exit=3, threshold=0.5, model="mem")
            )
        with pytest.raises(ConfigureError, match="the file changed since it was checked"):
            await conns.configure(
                Configure(checkpoint=str(tiny_checkpoint), exit=2, threshold=0.5, sha256="0" * 64)
            )
        with pytest.raises(ConfigureError, match="exit 5 is not available in sem-3"):
            await conns.configure(Configure(checkpoint=str(sem3_checkpoint), exit=5, threshold=0.5))
        with pytest.raises(ConfigureError, match="the edge needs a threshold") as info:
            await conns.configure(Configure(checkpoint=str(tiny_checkpoint), exit=2))
        assert info.value.node == "edge"
    finally:
        await conns.close()


async def test_nodes_refuse_a_reconfiguration_while_another_test_node_is_connected(
    nodes: Nodes, tiny_checkpoint: Path
) -> None:
    first = await Connections.open(nodes.client())
    second = await Connections.open(nodes.client())
    try:
        with pytest.raises(ConfigureError, match="1 other test node"):
            await first.configure(Configure(checkpoint=str(tiny_checkpoint), exit=2, threshold=0.5))
    finally:
        await second.close()
        await first.close()


async def test_a_hello_of_the_first_protocol_version_is_refused_naming_both(nodes: Nodes) -> None:
    stream = await open_stream(*nodes.cloud_addr, node="cloud", timeout=5.0)
    try:
        with pytest.raises(HandshakeError, match=r"protocol version 1 is not supported .* speaks version 2"):
            await client_handshake(stream, Hello(role="test", version=1))
    finally:
        await stream.close()


# -- the serving test node ---------------------------------------------------------------------------


def test_run_requests_and_replies_are_one_json_line_each() -> None:
    req = RunRequest(out="/tmp/r.json", checkpoint="/m.pt", exit=2, threshold=0.3, samples=64, seed=1)
    line = req.to_json()
    assert b"\n" not in line and RunRequest.from_json(line) == req
    assert decode_reply(RunDone(records="/tmp/r.json").to_json()) == RunDone(records="/tmp/r.json")
    with pytest.raises(Exception, match="unusable run request"):
        RunRequest.from_json(json.dumps({"out": "x", "checkpoint": "m", "exit": 1, "threshold": 2.0}))


def test_serve_refuses_the_options_of_one_run() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nodes.test", "--serve", "--edge", "127.0.0.1:1", "--cloud", "127.0.0.1:2",
         "--samples", "10"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--serve takes each run's options from its request: leave out --samples" in proc.stderr


@pytest.mark.slow
async def test_a_serving_test_node_runs_request_after_request_and_reports_failures(
    nodes: Nodes, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """The program itself, driven over stdin/stdout as the harness drives it."""
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "nodes.test", "--serve",
        "--edge", f"{nodes.edge_addr[0]}:{nodes.edge_addr[1]}",
        "--cloud", f"{nodes.cloud_addr[0]}:{nodes.cloud_addr[1]}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None

    async def ask(req: RunRequest | None) -> object:
        if req is not None:
            assert proc.stdin is not None
            proc.stdin.write(req.to_json() + b"\n")
            await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), 60)  # type: ignore[union-attr]
        return decode_reply(line)

    try:
        assert await ask(None) == Serving()
        for exit in (1, 2):
            out = tmp_path / f"records-{exit}.json"
            req = RunRequest(out=str(out), checkpoint=str(tiny_checkpoint), exit=exit, threshold=0.5,
                             dataset="synthetic", samples=64, batch_size=8, warmup_batches=1)  # fmt: skip
            assert await ask(req) == RunDone(records=str(out))
            records = json.loads(out.read_text())
            assert records["config"]["exit"] == exit and len(records["samples"]["id"]) == 64
        bad = RunRequest(out=str(tmp_path / "x.json"), checkpoint=str(tmp_path / "missing.pt"), exit=1,
                         threshold=0.5, dataset="synthetic", samples=8)  # fmt: skip
        failed = await ask(bad)
        assert isinstance(failed, RunFailed) and failed.node == "cloud" and failed.exit_code == 2
        assert "missing.pt" in failed.message and not (tmp_path / "x.json").exists()
        proc.stdin.close()  # the cue to exit
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_peer_error_during_configure_names_the_node(nodes: Nodes, tiny_checkpoint: Path) -> None:
    conns = await Connections.open(nodes.client())
    try:
        await nodes.cloud.close()  # the cloud is gone: configuring it fails, naming it
        with pytest.raises(PeerError) as info:
            await conns.configure(Configure(checkpoint=str(tiny_checkpoint), exit=2, threshold=0.5))
        assert info.value.node == "cloud"
    finally:
        await conns.close()
