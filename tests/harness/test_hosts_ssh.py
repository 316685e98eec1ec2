"""``--hosts``: the nodes on other hosts over ssh -- here network namespaces each running its own sshd,
the cloud's clock 5000 s ahead (``tests/harness/hosts_net.py``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .hosts_net import CLOUD_CLOCK_SHIFT_S, PROJECT, HostsNet, hosts_net, ssh_on, sshd_skip_reason
from .hosts_pki import make_ca, make_node_tls

__all__ = ["hosts_net"]  # (the fixture)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(sshd_skip_reason() is not None, reason=sshd_skip_reason() or ""),
]

SAMPLES = "512"  # (a measured phase of some 0.2 s: longer than the edge's sampling interval)


def harness(*args: str, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *args],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_args(hosts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "run", "--hosts", str(hosts), "--model", "mem", "--exit", "5", "--samples", SAMPLES,
        "--warmup-batches", "1", "--no-calibration", "--max-other-cpu", "10000", "--out", str(out), *extra,
    ]  # fmt: skip


def leftovers(net: HostsNet) -> dict[str, Any]:
    """What of ours is on each host: run folders, qdiscs we added (htb), node processes."""
    out: dict[str, Any] = {}
    for role, host in net.hosts.items():
        folders = sorted(p.name for p in host.state_dir.glob("lx*")) if host.state_dir.is_dir() else []
        qdiscs = subprocess.run(
            ["tc", "-n", host.netns, "qdisc", "show"], capture_output=True, text=True, check=False
        ).stdout
        pids = subprocess.run(
            ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=False
        ).stdout.split()
        nodes = [pid for pid in pids if b"nodes." in _cmdline(pid)]
        out[role] = {"folders": folders, "htb": "htb" in qdiscs, "nodes": nodes}
    return out


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


NOTHING = {"folders": [], "htb": False, "nodes": []}


def test_a_run_across_hosts_with_a_shifted_clock_has_true_procedure_times(
    hosts_net: HostsNet, tmp_path: Path
) -> None:
    out = tmp_path / "results.json"
    r = harness(*run_args(hosts_net.hosts_file(), out, "--bw", "10mbit"))
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    run = results["runs"][0]
    procedures = run["procedures_ms"]
    # the cloud's clock is 5000 s ahead: uncorrected, 3-2 would be about +5 000 000 ms and 5 about -5 000 000
    for name in ("1", "2", "3-2", "4", "5"):
        assert 0 <= procedures[name]["mean"] < 1000, (name, procedures[name])
    clock = run["clock"]
    assert clock["cloud"]["method"] == "offset-corrected"
    assert abs(clock["cloud"]["offset_ns"] - CLOUD_CLOCK_SHIFT_S * 10**9) < 10**9
    assert abs(clock["edge"]["offset_ns"]) < 10**9
    hosts = results["config"]["hosts"]
    assert hosts["cloud"]["environment"]["localexit"] == hosts["test"]["environment"]["localexit"]
    assert hosts["edge"]["environment"]["python"]
    assert results["config"]["link_backend"]["edge_cloud"]["rate"] == "htb"
    assert results["config"]["isolation"] == "hosts"
    assert run["edge_resources_window"] == "measured-phase"
    assert run["edge_rss_mib"]["max"] > 50  # (a process that loaded torch, sampled on its host)
    assert results["config"]["hosts"]["shaping"]["edge"]["dev"] == "to-cloud"
    assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}


@pytest.mark.parametrize(
    ("override", "said"),
    [
        ({"cloud": {"host": "10.79.0.250"}}, "cannot reach the cloud"),
        (
            {"edge": {"project": "/nonexistent/localexit"}},
            "has no localexit project at /nonexistent/localexit",
        ),
    ],
    ids=["unreachable", "no-project"],
)
def test_an_unusable_host_is_one_error_and_nothing_is_left(
    hosts_net: HostsNet, tmp_path: Path, override: dict[str, dict[str, str]], said: str
) -> None:
    out = tmp_path / "results.json"
    r = harness(*run_args(hosts_net.hosts_file(overrides=override), out, "--bw", "10mbit"), timeout=120)
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and said in errors[0], r.stderr
    assert not out.exists()
    assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}


def _wait_for_node(state_dir: Path, role: str, timeout_s: float = 120.0) -> int:
    """PID of the ``role`` node once it runs (its launcher's pid file, in its host's state folder)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pidfile in state_dir.glob(f"lx*/{role}-*.pid"):
            try:
                return int(pidfile.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                pass
        time.sleep(0.1)
    raise AssertionError(f"no {role} node started within {timeout_s:g} s")


def test_a_node_killed_on_its_host_fails_the_run_naming_it(hosts_net: HostsNet, tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    # (a 1 mbit/s edge-cloud link makes the run last well over the 3 s before the kill, however fast the host)
    extra = ("--samples", "10000", "--bw", "1mbit")
    argv = [sys.executable, "-m", "harness", *run_args(hosts_net.hosts_file(), out, *extra)]
    proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = _wait_for_node(hosts_net.hosts["edge"].state_dir, "edge")
        _wait_for_node(hosts_net.test_state_dir, "test")  # (started once the edge and the cloud are ready)
        ssh_on(hosts_net, "edge", "sleep 3; kill -9", str(pid))  # (on its host, during the run)
        _stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, stderr
    assert "error: edge node" in stderr and "during the run" in stderr and "signal 9" in stderr, stderr
    assert not out.exists()
    assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}


def test_clean_removes_what_a_killed_harness_left_on_every_host(hosts_net: HostsNet, tmp_path: Path) -> None:
    hosts = hosts_net.hosts_file()
    out = tmp_path / "results.json"
    argv = [sys.executable, "-m", "harness", *run_args(hosts, out, "--bw", "10mbit", "--samples", "10000")]
    # (killed with SIGKILL, the harness tears nothing down: its nodes run on, which is what clean is for)
    proc = subprocess.Popen(argv, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_node(hosts_net.test_state_dir, "test")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        left = leftovers(hosts_net)
        assert left["edge"]["folders"] and left["edge"]["htb"] and left["cloud"]["folders"], left
        r = harness("clean", "--hosts", str(hosts))
        assert r.returncode == 0, r.stderr
        assert "edge (root@" in r.stdout and "qdisc on to-cloud" in r.stdout, r.stdout
        assert leftovers(hosts_net) == {"edge": NOTHING, "cloud": NOTHING}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_nodes_talk_over_tls_when_the_hosts_file_names_certificates(
    hosts_net: HostsNet, tmp_path: Path
) -> None:
    ca = make_ca(tmp_path / "pki")
    tls = {}
    for role in ("test", "edge", "cloud"):
        files = make_node_tls(tmp_path / "pki", role, ca)
        tls[role] = {"tls_cert": str(files.cert), "tls_key": str(files.key), "tls_ca": str(files.ca)}
    out = tmp_path / "results.json"
    r = harness(*run_args(hosts_net.hosts_file(tls=tls), out))
    assert r.returncode == 0, r.stderr
    results = json.loads(out.read_text())
    assert all(results["config"]["hosts"][role]["tls"] for role in ("test", "edge", "cloud"))
    # one node without TLS cannot join the others
    del tls["cloud"]
    r = harness(*run_args(hosts_net.hosts_file(tls=tls), out))
    assert r.returncode == 2 and "TLS is given for some nodes but not for cloud" in r.stderr, r.stderr
