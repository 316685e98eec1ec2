"""The nodes' CPU placement: the pure policy on machines of every size, the user's settings winning over
it, and runs that start each node on its set, read it back and record it."""

from __future__ import annotations

import os
from typing import Any

import pytest

import netem
from harness import runner
from harness.config import RunConfig
from harness.display import format_summary
from harness.errors import ConfigError
from harness.placement import AFFINITY, NodePlacement, Placement, place
from harness.runner import node_env, prepare, run_experiment

from .conftest import FakeCommands, FakeTestbed

USABLE = os.sched_getaffinity(0)


def _sets(placement: Any) -> dict[str, set[int] | None]:
    return {
        role: None if (cpus := placement.node(role).cpus) is None else set(cpus)
        for role in ("test", "edge", "cloud")
    }


def _threads(placement: Any) -> dict[str, int | None]:
    return {role: placement.node(role).threads for role in ("test", "edge", "cloud")}


@pytest.mark.parametrize("count", [1, 2])
def test_fewer_than_three_cpus_keep_every_node_on_every_cpu(count: int) -> None:
    placement = place(range(count))
    assert placement.policy == "shared"
    assert _sets(placement) == {"test": None, "edge": None, "cloud": None}
    assert _threads(placement) == {"test": None, "edge": None, "cloud": None}  # (torch's default)
    assert "too few" in placement.reason and placement.overrides == ()


@pytest.mark.parametrize(
    ("count", "edge", "cloud"),
    [(3, {1}, {2}), (4, {1}, {2, 3}), (16, set(range(1, 8)), set(range(8, 16)))],
)
def test_three_or_more_cpus_give_each_node_its_own(count: int, edge: set[int], cloud: set[int]) -> None:
    placement = place(range(count))
    assert placement.policy == "disjoint"
    assert _sets(placement) == {"test": {0}, "edge": edge, "cloud": cloud}
    assert _threads(placement) == {"test": 1, "edge": len(edge), "cloud": len(cloud)}
    for role in ("test", "edge", "cloud"):
        assert placement.node(role).affinity == placement.node(role).cpus  # (the harness applies them)
    described = placement.describe()
    assert described["policy"] == "disjoint" and described["user_overrides"] == []
    assert described["nodes"]["cloud"]["threads"] == len(cloud)


def test_the_split_uses_the_cpus_the_process_may_use_not_cpu_numbers_from_zero() -> None:
    placement = place({2, 5, 7, 9, 11})
    assert _sets(placement) == {"test": {2}, "edge": {5, 7}, "cloud": {9, 11}}


def test_an_edge_quota_above_half_widens_the_edges_share() -> None:
    placement = place(range(8), edge_quota=5.0, edge_limit_threads=5)
    assert _sets(placement) == {"test": {0}, "edge": {1, 2, 3, 4, 5}, "cloud": {6, 7}}
    assert placement.edge.threads == 5 and placement.edge.threads_by == "--edge-cpus"


def test_explicit_sets_win_and_the_policy_places_the_rest_on_what_is_left() -> None:
    only_cloud = place(range(16), cloud_cpuset={12, 13, 14, 15})
    assert _sets(only_cloud) == {"test": {0}, "edge": set(range(1, 12)), "cloud": {12, 13, 14, 15}}
    assert only_cloud.cloud.cpus_by == "--cloud-cpuset" and only_cloud.cloud.threads == 4
    assert only_cloud.edge.cpus_by == "policy" and only_cloud.edge.threads == 11
    assert only_cloud.overrides == ("--cloud-cpuset",)

    only_edge = place(range(4), edge_cpuset={3}, edge_limit_threads=1)
    assert _sets(only_edge) == {"test": {0}, "edge": {3}, "cloud": {1, 2}}
    # (the edge's set is its cgroup's, which the testbed applies: the harness sets no affinity for it)
    assert only_edge.edge.mechanism == "cgroup" and only_edge.edge.affinity is None
    assert only_edge.edge.threads == 1 and only_edge.edge.threads_by == "--edge-cpuset"

    both = place(range(4), edge_cpuset={0}, edge_limit_threads=1, cloud_cpuset={1})
    assert _sets(both) == {"test": {2}, "edge": {0}, "cloud": {1}}


def test_explicit_sets_on_a_small_machine_are_used_as_given() -> None:
    placement = place(range(2), edge_cpuset={0}, edge_limit_threads=1, cloud_cpuset={1})
    assert placement.policy == "shared"
    assert _sets(placement) == {"test": None, "edge": {0}, "cloud": {1}}
    assert _threads(placement) == {"test": None, "edge": 1, "cloud": 1}


