"""The Docker testbed: the argv it builds (always), and on a machine with Docker and the node image
(``docker``: root, a running daemon, ``deploy/setup-docker.sh``): a small run identical to the
namespaces' in what it counts, links shaped inside the containers and measured, the edge's limits read
back, a killed container failing the run cleanly, and ``clean`` removing a killed run's containers and
networks by prefix."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from contract.results import Results
from harness.config import LinkOptions, RunConfig
from harness.errors import NodeFailure
from harness.results import write_results
from harness.runner import run_experiment
from models.checkpoint import save_checkpoint
from models.cnn import ModelConfig, build_model
from netem import EdgeLimits, LinkSpec, TestbedConfig, clean, find_leftovers, make_testbed
from netem import cleanup as cleanup_mod
from netem.docker import (
    DEFAULT_IMAGE,
    IMAGE_ENV,
    DockerTestbed,
    limits_mismatch,
    mounts_for,
    node_env,
    node_run_argv,
    parse_addresses,
    parse_limits,
)
from netem.executor import CommandResult
from reports.loader import load_results
from reports.tables import group_scenarios

# --------------------------------------------------------------------------------------------------
# What the testbed asks Docker for (no Docker needed).


def test_a_node_runs_the_images_python_with_its_paths_mounted_and_no_host_paths(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.pt"
    checkpoint.write_bytes(b"x")
    logs = tmp_path / "logs"
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    argv = [
        "/work/venv/bin/python", "-m", "nodes.test", "--checkpoint", str(checkpoint),
        "--out", str(out_dir / "records.json"), f"--log={logs / 'x.log'}", "--edge", "10.0.0.2:7002",
    ]  # fmt: skip
    mounts = mounts_for(argv, [logs])
    assert mounts == [(logs, False), (checkpoint, True), (out_dir, False)]  # not the host's Python
    env = node_env(
        {"PATH": "/work/venv/bin", "HOME": "/root", "OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "30000"},
        {"PATH": "/work/venv/bin", "HOME": "/root", "OMP_NUM_THREADS": "1"},
    )
    assert env == {"GOMP_SPINCOUNT": "30000", "OMP_NUM_THREADS": "1"}  # set by the caller; threads
    args = node_run_argv(
        name="lxab12cd-test-1",
        prefix="lxab12cd",
        role="test",
        image="localexit-node:latest",
        argv=argv,
        env=env,
        mounts=mounts,
        host_python="/work/venv/bin/python",
    )
    image = args.index("localexit-node:latest")
    assert args[image + 1 :] == ["python", *argv[1:]]  # the image's Python, the same arguments
    assert args[args.index("--network") + 1] == "container:lxab12cd-test"
    opts = args[:image]
    assert f"type=bind,source={checkpoint},target={checkpoint},readonly" in opts
    assert f"type=bind,source={out_dir},target={out_dir}" in opts
    assert "PATH=/work/venv/bin" not in opts and "HOME=/root" not in opts
    assert "--interactive" not in opts and "--cpus" not in opts


def test_the_edges_limits_are_dockers_controls_and_read_back_from_either_cgroup_version() -> None:
    limits = EdgeLimits.parse(cpus="0.5", cpuset="1", memory="256m")
    args = node_run_argv(
        name="n",
        prefix="lx1",
        role="edge",
        image="img",
        argv=["sleep", "1"],
        env={},
        mounts=[],
        limits=limits,
    )
    assert args[args.index("--cpus") + 1] == "0.5"
    assert args[args.index("--cpuset-cpus") + 1] == "1"
    assert args[args.index("--memory") + 1] == f"{256 * 2**20}b"
    v1 = parse_limits("50000\n100000\n1\n268435456\n")
    v2 = parse_limits("50000 100000\n1\n268435456\n")
    assert v1 == v2 == {"cpus": 0.5, "cpuset": "1", "memory_bytes": 256 * 2**20}
    assert limits_mismatch(limits, v1) == []
    unlimited = parse_limits("-1\n100000\n0-1\n9223372036854771712\n")
    assert unlimited == {"cpus": None, "cpuset": "0-1", "memory_bytes": None}
    assert len(limits_mismatch(limits, unlimited)) == 3
    assert parse_addresses("1: lo    inet 127.0.0.1/8 scope host lo\n7: eth1    inet 172.19.0.3/16 brd") == {
        "127.0.0.1": "lo",
        "172.19.0.3": "eth1",
    }


class _FakeDocker:
    def __init__(self, containers: str, networks: str) -> None:
        self.out = {"ps": containers, "network": networks}
        self.removed: list[str] = []

    def run(self, argv: list[str], *, check: bool = True) -> CommandResult:
        if argv[1] in ("rm", "network") and argv[-2] in ("--volumes", "rm"):
            self.removed.append(argv[-1])
            return CommandResult(tuple(argv), 0, "", "")
        return CommandResult(tuple(argv), 0, self.out[argv[1]], "")


def test_clean_takes_only_containers_and_networks_named_and_labelled_as_a_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake = _FakeDocker(
        "lxab12cd-edge\tlxab12cd\nlxab12cd-edge-3\tlxab12cd\nlxab12cd-edge\tlxffffff\nlxcbr0\tlxcbr0\n"
        "web-1\t\n",
        "lxab12cd-ec\tlxab12cd\nlxab12cd-net\tlxab12cd\nbridge\t\n",
    )
    monkeypatch.setattr(cleanup_mod, "Executor", lambda: fake)
    monkeypatch.setattr(cleanup_mod.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(cleanup_mod, "_netns_list", lambda ex: [])
    monkeypatch.setattr(cleanup_mod, "_root_links", lambda ex: [])
    monkeypatch.setattr(cleanup_mod, "_child_pids", lambda prefix, skip=frozenset(): [])
    monkeypatch.setattr(cleanup_mod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cleanup_mod, "live_prefixes", lambda owner_dir: set())
    found = cleanup_mod._docker_objects(fake, "lx")  # type: ignore[arg-type]
    assert found == (["lxab12cd-edge", "lxab12cd-edge-3"], ["lxab12cd-ec"])
    removed = clean("lx", cgroup_root=Path("/nonexistent"))
    assert removed == ["container lxab12cd-edge", "container lxab12cd-edge-3", "network lxab12cd-ec"]
    assert fake.removed == ["lxab12cd-edge", "lxab12cd-edge-3", "lxab12cd-ec"]


# --------------------------------------------------------------------------------------------------
# On Docker.


def _docker_skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for Docker and the testbed (CI runs as root)"
    if shutil.which("docker") is None:
        return "needs Docker: deploy/setup-docker.sh installs it and builds the node image"
    r = subprocess.run(["docker", "info"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return "needs a running Docker daemon: deploy/setup-docker.sh starts one"
    image = os.environ.get(IMAGE_ENV, DEFAULT_IMAGE)
    if subprocess.run(["docker", "image", "inspect", image], capture_output=True, check=False).returncode:
        return f"needs the node image {image}: deploy/setup-docker.sh builds it"
    return None


_REASON = _docker_skip_reason()
F = TypeVar("F", bound=Callable[..., Any])


def docker(test: F) -> F:
    """Marked ``docker``, and skipped with the reason where Docker or the image is missing."""
    return pytest.mark.docker(pytest.mark.skipif(_REASON is not None, reason=_REASON or "")(test))


def new_prefix() -> str:
    return "lx" + secrets.token_hex(3)


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained MEM checkpoint with 4 channels per block for the synthetic set (fast to load)."""
    model = build_model(ModelConfig(kind="mem", exit=None, widths=(4,) * 9, pool_after=(2, 4, 6)))
    return save_checkpoint(model, folder / "tiny-mem.pt", dataset="synthetic")


