"""An edge given a calibration file cuts each exit at the file's threshold and temperature."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from models import synthetic_dataset
from models.calibration import CalibrationFile
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from models.entropy import normalized_entropy
from nodes import edge as edge_program
from nodes.cloud import CloudConfig, CloudNode
from nodes.compute import PartsCache, load_parts
from nodes.edge import EdgeConfig, EdgeNode
from nodes.errors import ConfigureError
from nodes.messages import Configure
from nodes.multiexit import ExitSet, measure_profile
from nodes.policy import ExitPolicy
from nodes.records import RecordsResult
from nodes.test import Connections, run_test_client
from nodes.thresholds import ExitThresholds, read_calibration
from tests.nodes.scripted import ScriptedPolicy
from tests.programs import Nodes

SAMPLES = 128
BATCH = 32
DATA = synthetic_dataset(n=SAMPLES, seed=11)
EXITS = (1, 2)  # (the exits of the model below whose entropies spread over the samples)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny untrained MEM whose exit heads are scaled up, so that their entropies differ from sample to
    sample as a trained model's do (an untrained head's are all about 1)."""
    torch.manual_seed(23)
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("heads.") and p.ndim == 2:
                p.mul_(300)
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "mem.pt", dataset="synthetic")


def _entropy(checkpoint: Path, exit: int, temperature: float = 1.0) -> np.ndarray:
    """ε of every sample at ``exit`` worked out here from the exit head's logits (not by the node)."""
    parts = load_parts(checkpoint, exit)
    with torch.inference_mode():
        _, logits = parts.edge(parts.edge.prepare(torch.from_numpy(DATA.images)))
        assert logits is not None
        return normalized_entropy(logits / temperature).numpy()


def _split(checkpoint: Path, exit: int, fraction: float = 0.5, temperature: float = 1.0) -> float:
    """A threshold that sends about ``fraction`` of the samples out at ``exit``."""
    e = np.sort(_entropy(checkpoint, exit, temperature))
    i = int(len(e) * fraction)
    return float(e[i - 1] + e[i]) / 2


def _write(
    path: Path, checkpoint: Path, thresholds: dict[int, float], temperatures: dict[int, float] | None = None
) -> Path:
    sha = load_parts(checkpoint, 0).meta.sha256
    CalibrationFile(
        target_accuracy=0.9,
        thresholds={str(k): t for k, t in thresholds.items()},
        temperatures={str(k): (temperatures or {}).get(k, 1.0) for k in thresholds},
        checkpoint_sha256=sha,
        validation={"samples": SAMPLES},
        temperature_scaling=temperatures is not None,
    ).write(path)
    return path


@dataclass(frozen=True, eq=False)
class _ScriptedMaker:
    exits: ExitSet
    script: tuple[int, ...]
    name: str = "scripted"
    given: list[ExitThresholds] = field(default_factory=list)

    def make(self, images: np.ndarray, thresholds: ExitThresholds, t0_ns: int) -> ExitPolicy:
        self.given.append(thresholds)
        return ScriptedPolicy(iter((self.script[0], *self.script)))  # (the warm-up batch first)


async def _run(
    checkpoint: Path,
    exit: int,
    *,
    threshold: float = 0.0,
    cuts: ExitThresholds | None = None,
    maker: object = None,
) -> RecordsResult:
    torch.set_num_threads(1)
    cloud_cache, edge_cache = PartsCache(), PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cloud_cache.get(checkpoint, exit), cloud_cache)
    cloud_addr = await cloud.start()
    edge = EdgeNode(
        EdgeConfig(cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=threshold, timeout=5.0),
        edge_cache.get(checkpoint, exit),
        edge_cache,
        maker(edge_cache) if callable(maker) else None,
        cuts,
    )
    nodes = Nodes(cloud, edge, cloud_addr, await edge.start())
    try:
        return await run_test_client(nodes.client(batch_size=BATCH), dataset=DATA)
    finally:
        await nodes.close()


def _where(result: RecordsResult) -> dict[int, str]:
    return {s.id: s.exit for s in result.samples}


