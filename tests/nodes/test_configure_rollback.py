"""A refused reconfiguration leaves both nodes as they were: the cloud is not left on another exit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import synthetic_dataset
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from nodes.cloud import CloudConfig, CloudNode
from nodes.compute import PartsCache
from nodes.edge import EdgeConfig, EdgeNode
from nodes.errors import ConfigureError
from nodes.messages import Configure
from nodes.multiexit import ExitSet, PolicySetup
from nodes.test import Connections, measure
from tests.programs import Nodes

DATA = synthetic_dataset(n=64, seed=3)
BATCH = 32


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "mem.pt", dataset="synthetic")


async def test_an_edge_that_refuses_a_reconfiguration_leaves_the_cloud_as_it_was(checkpoint: Path) -> None:
    torch.set_num_threads(1)
    cloud_cache, edge_cache = PartsCache(), PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cloud_cache.get(checkpoint, 2), cloud_cache)
    cloud_addr = await cloud.start()
    edge = EdgeNode(
        EdgeConfig(cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=0.5, timeout=5.0),
        edge_cache.get(checkpoint, 2),
        edge_cache,
        PolicySetup("adaptive", ExitSet.load(edge_cache, checkpoint, (1, 2), 2)),
    )
    nodes = Nodes(cloud, edge, cloud_addr, await edge.start())
    conns = await Connections.open(nodes.client(batch_size=BATCH))
    try:
        with pytest.raises(ConfigureError, match="adaptive exit policy") as info:
            await conns.configure(Configure(checkpoint=str(checkpoint), exit=1, threshold=0.5))
        assert info.value.node == "edge"
        # (before: the cloud had taken exit 1, and the next run failed on "the edge runs exit 2 but the
        # cloud runs exit 1")
        assert conns.cloud_ready.exit == 2 and nodes.cloud.parts.exit == 2
        result = await measure(nodes.client(batch_size=BATCH, samples=64), DATA, conns)
        assert len(result.samples) == 64
    finally:
        await conns.close()
        await nodes.close()