def small_config(checkpoint: Path, isolation: str, **changes: Any) -> RunConfig:
    cfg = RunConfig(
        model="mem",
        exit=2,
        threshold=0.5,
        dataset="synthetic",
        checkpoint=checkpoint,
        samples=96,
        batch_size=8,
        warmup_batches=1,
        calibrate=False,
        isolation=isolation,
        edge_cloud=LinkOptions(rate="10mbit"),
        ready_timeout_s=60.0,
        run_timeout_s=120.0,
        busy_retries=0,
    )
    return cfg.replace(**changes)


def docker_leftovers() -> list[str]:
    return [x for x in find_leftovers("lx") if x.startswith(("container", "network"))]


@docker
def test_a_small_run_counts_the_same_in_containers_as_in_namespaces(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path)
    results = {iso: run_experiment(small_config(checkpoint, iso)).to_json() for iso in ("docker", "netns")}
    summaries = {iso: res["runs"][0]["summary"] for iso, res in results.items()}
    keys = ("samples", "local_exits", "cloud_exits", "edge_accuracy", "cloud_accuracy", "overall_accuracy")
    assert {k: summaries["docker"][k] for k in keys} == {k: summaries["netns"][k] for k in keys}
    assert summaries["docker"]["samples"] == 96
    cfg = results["docker"]["config"]
    assert cfg["isolation"] == "docker"
    assert cfg["container"]["image_id"].startswith("sha256:")
    assert cfg["link_backend"]["edge_cloud"] == {"rate": "tbf"}
    assert results["docker"]["runs"][0]["edge_cpu_percent"]["max"] > 0  # sampled through its PID
    assert docker_leftovers() == []
    paths = []
    for iso, res in results.items():
        paths.append(tmp_path / f"{iso}.json")
        write_results(paths[-1], Results.from_json(res))
    scenarios = group_scenarios(load_results(paths))  # a report keeps the two testbeds apart
    assert sorted(str(s.results[0].results.config.isolation) for s in scenarios) == ["docker", "netns"]


