"""A node on another host writes what the harness reads into the run's folder there, and the harness
fetches it back over ssh. Here ``ssh`` is a stand-in that runs the remote command line on this machine
(no sshd, no root), so the files the "host" has are plain files of a temporary folder."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import netem
from harness.errors import NodeFailure
from harness.hosts import HostsError, load_hosts
from harness.remote_testbed import PROJECT_ROOT, HostsTestbed, RemoteSampler, study_factory

#: ssh's stand-in: its last argument is the remote command line (quoted for a shell), run here.
#: A "node" that writes its argument's path into the file at that path (so the file says where it was).
WRITER = "import json, sys; open(sys.argv[1], 'w').write(json.dumps({'written_at': sys.argv[1]}))"


def hosts_text(state: Path, *, cloud_project: str = str(PROJECT_ROOT)) -> str:
    return f"""
[test]
host = "test.example"
project = "{PROJECT_ROOT}"
python = "{sys.executable}"
state_dir = "{state / "test"}"

[edge]
local = true
state_dir = "{state / "here"}"

[cloud]
host = "cloud.example"
project = "{cloud_project}"
python = "{sys.executable}"
state_dir = "{state / "cloud"}"
"""


def test_the_records_of_a_test_node_on_another_host_are_fetched_and_removed_there(
    tmp_path: Path, fake_ssh: Path
) -> None:
    state = tmp_path / "state"
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(state))
    logs = tmp_path / "logs"
    prefix = "lx" + secrets.token_hex(4)
    config = netem.TestbedConfig(prefix=prefix, edge_cloud=netem.LinkSpec(), log_dir=logs)
    records = logs / "run-0" / "records.json"
    with HostsTestbed(config, load_hosts(path)) as tb:
        proc = tb.popen(
            "test",
            [sys.executable, "-c", WRITER, str(records)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert not records.exists()  # (the node wrote it on its host, in the run's folder there)
        tb.fetch_output("test", records)
        written = json.loads(records.read_text())["written_at"]
        assert written.startswith(f"{state / 'test' / prefix}/"), written
        assert not Path(written).exists()  # (taken from the host)
        # a file the node never wrote fails the run against that node, and leaves nothing here
        missing = logs / "run-1" / "records.json"
        tb.output_path("test", missing)
        with pytest.raises(NodeFailure, match="test node") as info:
            tb.fetch_output("test", missing)
        assert "could not be fetched" in str(info.value)
        assert not missing.exists() and list(missing.parent.iterdir()) == []
    assert not (state / "test" / prefix).exists()  # (the run's folder on every host: removed)


def test_paths_of_this_checkout_and_outputs_map_per_node(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(tmp_path / "state", cloud_project="/srv/lx"))
    logs = tmp_path / "logs"
    tb = HostsTestbed(
        netem.TestbedConfig(prefix="lx0a", edge_cloud=netem.LinkSpec(), log_dir=logs), load_hosts(path)
    )
    checkpoint = PROJECT_ROOT / "models" / "zoo" / "x.pt"
    assert tb.node_path("cloud", checkpoint) == "/srv/lx/models/zoo/x.pt"
    assert tb.node_path("edge", checkpoint) == str(checkpoint)  # (this machine)
    out = logs / "records.json"
    assert tb.output_path("edge", out) == str(out)
    assert tb.output_path("test", out).startswith(f"{tmp_path / 'state' / 'test' / 'lx0a'}/out-")


def test_a_study_across_hosts_needs_the_edge_and_cloud_projects_at_one_folder(tmp_path: Path) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(tmp_path / "state", cloud_project="/srv/lx"))
    with pytest.raises(HostsError, match="same folder") as info:
        study_factory(path)
    assert "/srv/lx" in str(info.value)
    path.write_text(hosts_text(tmp_path / "state"))
    assert study_factory(path) is not None


@pytest.mark.parametrize("command", ["sweep", "reproduce"])
def test_a_study_with_hosts_refuses_placing_nodes_on_this_machines_cpus(tmp_path: Path, command: str) -> None:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(tmp_path / "state"))
    r = subprocess.run(
        [sys.executable, "-m", "harness", command, "--hosts", str(path), "--edge-cpuset", "0",
         "--out-dir", str(tmp_path / "out")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--edge-cpuset places a node on this machine's CPUs: not with --hosts" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_phase_shorter_than_the_sampling_interval_gets_the_samples_around_it() -> None:
    # (a study's edge sampler runs through all its runs: falling back to every sample would mix them)
    lines = [json.dumps({"t_ns": t, "cpu": t / 10, "rss": 2**20, "other": 0}) for t in (100, 200, 300, 400)]
    sampler = RemoteSampler([sys.executable, "-c", f"print({chr(10).join(lines)!r})"]).start()
    try:
        assert sampler.window(150, 250) == ([1], True)
        assert sampler.window(210, 250) == ([1, 2], False)
        assert [sampler.cpu_percent[i] for i in sampler.window(210, 250)[0]] == [20, 30]
    finally:
        sampler.close()