async def test_a_calibrated_edge_exits_the_samples_its_file_s_threshold_selects(
    checkpoint: Path, tmp_path: Path
) -> None:
    t2 = _split(checkpoint, 2)
    # (exit 1's threshold differs, so that a file read at the wrong exit would give other counts)
    cal = _write(tmp_path / "cal.json", checkpoint, {1: _split(checkpoint, 1, 0.25), 2: t2})
    args = edge_program.build_parser().parse_args(
        ["--cloud", "127.0.0.1:1", "--checkpoint", str(checkpoint), "--exit", "2", "--calibration", str(cal)]
    )
    cuts = edge_program.exit_thresholds(args, load_parts(checkpoint, 2))
    calibrated = await _run(checkpoint, 2, cuts=cuts)
    plain = await _run(checkpoint, 2, threshold=t2)
    by_hand = int((_entropy(checkpoint, 2) < t2).sum())
    assert 0 < by_hand < SAMPLES
    assert sum(1 for s in calibrated.samples if s.exit == "edge") == by_hand
    assert _where(calibrated) == _where(plain)


async def test_the_calibration_s_temperature_divides_the_logits_before_the_entropy(
    checkpoint: Path, tmp_path: Path
) -> None:
    t2 = _split(checkpoint, 2)
    temperature = 0.8  # (sharper: lower entropies, so more samples under the same T)
    cal = _write(tmp_path / "cal.json", checkpoint, {2: t2}, {2: temperature})
    result = await _run(checkpoint, 2, cuts=read_calibration(cal, load_parts(checkpoint, 2).meta.sha256))
    local = {s.id for s in result.samples if s.exit == "edge"}
    scaled = _entropy(checkpoint, 2, temperature)
    assert local == {i for i in range(SAMPLES) if scaled[i] < t2}
    assert 0 < len(local) < SAMPLES
    assert len(local) != int((_entropy(checkpoint, 2) < t2).sum()), "the temperature changed the split"
    for s in result.samples:
        if s.exit == "edge":
            assert s.entropy == pytest.approx(float(scaled[s.id]), abs=1e-6)


async def test_a_multi_exit_edge_cuts_each_exit_at_its_own_threshold(
    checkpoint: Path, tmp_path: Path
) -> None:
    thresholds = {1: _split(checkpoint, 1), 2: _split(checkpoint, 2, 0.25)}
    cuts = read_calibration(
        _write(tmp_path / "cal.json", checkpoint, thresholds), load_parts(checkpoint, 2).meta.sha256
    )
    script = (1, 2, 1, 2)
    makers: list[_ScriptedMaker] = []

    def maker(cache: PartsCache) -> _ScriptedMaker:
        makers.append(_ScriptedMaker(ExitSet.load(cache, checkpoint, EXITS, 2), script))
        return makers[-1]

    result = await _run(checkpoint, 2, cuts=cuts, maker=maker)
    assert makers[0].given == [cuts]  # (a profile measured at start-up is measured at these)
    entropy = {k: _entropy(checkpoint, k) for k in EXITS}
    for batch, k in zip(result.batches, script, strict=True):
        ids = range(batch.index * BATCH, (batch.index + 1) * BATCH)
        assert batch.stamps.local == sum(1 for i in ids if entropy[k][i] < thresholds[k])


def test_a_profile_counts_each_exit_s_local_samples_at_its_own_threshold(
    checkpoint: Path, tmp_path: Path
) -> None:
    thresholds, temperatures = {1: _split(checkpoint, 1), 2: _split(checkpoint, 2, temperature=2.0)}, {2: 2.0}
    cal = _write(tmp_path / "cal.json", checkpoint, thresholds, temperatures)
    cuts = read_calibration(cal, load_parts(checkpoint, 2).meta.sha256)
    profile = measure_profile(
        ExitSet.load(PartsCache(), checkpoint, EXITS, 2), DATA.images, cuts, batch_size=BATCH, repeats=2
    )
    for k in EXITS:
        by_hand = float((_entropy(checkpoint, k, temperatures.get(k, 1.0)) < thresholds[k]).mean())
        assert profile.at(k).local_rate == by_hand
        assert profile.at(k).threshold == thresholds[k]
    assert profile.at(2).temperature == 2.0
    # a profile measured so is refused by an edge cutting at one other threshold
    with pytest.raises(ValueError, match="measured at exit"):
        edge_program.check_profile(profile, "p.json", ExitThresholds.of(0.5), EXITS)
    edge_program.check_profile(profile, "p.json", cuts, EXITS)


