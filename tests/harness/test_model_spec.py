"""A user's own model (``--model-spec``) and the nodes' devices, end to end through ``python -m harness``.

The model is ``tests.models.tiny_model:build``: three stages, exits after the first two, defined in the
test suite as a researcher would define theirs; its checkpoint is built untrained for the synthetic set.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.config import RunConfig
from models import synthetic_dataset
from models.checkpoint import save_checkpoint
from models.protocol import build_from_spec
from models.train import input_spec_of
from reports.architectures import architectures_table
from reports.loader import load_results
from reports.tables import group_scenarios

SPEC = "tests.models.tiny_model:build"
REPO = Path(__file__).resolve().parents[2]
SMALL = ["--dataset", "synthetic", "--exit", "2", "--samples", "64", "--batch-size", "8",
         "--warmup-batches", "1", "--busy-retries", "0", "--no-calibration"]  # fmt: skip
NO_GPU = "no CUDA device here (the default setup runs on the CPU; a GPU machine runs these)"


@pytest.fixture(scope="module")
def tiny_spec_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = build_from_spec(SPEC, input_spec_of(synthetic_dataset(split="train")))
    path = tmp_path_factory.mktemp("spec") / "tinynet.pt"
    return save_checkpoint(model, path, dataset="synthetic", spec=SPEC)  # type: ignore[arg-type]


def harness(*argv: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "harness", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,  # (the nodes import the user's model by its spec, from the repository root)
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _check_results(out: Path, isolation: str) -> None:
    results = json.loads(out.read_text())
    cfg = results["config"]
    assert cfg["isolation"] == isolation
    assert cfg["model_info"]["spec"] == SPEC and cfg["model_info"]["name"] == "tinynet"
    # float32 features per sample at each cut: the input, 4×14×14 after stage 1, 6×7×7 after stage 2
    assert cfg["model_info"]["feature_bytes"] == {"0": 4 * 28 * 28, "1": 4 * 4 * 14 * 14, "2": 4 * 6 * 7 * 7}
    assert cfg["devices"]["edge"]["device"] == cfg["devices"]["cloud"]["device"] == "cpu"
    assert cfg["devices"]["cloud"]["memory_mib"] > 0
    assert cfg["request"]["model_spec"] == SPEC
    summary = results["runs"][0]["summary"]
    assert summary["samples"] == 64 and summary["local_exits"] + summary["cloud_exits"] == 64


@pytest.mark.slow
def test_a_users_model_runs_end_to_end_on_loopback(tiny_spec_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    ckpt = str(tiny_spec_checkpoint)
    proc = harness(
        *SMALL, "--model-spec", SPEC, "--checkpoint", ckpt, "--isolation", "loopback", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr
    _check_results(out, "loopback")

    # The report puts it beside the paper's CNN, never in the CNN's figures.
    paper_cnn = tmp_path / "cnn.json"
    data = json.loads(out.read_text())
    del data["config"]["model_info"]
    paper_cnn.write_text(json.dumps(data))
    loaded = load_results([out, paper_cnn])
    assert len(group_scenarios(loaded)) == 2
    table = architectures_table(loaded)
    row = dict(zip(table.headers, table.rows[table.column("model").index("tinynet")], strict=True))
    assert row["feature bytes / sample"] == 4 * 6 * 7 * 7 and row["exit"] == 2
    assert table.column("model").count("paper CNN (mem)") == 1

    # The checkpoint names its factory, but only the user's --model-spec makes the harness import it.
    refused = tmp_path / "refused.json"
    proc = harness(*SMALL, "--checkpoint", ckpt, "--isolation", "loopback", "--out", str(refused))
    assert proc.returncode == 2 and f"pass --model-spec {SPEC}" in proc.stderr
    assert not refused.exists()


@pytest.mark.root
@pytest.mark.slow
def test_a_users_model_runs_end_to_end_in_namespaces(tiny_spec_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = harness(
        *SMALL, "--model-spec", SPEC, "--checkpoint", str(tiny_spec_checkpoint), "--bw", "50mbit",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _check_results(out, "netns")


def test_missing_device_is_one_clear_error_before_anything_starts(tmp_path: Path) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    out = tmp_path / "r.json"
    proc = harness(
        *SMALL, "--cloud-device", "cuda:7", "--isolation", "loopback", "--out", str(out), timeout=60
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --cloud-device cuda:7: "), proc.stderr
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_one_is_refused(tmp_path: Path) -> None:
    proc = harness(
        *SMALL, "--edge-device", "cuda", "--isolation", "loopback", "--out", str(tmp_path / "r.json")
    )
    assert proc.returncode == 2 and "error: --edge-device cuda: no CUDA device here" in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_cloud_on_the_gpu(tiny_spec_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    proc = harness(
        *SMALL, "--model-spec", SPEC, "--checkpoint", str(tiny_spec_checkpoint), "--cloud-device", "cuda",
        "--isolation", "loopback", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    devices = json.loads(out.read_text())["config"]["devices"]
    assert devices["cloud"]["device"].startswith("cuda:") and devices["cloud"]["memory_mib"] > 0
    assert devices["edge"]["device"] == "cpu"


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"model_spec": SPEC}, "--model-spec needs --checkpoint"),
        ({"model_spec": "tinynet", "checkpoint": Path("x.pt")}, "--model-spec: a model spec reads"),
        ({"cloud_device": "gpu"}, "--cloud-device: a device is cpu, cuda or cuda:N"),
        ({"edge_device": "cuda:-1"}, "--edge-device: a device is cpu, cuda or cuda:N"),
    ],
)
def test_model_options_are_checked_with_the_configuration(changes: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig(**changes)  # type: ignore[arg-type]


@pytest.mark.parametrize("node", ["cloud", "edge"])
def test_a_node_on_a_missing_device_says_so_in_one_line(node: str, tiny_spec_checkpoint: Path) -> None:
    if torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    argv = [sys.executable, "-m", f"nodes.{node}", "--checkpoint", str(tiny_spec_checkpoint), "--exit", "1"]
    argv += ["--model-spec", SPEC, "--device", "cuda:7"]
    if node == "edge":
        argv += ["--cloud", "127.0.0.1:9", "--threshold", "0.3"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd=REPO)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "--device cuda:7" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_GPU)
def test_parts_on_the_gpu_give_the_cpus_predictions(tiny_spec_checkpoint: Path) -> None:
    from nodes.compute import load_parts, run_cloud, run_edge

    images = synthetic_dataset(n=16).images
    cpu = load_parts(tiny_spec_checkpoint, 2, spec=SPEC)
    gpu = load_parts(tiny_spec_checkpoint, 2, spec=SPEC, device="cuda")
    assert gpu.device.type == "cuda" and cpu.device.type == "cpu"
    on_cpu, on_gpu = run_edge(cpu, images, 1.0), run_edge(gpu, images, 1.0)
    assert on_gpu.features.dtype == on_cpu.features.dtype and on_gpu.features.shape == on_cpu.features.shape
    assert (on_gpu.preds == on_cpu.preds).mean() > 0.9
    preds_cpu, _ = run_cloud(cpu, on_cpu.features)
    preds_gpu, _ = run_cloud(gpu, on_cpu.features)
    assert (preds_cpu == preds_gpu).mean() > 0.9
