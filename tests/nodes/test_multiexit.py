"""An edge that cuts each batch at an exit chosen at run time: the same results as fixed-exit runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from models import synthetic_dataset
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from nodes.cloud import CloudConfig, CloudNode
from nodes.compute import BadInput, PartsCache, load_parts, run_edge
from nodes.edge import EdgeConfig, EdgeNode
from nodes.errors import ConfigureError
from nodes.messages import Configure
from nodes.multiexit import ExitSet, PolicySetup, measure_profile
from nodes.policy import ExitPolicy
from nodes.records import EXIT_DECISIONS, RecordsResult
from nodes.test import Connections, measure, run_test_client
from tests.nodes.scripted import ScriptedPolicy
from tests.programs import Nodes

SAMPLES = 256
BATCH = 32
DATA = synthetic_dataset(n=SAMPLES, seed=7)
SCRIPT = (2, 5, 8, 5, 1, 8, 2, 3)  # one exit per measured batch, switching at every batch


@dataclass(frozen=True, eq=False)
class _ScriptedMaker:
    exits: ExitSet
    script: tuple[int, ...]
    name: str = "scripted"
    made: list[ExitPolicy] = field(default_factory=list)

    def make(self, images: np.ndarray, threshold: float, t0_ns: int) -> ExitPolicy:
        policy = ScriptedPolicy(iter((self.script[0], *self.script)))  # (the warm-up batch first)
        self.made.append(policy)
        return policy


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained MEM from a fixed seed, so that the thresholds below split its samples the same
    way in every session."""
    torch.manual_seed(22)
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny-mem.pt", dataset="synthetic")


