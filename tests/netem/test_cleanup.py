"""Cleaning matches only this project's naming scheme, never broad names."""

from __future__ import annotations

import pytest

from netem import NetemError, clean, find_leftovers
from netem.cleanup import owned_pattern


@pytest.mark.parametrize("name", ["lx3f9a1c-edge", "lx3f9a1c-te-t", "lx1-probe", "lxab-ec-c"])
def test_family_pattern_matches_our_names(name: str) -> None:
    assert owned_pattern("lx").match(name)


@pytest.mark.parametrize(
    "name", ["lxcbr0", "lxc", "docker0", "lx3f9a1c-edgex", "xlx1-edge", "lx3f9a1c", "lx_1-edge", "eth0"]
)
def test_family_pattern_ignores_other_names(name: str) -> None:
    assert not owned_pattern("lx").match(name)


def test_run_pattern_is_that_run_only() -> None:
    pat = owned_pattern("lx3f9a1c")
    assert pat.match("lx3f9a1c-cloud")
    assert not pat.match("lx3f9a1d-cloud")


@pytest.mark.parametrize("prefix", ["", "l", "docker", "*", "lx-", "lx.*"])
def test_clean_refuses_foreign_prefixes(prefix: str) -> None:
    with pytest.raises(NetemError, match="prefix"):
        clean(prefix)
    with pytest.raises(NetemError, match="prefix"):
        find_leftovers(prefix)


def test_live_prefixes_drop_stale_owner_files(tmp_path: pytest.TempPathFactory) -> None:
    import os
    from pathlib import Path

    from netem.cleanup import live_prefixes, register_owner

    owners = Path(str(tmp_path))
    register_owner("lxaaaaaa", owners)  # this process: alive
    (owners / "lxbbbbbb.owner").write_text("999999999\n")  # no such process
    (owners / "lxcccccc.owner").write_text("garbage\n")
    assert live_prefixes(owners) == {"lxaaaaaa"}
    assert not (owners / "lxbbbbbb.owner").exists() and not (owners / "lxcccccc.owner").exists()
    assert (owners / "lxaaaaaa.owner").read_text().strip() == str(os.getpid())


@pytest.mark.root
def test_clean_leaves_a_live_run_alone(tmp_path: pytest.TempPathFactory) -> None:
    from netem import LinkSpec, TestbedConfig, make_testbed
    from netem.cleanup import OWNER_DIR

    from .test_netns import new_prefix

    prefix = new_prefix()
    with make_testbed(TestbedConfig(prefix, LinkSpec()), isolation="netns"):
        assert (OWNER_DIR / f"{prefix}.owner").exists()
        assert clean(prefix) == []  # its owner (this process) is alive
        assert any(x.startswith("netns") for x in find_leftovers(prefix))
    assert not (OWNER_DIR / f"{prefix}.owner").exists()
    assert find_leftovers(prefix) == []