def _measure(tb: DockerTestbed, node: str, *args: str) -> subprocess.Popen[str]:
    return tb.popen(node, [sys.executable, "-m", "netem.measure", *args], stdout=subprocess.PIPE, text=True)


def _server(tb: DockerTestbed, node: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = _measure(tb, node, *args, "--bind", tb.bind_address(node))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("READY"), line
    return proc, int(line.split()[1])


def _client(tb: DockerTestbed, src: str, dst: str, port: int, *args: str) -> dict[str, Any]:
    host, p = tb.connect_address(src, dst, port)
    proc = _measure(tb, src, args[0], "--to", f"{host}:{p}", *args[1:])
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    return dict(json.loads(out))


def _qdiscs(tb: DockerTestbed, role: str) -> str:
    r = subprocess.run(
        ["docker", "exec", f"{tb.config.prefix}-{role}", "tc", "qdisc", "show"],
        capture_output=True,
        text=True,
        check=True,
    )
    return r.stdout


@docker
def test_links_are_shaped_inside_the_containers_as_tcp_sees_them() -> None:
    prefix = new_prefix()
    cfg = TestbedConfig(
        prefix,
        LinkSpec.parse(rate="10mbit", delay="10ms"),
        test_edge=LinkSpec.parse(rate="100mbit"),
        edge_limits=EdgeLimits.parse(cpus="0.5", memory="256m"),
    )
    with make_testbed(cfg, isolation="docker") as tb:
        assert isinstance(tb, DockerTestbed)
        line = "netem" if "netem" in tb.caps.qdiscs else "tun-delay-line"
        assert tb.applied == {"test_edge": {"rate": "tbf"}, "edge_cloud": {"rate": "tbf", "delay": line}}
        for role in ("edge", "cloud"):  # each end of the edge–cloud link, inside its own container
            assert "tbf" in _qdiscs(tb, role)
        _, port = _server(tb, "cloud", "echo", "--connections", "2")
        r = _client(tb, "edge", "cloud", port, "ping", "--count", "10")
        assert min(r["rtt_ms"]) >= 19.5, r  # 2 × 10 ms
        assert min(r["rtt_ms"]) < 40, r
        r = _client(tb, "test", "cloud", port, "ping", "--count", "5")  # routed through the edge
        assert min(r["rtt_ms"]) >= 19.5, r
        sink, port = _server(tb, "cloud", "sink", "--warmup", "0.7")
        _client(tb, "edge", "cloud", port, "send", "--seconds", "2.5")
        out, _ = sink.communicate(timeout=30)
        goodput = json.loads(out)["goodput_bps"]
        assert 10e6 * 1448 / 1500 * 0.85 < goodput < 10e6 * 1.15
        edge = tb.popen("edge", ["sleep", "30"])
        read_back = tb.container["edge_limits_read_back"]
        assert (read_back["cpus"], read_back["memory"]) == ("0.5", "256m")
        assert tb.edge_limits_mechanism is not None and tb.edge_limits_mechanism.startswith("docker-cgroup-")
        assert tb.node_pid(edge) != edge.pid  # the node's own process, not the client's
    assert find_leftovers(prefix) == []


@docker
def test_a_killed_container_fails_the_run_and_leaves_nothing(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path)
    # one sample a batch over a 20 ms link: the run takes tens of seconds, the kill comes within one
    cfg = small_config(checkpoint, "docker", batch_size=1, edge_cloud=LinkOptions(rate="1mbit", delay="20ms"))
    killed: list[str] = []
    done = threading.Event()

    def kill_the_edge() -> None:
        while not done.wait(0.1) and not killed:
            names = subprocess.run(
                ["docker", "ps", "--filter", "label=org.localexit.prefix", "--format", "{{.Names}}"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.split()
            test = [n for n in names if n.split("-")[1:2] == ["test"] and n.count("-") == 2]
            edge = [n for n in names if n.split("-")[1:2] == ["edge"] and n.count("-") == 2]
            if test and edge:  # the run is under way
                time.sleep(0.5)
                subprocess.run(["docker", "kill", edge[0]], capture_output=True, check=True)
                killed.append(edge[0])

    killer = threading.Thread(target=kill_the_edge)
    killer.start()
    try:
        with pytest.raises(NodeFailure) as err:
            run_experiment(cfg)
    finally:
        done.set()
        killer.join()
    assert killed
    assert err.value.node == "edge"
    assert "137" in str(err.value)  # (how Docker reports SIGKILL)
    assert docker_leftovers() == []


RUN = """
import sys, time
from netem import LinkSpec, TestbedConfig, make_testbed
with make_testbed(TestbedConfig(sys.argv[1], LinkSpec.parse(rate="10mbit")), isolation="docker") as tb:
    tb.node_pid(tb.popen("edge", ["sleep", "60"]))  # (once its container runs)
    print("UP", flush=True)
    time.sleep(60)
"""


@docker
def test_clean_removes_a_killed_runs_containers_and_networks_by_prefix() -> None:
    prefix = new_prefix()
    proc = subprocess.Popen([sys.executable, "-c", RUN, prefix], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "UP"
    proc.kill()
    proc.wait(timeout=10)
    left = find_leftovers(prefix)
    holders = {f"container {prefix}-{role}" for role in ("test", "edge", "cloud")}
    assert holders | {f"network {prefix}-te", f"network {prefix}-ec"} <= set(left)
    assert f"container {prefix}-edge-1" in left  # the node's own container
    other = new_prefix()  # a second run is not touched by cleaning the first
    with make_testbed(TestbedConfig(other, LinkSpec()), isolation="docker"):
        removed = clean(prefix)
        assert f"container {other}-edge" in find_leftovers(other)
    assert holders <= set(removed)
    assert find_leftovers(prefix) == []


COMPOSE_FILE = Path(__file__).resolve().parents[2] / "deploy" / "compose.yaml"


@docker
@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="needs docker-compose (setup-docker.sh)")
def test_compose_runs_the_default_experiment_with_the_link_shaped_inside(tmp_path: Path) -> None:
    compose = ["docker-compose", "-f", str(COMPOSE_FILE), "-p", new_prefix()]
    results = COMPOSE_FILE.parent / "results" / "records.json"
    results.unlink(missing_ok=True)
    env = {**os.environ, "SAMPLES": "320", "BW": "10mbit"}
    try:
        r = subprocess.run(
            [*compose, "up", "--abort-on-container-exit", "--exit-code-from", "test"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    finally:
        subprocess.run([*compose, "down"], capture_output=True, env=env, timeout=120, check=False)
    assert "link toward 10.77.255.11: {'rate': 'tbf'}" in r.stdout  # the edge's end, by itself
    records = json.loads(results.read_text())
    assert records["config"]["samples"] == len(records["samples"]["id"]) == 320
    results.unlink()