def _threshold(checkpoint: Path, *exits: int) -> float:
    """A threshold at which each of ``exits`` (default 5) sends at least about half of the samples to
    the cloud: halfway between the two middle entropies of the exit that exits the fewest."""

    def middle(k: int) -> float:
        entropy = np.sort(run_edge(load_parts(checkpoint, k), DATA.images, 0.5).entropy)
        return float(entropy[len(entropy) // 2 - 1] + entropy[len(entropy) // 2]) / 2

    return min(middle(k) for k in exits or (5,))


async def _start(checkpoint: Path, exit: int, threshold: float, policy: object = None) -> Nodes:
    torch.set_num_threads(1)
    cloud_cache, edge_cache = PartsCache(), PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cloud_cache.get(checkpoint, exit), cloud_cache)
    cloud_addr = await cloud.start()
    maker = policy(edge_cache) if callable(policy) else None
    edge = EdgeNode(
        EdgeConfig(cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=threshold, timeout=5.0),
        edge_cache.get(checkpoint, exit),
        edge_cache,
        maker,
    )
    return Nodes(cloud, edge, cloud_addr, await edge.start())


async def _run(checkpoint: Path, exit: int, threshold: float, policy: object = None) -> RecordsResult:
    nodes = await _start(checkpoint, exit, threshold, policy)
    try:
        return await run_test_client(nodes.client(batch_size=BATCH), dataset=DATA)
    finally:
        await nodes.close()


def _by_sample(result: RecordsResult) -> dict[int, tuple[int, str]]:
    return {s.id: (s.pred, s.exit) for s in result.samples}


async def test_switching_exits_in_a_running_edge_gives_the_fixed_exit_results(tiny_checkpoint: Path) -> None:
    threshold = _threshold(tiny_checkpoint)
    script = SCRIPT[: SAMPLES // BATCH]
    switching = await _run(
        tiny_checkpoint,
        3,
        threshold,
        lambda cache: _ScriptedMaker(ExitSet.load(cache, tiny_checkpoint, sorted(set(script)), 3), script),
    )
    fixed = {k: _by_sample(await _run(tiny_checkpoint, k, threshold)) for k in sorted(set(script))}
    # The test node sends samples 0..SAMPLES-1 in order (no seed), BATCH to a batch.
    expected = {sid: fixed[script[sid // BATCH]][sid] for sid in range(SAMPLES)}
    assert _by_sample(switching) == expected
    decisions = switching.to_json()[EXIT_DECISIONS]
    assert [d["exit"] for d in decisions] == list(script)
    assert [d["policy"] for d in decisions] == ["scripted"] * len(script)
    for batch, k in zip(switching.batches, script, strict=True):
        ids = range(batch.index * BATCH, (batch.index + 1) * BATCH)
        assert batch.stamps.local == sum(1 for sid in ids if fixed[k][sid][1] == "edge")
    labels = {s.id: s.label for s in switching.samples}
    accuracy = sum(pred == labels[sid] for sid, (pred, _) in expected.items()) / SAMPLES
    assert sum(s.pred == s.label for s in switching.samples) / SAMPLES == accuracy
    local = sum(1 for _, where in expected.values() if where == "edge")
    assert 0 < local < SAMPLES, "both sides are used"


async def test_a_fixed_exit_edge_records_no_decisions(tiny_checkpoint: Path) -> None:
    result = await _run(tiny_checkpoint, 5, _threshold(tiny_checkpoint))
    assert EXIT_DECISIONS not in result.to_json()


async def test_the_adaptive_edge_records_its_choice_and_its_link_estimate(tiny_checkpoint: Path) -> None:
    threshold = _threshold(tiny_checkpoint, 2, 5)
    result = await _run(
        tiny_checkpoint,
        5,
        threshold,
        # (both exits send features: an edge whose every sample exits locally never sees the link)
        lambda cache: PolicySetup("adaptive", ExitSet.load(cache, tiny_checkpoint, (2, 5), 5)),
    )
    decisions = result.to_json()[EXIT_DECISIONS]
    assert len(decisions) == len(result.batches)
    assert {d["policy"] for d in decisions} == {"adaptive"}
    assert {d["exit"] for d in decisions} <= {2, 5}
    # After the first batches the estimate is the loopback's, not the start-up guess of 1 Gbit/s, 0.1 ms.
    last = decisions[-1]
    assert last["rtt_ms"] != pytest.approx(0.1) and last["rate_bps"] != pytest.approx(1e9)
    assert last["expected_ms"] > 0


def test_a_profile_measured_on_images_has_each_exits_costs(tiny_checkpoint: Path) -> None:
    exits = ExitSet.load(PartsCache(), tiny_checkpoint, (2, 8), 2)
    threshold = _threshold(tiny_checkpoint)
    profile = measure_profile(exits, DATA.images[:64], threshold, batch_size=32, labels=DATA.labels[:64])
    assert profile.exit_numbers == (2, 8)
    for k in (2, 8):
        out = run_edge(exits.at(k), DATA.images[:64], threshold)
        p = profile.at(k)
        assert p.local_rate == out.local.mean()
        assert p.feature_bytes == out.features[0].nbytes
        assert p.edge_ms > 0 and p.accuracy is not None


async def test_an_edge_with_a_policy_refuses_reconfiguration_and_runs_on(tiny_checkpoint: Path) -> None:
    threshold = _threshold(tiny_checkpoint, 2, 5)
    nodes = await _start(
        tiny_checkpoint,
        5,
        threshold,
        lambda cache: PolicySetup("adaptive", ExitSet.load(cache, tiny_checkpoint, (2, 5), 5)),
    )
    try:
        conns = await Connections.open(nodes.client(batch_size=BATCH))
        try:
            # (the cloud accepts its unchanged configuration first; the edge refuses any)
            with pytest.raises(ConfigureError, match="adaptive exit policy") as info:
                await conns.configure(Configure(checkpoint=str(tiny_checkpoint), exit=5, threshold=threshold))
            assert info.value.node == "edge"
            result = await measure(nodes.client(batch_size=BATCH), DATA, conns)
        finally:
            await conns.close()
        assert {d["policy"] for d in result.to_json()[EXIT_DECISIONS]} == {"adaptive"}
    finally:
        await nodes.close()


async def test_the_cloud_refuses_features_cut_at_an_exit_its_model_lacks(tmp_path: Path) -> None:
    sem = save_checkpoint(
        build_model(ModelConfig(kind="sem", exit=3, widths=(4,) * 9, pool_after=(2, 4, 6))),
        tmp_path / "sem3.pt",
        dataset="synthetic",
    )
    cache = PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cache.get(sem, 3), cache)
    with pytest.raises(BadInput, match="exit 5"):
        cloud._parts_at(5)
    assert cloud._parts_at(None) is cloud._parts_at(3) is cloud.parts
