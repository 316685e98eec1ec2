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
