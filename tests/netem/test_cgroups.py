"""Cgroup plans for v1 and v2, applied to a fake hierarchy in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from netem import CapabilityError, EdgeCgroup, EdgeLimits, plan_cgroup
from netem.probe import cgroup_version


def fake_v1(root: Path) -> Path:
    for c in ("cpu", "cpuset", "memory"):
        (root / c).mkdir()
    (root / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (root / "cpuset" / "cpuset.cpus").write_text("0-1\n")
    (root / "cpuset" / "cpuset.mems").write_text("0\n")
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    return root


def fake_v2(root: Path) -> Path:
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    (root / "cpuset.cpus.effective").write_text("0-3\n")
    return root


def test_version_detection(tmp_path: Path) -> None:
    v1 = tmp_path / "a"
    v1.mkdir()
    v2 = tmp_path / "b"
    v2.mkdir()
    assert cgroup_version(fake_v1(v1)) == "v1"
    assert cgroup_version(fake_v2(v2)) == "v2"
    assert cgroup_version(tmp_path) is None


def test_v1_plan(tmp_path: Path) -> None:
    root = fake_v1(tmp_path)
    plan = plan_cgroup("lxab-edge", EdgeLimits.parse(cpus="0.5", cpuset="1", memory="256m"), "v1", root)
    assert plan.dirs == (root / "cpu/lxab-edge", root / "cpuset/lxab-edge", root / "memory/lxab-edge")
    assert dict(plan.writes) == {
        root / "cpu/lxab-edge/cpu.cfs_period_us": "100000",
        root / "cpu/lxab-edge/cpu.cfs_quota_us": "50000",
        root / "cpuset/lxab-edge/cpuset.cpus": "1",
        root / "cpuset/lxab-edge/cpuset.mems": "0",
        root / "memory/lxab-edge/memory.limit_in_bytes": str(256 * 2**20),
    }


def test_v2_plan(tmp_path: Path) -> None:
    root = fake_v2(tmp_path)
    plan = plan_cgroup("lxab-edge", EdgeLimits.parse(cpus="1.5", memory="1g"), "v2", root)
    assert plan.dirs == (root / "lxab-edge",)
    assert plan.enable == ((root / "cgroup.subtree_control", "+cpu +memory"),)
    assert dict(plan.writes) == {
        root / "lxab-edge/cpu.max": "150000 100000",
        root / "lxab-edge/memory.max": str(2**30),
    }


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_create_enter_remove(tmp_path: Path, version: str) -> None:
    root = fake_v1(tmp_path) if version == "v1" else fake_v2(tmp_path)
    cg = EdgeCgroup.create("lxab-edge", EdgeLimits.parse(cpus="0.5", cpuset="0", memory="64m"), version, root)
    for path, value in cg.plan.writes:
        assert path.read_text() == value
    cg.enter()  # on a fake tree this only writes our pid into cgroup.procs
    assert all(f.read_text() == str(os.getpid()) for f in cg.plan.procs_files)
    for d in cg.plan.dirs:  # a real cgroup's files vanish with the directory; a fake one's do not
        for f in d.iterdir():
            f.unlink()
    cg.remove()
    assert not any(d.exists() for d in cg.plan.dirs)


def test_refuses_cpus_the_machine_lacks(tmp_path: Path) -> None:
    with pytest.raises(CapabilityError, match="lacks"):
        EdgeCgroup.create("lxab-edge", EdgeLimits.parse(cpuset="7"), "v1", fake_v1(tmp_path))


def test_refuses_without_cgroups(tmp_path: Path) -> None:
    with pytest.raises(CapabilityError, match="cgroups"):
        EdgeCgroup.create("lxab-edge", EdgeLimits.parse(cpus="1"), None, tmp_path)