def test_the_users_thread_count_wins_over_the_sets_size() -> None:
    placement = place(range(16), environ={"OMP_NUM_THREADS": "2"})
    assert _threads(placement) == {"test": 2, "edge": 2, "cloud": 2}
    assert placement.edge.user_threads and placement.overrides == ("OMP_NUM_THREADS",)
    assert _sets(placement)["cloud"] == set(range(8, 16))  # (the sets stay)


def test_the_users_own_cpu_pinning_keeps_auto_shared_but_not_an_explicit_disjoint() -> None:
    pinned = {"GOMP_CPU_AFFINITY": "0-15"}
    auto = place(range(16), environ=pinned)
    assert auto.policy == "shared" and "GOMP_CPU_AFFINITY" in auto.reason
    assert _sets(auto) == {"test": None, "edge": None, "cloud": None}
    assert place(range(16), requested="disjoint", environ=pinned).policy == "disjoint"


def test_the_user_chooses_the_policy() -> None:
    assert place(range(16), requested="shared").policy == "shared"
    assert _sets(place(range(16), requested="shared"))["edge"] is None
    assert place(range(3), requested="disjoint").policy == "disjoint"
    with pytest.raises(ValueError, match="at least 3 usable CPUs"):
        place(range(2), requested="disjoint")
    with pytest.raises(ValueError, match="--placement must be one of"):
        place(range(4), requested="spread")


def test_disjoint_on_too_few_cpus_is_refused_before_anything_starts(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "usable_cpus", lambda: frozenset({0, 1}))
    with pytest.raises(ConfigError, match="--placement disjoint needs at least 3 usable CPUs"):
        prepare(small_config.replace(placement="disjoint"))
    with pytest.raises(ValueError, match="--placement must be one of"):
        small_config.replace(placement="spread")