def test_an_edge_refuses_a_calibration_made_for_another_checkpoint(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.manual_seed(24)
    other = save_checkpoint(
        build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6))),
        tmp_path / "other.pt",
        dataset="synthetic",
    )
    cal = _write(tmp_path / "cal.json", checkpoint, {2: 0.5})
    # (the cloud address is nobody's: the refusal must come before the edge tries to reach it)
    argv = ["--cloud", "127.0.0.1:9", "--checkpoint", str(other), "--exit", "2", "--calibration", str(cal)]
    assert edge_program.main([*argv, "--timeout", "30"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another checkpoint" in err[0] and str(cal) in err[0]


def test_threshold_and_calibration_together_are_refused(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cal = _write(tmp_path / "cal.json", checkpoint, {2: 0.5})
    argv = ["--cloud", "127.0.0.1:9", "--checkpoint", str(checkpoint), "--exit", "2"]
    with pytest.raises(SystemExit) as info:
        edge_program.build_parser().parse_args([*argv, "--threshold", "0.3", "--calibration", str(cal)])
    assert info.value.code == 2
    assert "--calibration: not allowed with argument --threshold" in capsys.readouterr().err


def test_a_calibration_without_the_edge_s_exit_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    cal = _write(tmp_path / "cal.json", checkpoint, {1: 0.5})
    args = edge_program.build_parser().parse_args(
        ["--cloud", "127.0.0.1:9", "--checkpoint", str(checkpoint), "--exit", "2", "--calibration", str(cal)]
    )
    with pytest.raises(edge_program.UsageError, match="no threshold for exit 2"):
        edge_program.exit_thresholds(args, load_parts(checkpoint, 2))


async def _connections_to(
    checkpoint: Path, exit: int, *, cuts: ExitThresholds | None = None, maker: object = None
) -> tuple[Nodes, Connections]:
    cloud_cache, edge_cache = PartsCache(), PartsCache()
    cloud = CloudNode(CloudConfig(timeout=5.0), cloud_cache.get(checkpoint, exit), cloud_cache)
    cloud_addr = await cloud.start()
    edge = EdgeNode(
        EdgeConfig(cloud_host=cloud_addr[0], cloud_port=cloud_addr[1], threshold=0.5, timeout=5.0),
        edge_cache.get(checkpoint, exit),
        edge_cache,
        maker(edge_cache) if callable(maker) else None,
        cuts,
    )
    nodes = Nodes(cloud, edge, cloud_addr, await edge.start())
    return nodes, await Connections.open(nodes.client(batch_size=BATCH))


async def test_a_calibrated_edge_takes_its_own_thresholds_and_refuses_others(
    checkpoint: Path, tmp_path: Path
) -> None:
    thresholds = {1: _split(checkpoint, 1), 2: _split(checkpoint, 2)}
    cal = _write(tmp_path / "cal.json", checkpoint, thresholds)
    cuts = read_calibration(cal, load_parts(checkpoint, 2).meta.sha256)
    nodes, conns = await _connections_to(checkpoint, 2, cuts=cuts)
    try:
        assert conns.edge_ready.threshold == thresholds[2]
        await conns.configure(Configure(checkpoint=str(checkpoint), exit=1, threshold=thresholds[1]))
        assert (conns.edge_ready.exit, conns.edge_ready.threshold) == (1, thresholds[1])
        with pytest.raises(ConfigureError, match="from its calibration file"):
            await conns.configure(Configure(checkpoint=str(checkpoint), exit=2, threshold=0.5))
        assert conns.cloud_ready.exit == 1 and nodes.edge.parts.exit == 1
    finally:
        await conns.close()
        await nodes.close()
