"""With ``--hosts`` a node's device is the one of the host that runs it: checked there, before any node
starts, and recorded (name, memory) as that host has it -- not as the harness's machine has it.

As in test_hosts_outputs.py, ``ssh`` is a stand-in that runs the remote command line on this machine (no
sshd, no root); a host's ``python`` may be a stand-in too, answering as a host with a GPU would."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

import netem
from harness.config import RunConfig
from harness.hosts import HostsError, load_hosts
from harness.remote_testbed import PROJECT_ROOT, HostsTestbed, hosts_factory
from harness.runner import run_experiment
from models.devices import describe_devices
from tests.harness.conftest import FakeCommands, FakeTestbed

GPU = {"device": "cuda:0", "name": "Stand-in H100", "memory_mib": 81559, "cuda": "12.4"}
#: The python of a host with a GPU: answers `-m models.devices cuda:0` as such a host does.
GPU_PYTHON = f"""#!{sys.executable}
import json, os, sys
if sys.argv[1:3] == ["-m", "models.devices"]:
    print(json.dumps({{d: {GPU!r} if d == "cuda:0" else {{"error": "not here"}} for d in sys.argv[3:]}}))
    sys.exit(0)
os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
"""


def hosts_text(state: Path, cloud_python: str) -> str:
    return f"""
[test]
local = true
state_dir = "{state / "here"}"

[edge]
local = true
state_dir = "{state / "here"}"

[cloud]
host = "gpu.example"
project = "{PROJECT_ROOT}"
python = "{cloud_python}"
state_dir = "{state / "cloud"}"
"""


def make_testbed(tmp_path: Path, cloud_python: str) -> HostsTestbed:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(tmp_path / "state", cloud_python))
    config = netem.TestbedConfig(prefix="lx0d", edge_cloud=netem.LinkSpec(), log_dir=tmp_path / "logs")
    return HostsTestbed(config, load_hosts(path))


def test_a_gpu_on_the_cloud_host_is_found_and_described_there(tmp_path: Path, fake_ssh: Path) -> None:
    python = tmp_path / "gpu-python"
    python.write_text(GPU_PYTHON)
    python.chmod(0o755)
    devices = make_testbed(tmp_path, str(python)).resolve_devices({"edge": "cpu", "cloud": "cuda:0"})
    assert devices["cloud"] == {**GPU, "host": "cloud (gpu.example:22)"}
    assert devices["edge"] == {**describe_devices(["cpu"])["cpu"], "host": "edge (this machine)"}


def test_a_device_the_host_lacks_is_one_error_naming_option_and_host(tmp_path: Path, fake_ssh: Path) -> None:
    if "error" not in describe_devices(["cuda:7"])["cuda:7"]:
        pytest.skip("this machine (the stand-in cloud host) has a cuda:7")
    with pytest.raises(HostsError) as info:
        make_testbed(tmp_path, sys.executable).resolve_devices({"edge": "cpu", "cloud": "cuda:7"})
    message = str(info.value)
    assert message.startswith("--cloud-device cuda:7 on cloud (gpu.example:22): ") and "CUDA" in message
    assert "\n" not in message and "edge" not in message


class GpuHostsTestbed(FakeTestbed):
    """A testbed whose cloud host has a GPU this machine lacks (what --hosts makes of a GPU server)."""

    resolves_devices = True
    asked: list[dict[str, str]] = []  # noqa: RUF012 -- reset by the test

    def resolve_devices(self, requested: dict[str, str]) -> dict[str, dict[str, Any]]:
        GpuHostsTestbed.asked.append(dict(requested))
        cloud = {**GPU, "host": "cloud (gpu.example:22)"}
        return {"edge": {"device": "cpu", "name": "edge host cpu", "memory_mib": 1}, "cloud": cloud}


def test_a_run_on_hosts_checks_and_records_the_hosts_devices(small_config: RunConfig) -> None:
    GpuHostsTestbed.asked = []
    cfg = small_config.replace(cloud_device="cuda:0")
    results = run_experiment(cfg, testbed_factory=GpuHostsTestbed, commands=FakeCommands()).to_json()
    assert GpuHostsTestbed.asked == [{"edge": "cpu", "cloud": "cuda:0"}]
    devices = results["config"]["devices"]
    assert devices["cloud"]["name"] == "Stand-in H100" and devices["edge"]["name"] == "edge host cpu"
    assert devices["cloud"]["host"] == "cloud (gpu.example:22)"


def test_the_hosts_factory_asks_the_hosts_for_devices(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(tmp_path / "state", sys.executable))
    assert getattr(hosts_factory(path), "resolves_devices", False) is True


def test_devices_answer_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    from models.devices import main

    assert main(["cpu", "cuda:9"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["cpu"]["device"] == "cpu" and answer["cpu"]["memory_mib"] > 0
    assert answer["cuda:9"].get("error") or answer["cuda:9"]["device"] == "cuda:9"
    assert main(["--bogus"]) == 2