@pytest.mark.skipif(len(USABLE) < 2, reason="needs two usable CPUs")
def test_a_run_on_two_cpus_records_the_shared_policy(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    two = frozenset(sorted(USABLE)[:2])
    monkeypatch.setattr(runner, "usable_cpus", lambda: two)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    tb = fake_testbed.instances[0]
    assert tb.cpus_asked == {"cloud": None, "edge": None, "test": None}
    placement = results.to_json()["config"]["placement"]
    assert placement["policy"] == "shared" and placement["requested"] == "auto"
    assert "too few" in placement["reason"]
    assert {role: node["cpuset"] for role, node in placement["nodes"].items()} == dict.fromkeys(
        ("test", "edge", "cloud")
    )
    assert results.to_json()["config"]["cloud_cpuset"] is None
    shown = f"CPU placement shared: every node on any of CPUs {netem.format_cpuset(two)} (2 usable CPU(s)"
    assert shown in format_summary(results)


class _Recording(FakeTestbed):
    """A fake testbed on a machine with more CPUs than this one: records each node's CPUs and
    environment instead of applying the CPUs."""

    ignore_cpus = True

    def __init__(self, config: Any, **kw: Any) -> None:
        super().__init__(config, **kw)
        self.envs: dict[str, dict[str, str]] = {}

    def popen(self, node: str, argv: Any, *, cpus: Any = None, **kw: Any) -> Any:
        self.envs[node] = dict(kw.get("env") or {})
        return super().popen(node, argv, cpus=cpus, **kw)


def test_a_run_on_sixteen_cpus_starts_each_node_on_its_own_set_and_records_it(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runner, "usable_cpus", lambda: frozenset(range(16)))
    checked: dict[str, frozenset[int]] = {}
    monkeypatch.setattr(runner, "_check_cpus", lambda node, cpus, *_: checked.__setitem__(node.name, cpus))
    FakeTestbed.instances = []
    results = run_experiment(small_config, testbed_factory=_Recording, commands=FakeCommands())
    tb = FakeTestbed.instances[0]
    assert isinstance(tb, _Recording)
    want = {"test": frozenset({0}), "edge": frozenset(range(1, 8)), "cloud": frozenset(range(8, 16))}
    assert tb.cpus_asked == want
    assert checked == want  # every set is read back once the node runs
    assert {node: tb.envs[node]["OMP_NUM_THREADS"] for node in want} == {
        "test": "1",
        "edge": "7",
        "cloud": "8",
    }
    assert tb.envs["edge"]["MKL_NUM_THREADS"] == "7"
    placement = results.to_json()["config"]["placement"]
    assert placement["policy"] == "disjoint" and placement["usable_cpus"] == "0-15"
    assert placement["nodes"]["edge"] == {
        "cpuset": "1-7",
        "mechanism": "sched_setaffinity",
        "cpus_by": "policy",
        "threads": 7,
        "threads_by": "policy",
    }
    # the cloud's CPUs are recorded where --cloud-cpuset's are, so reports and check keep such runs apart
    assert results.to_json()["config"]["cloud_cpuset"] == {"cpuset": "8-15", "mechanism": "sched_setaffinity"}
    summary = format_summary(results)
    assert (
        "CPU placement disjoint: test 0 (1 thread), edge 1-7 (7 threads), cloud 8-15 (8 threads)" in summary
    )


def test_the_users_cloud_cpuset_and_thread_count_win_in_a_run(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.setattr(runner, "usable_cpus", lambda: frozenset(range(16)))
    monkeypatch.setattr(runner, "_check_cpus", lambda node, cpus, *_: None)
    FakeTestbed.instances = []
    cfg = small_config.replace(cloud_cpuset="12-15")
    results = run_experiment(cfg, testbed_factory=_Recording, commands=FakeCommands())
    tb = FakeTestbed.instances[0]
    assert isinstance(tb, _Recording)
    assert tb.cpus_asked == {
        "test": frozenset({0}),
        "edge": frozenset(range(1, 12)),
        "cloud": frozenset({12, 13, 14, 15}),
    }
    # the cloud's thread per CPU of --cloud-cpuset, as before; the others get the user's OMP_NUM_THREADS
    assert {node: tb.envs[node]["OMP_NUM_THREADS"] for node in tb.envs} == {
        "cloud": "4",
        "edge": "3",
        "test": "3",
    }
    assert results.to_json()["config"]["placement"]["user_overrides"] == ["--cloud-cpuset", "OMP_NUM_THREADS"]
    placement = prepare(cfg).placement
    assert placement is not None and node_env(tb, "edge", placed=placement.edge)["OMP_NUM_THREADS"] == "3"


@pytest.mark.skipif(len(USABLE) < 3, reason="needs three usable CPUs to give each node its own")
def test_on_this_machine_each_node_runs_on_its_own_cpus(
    small_config: RunConfig, fake_testbed: type[FakeTestbed], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With real affinity: the harness reads each node's CPUs back from the kernel (a run fails when
    they are not its set), and the three sets do not overlap."""
    monkeypatch.delenv("GOMP_CPU_AFFINITY", raising=False)
    results = run_experiment(small_config, testbed_factory=fake_testbed, commands=FakeCommands())
    asked = fake_testbed.instances[0].cpus_asked
    assert all(asked[role] for role in ("test", "edge", "cloud"))
    assert not (
        asked["test"] & asked["edge"] or asked["edge"] & asked["cloud"] or asked["test"] & asked["cloud"]
    )
    assert asked["test"] | asked["edge"] | asked["cloud"] == USABLE
    assert results.to_json()["config"]["placement"]["policy"] == "disjoint"


def _one_cpu_each(monkeypatch: pytest.MonkeyPatch) -> dict[str, frozenset[int]]:
    """A placement with real CPUs of this machine (two suffice): the cloud on one, the edge and the test
    node on the other."""
    low, high = sorted(USABLE)[:2]
    sets = {"test": frozenset({low}), "edge": frozenset({low}), "cloud": frozenset({high})}
    nodes = {role: NodePlacement(cpus, AFFINITY, "policy", 1, "policy") for role, cpus in sets.items()}
    placement = Placement("disjoint", "disjoint", "test", frozenset(USABLE), **nodes)
    monkeypatch.setattr(runner, "plan_placement", lambda *args: placement)
    return sets


@pytest.mark.skipif(len(USABLE) < 2, reason="needs two usable CPUs")
def test_every_placed_node_starts_on_its_cpus_and_a_set_not_applied_fails_the_run(
    small_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.errors import NodeFailure

    sets = _one_cpu_each(monkeypatch)
    FakeTestbed.instances = []
    results = run_experiment(small_config, testbed_factory=FakeTestbed, commands=FakeCommands())
    assert FakeTestbed.instances[0].cpus_asked == sets
    assert results.to_json()["config"]["placement"]["nodes"]["edge"]["cpuset"] == str(min(sets["edge"]))

    class Dropping(FakeTestbed):
        """Drops the CPUs of one node."""

        dropped = ""

        def popen(self, node: str, argv: Any, *, cpus: Any = None, **kw: Any) -> Any:
            self.ignore_cpus = node == self.dropped
            return super().popen(node, argv, cpus=cpus, **kw)

    for dropped in ("edge", "test"):
        Dropping.dropped = dropped
        with pytest.raises(NodeFailure, match=f"{dropped} node.*not within the CPU set"):
            run_experiment(small_config, testbed_factory=Dropping, commands=FakeCommands())
