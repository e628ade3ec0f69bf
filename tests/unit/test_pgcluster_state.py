"""The state pgcluster.has_address: the host's own addresses against the one the pillar gives."""

from __future__ import annotations

import pytest

from tests.unit.conftest import CLUSTER_PILLAR, load_module

state = load_module("_states/pgcluster.py")
ADDRESS = CLUSTER_PILLAR["members"]["postgres-srv2"]["address"]
KEY = "pgcluster:members:postgres-srv2:address"


@pytest.fixture
def grains():
    return {"id": "postgres-srv2", "ipv4": ["127.0.0.1", ADDRESS]}


@pytest.fixture
def configure_loader_modules(grains):
    return {state: {"__grains__": grains, "__opts__": {"test": False}}}


def test_the_pillars_address_on_the_host_passes_and_changes_nothing():
    ret = state.has_address(ADDRESS, key=KEY)
    assert ret["result"] is True and ret["changes"] == {}


def test_another_address_fails_naming_the_hosts_and_the_pillars(grains):
    grains["ipv4"] = ["127.0.0.1", "10.9.9.9", "172.17.0.1"]
    ret = state.has_address(ADDRESS, key=KEY)
    assert ret["result"] is False
    assert ret["comment"] == (f"postgres-srv2 has 10.9.9.9, 172.17.0.1, but {KEY} gives it {ADDRESS}: "
                              "make the map (its ip_address) and the pillar agree")


def test_a_host_with_only_loopback_says_so(grains):
    grains["ipv4"] = ["127.0.0.1"]
    assert "has no IPv4 address but loopback" in state.has_address(ADDRESS, key=KEY)["comment"]
