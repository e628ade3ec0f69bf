"""The execution modules on the live cluster, from the web host: no ssh to a database host."""

from __future__ import annotations

import time

import pytest

from tests.conftest import VENV_BIN, run
from tests.lab.conftest import LAB, on_web, wait_healthy

MEMBERS = ("postgres-srv1", "postgres-srv2", "postgres-srv3")


@pytest.fixture
def healthy_cluster(lab):
    return wait_healthy()


def leader_of(listing: dict) -> str:
    return next(m["name"] for m in listing["members"] if m["role"] == "Leader")


def test_patroni_list_from_the_web_host(healthy_cluster):
    listing = on_web("patroni.list")
    assert listing["cluster"] == "pg-cluster-skynet"
    assert listing["system_identifier"].isdigit()
    assert listing["paused"] is False
    roles = sorted(m["role"] for m in listing["members"])
    assert roles == ["Leader", "Replica", "Sync Standby"]
    for member in listing["members"]:
        assert {"name", "host", "role", "state", "timeline", "lag_mb"} <= set(member)
    # The default outputter shows a table, as patronictl list does.
    table = run(VENV_BIN / "salt", "web", "patroni.list").stdout
    assert "+ Cluster: pg-cluster-skynet (" in table
    assert "| Member" in table and "| Leader" in table and "| Sync Standby" in table


def test_switchover_moves_the_leader_and_list_shows_it(healthy_cluster):
    old = leader_of(healthy_cluster)
    candidate = next(m["name"] for m in healthy_cluster["members"] if m["role"] == "Sync Standby")
    result = on_web("patroni.switchover", f"candidate={candidate}")
    assert result["previous_leader"] == old
    assert candidate in result["message"]
    deadline = time.monotonic() + 60
    while leader_of(on_web("patroni.list")) != candidate:
        assert time.monotonic() < deadline, "the leader did not change"
        time.sleep(1)
    assert on_web("patroni.leader") == candidate
    history = on_web("patroni.history")
    assert history[-1]["new_leader"] == candidate
    wait_healthy()


def test_patroni_refusals_are_clear(healthy_cluster):
    current = leader_of(healthy_cluster)
    out = run(VENV_BIN / "salt", "web", "patroni.switchover", f"candidate={current}", check=False)
    assert out.returncode != 0 and f"{current} is already the leader" in out.stdout
    out = run(VENV_BIN / "salt", "web", "patroni.switchover", "candidate=postgres-srv9", check=False)
    assert "unknown member 'postgres-srv9'" in out.stdout
    out = run(VENV_BIN / "salt", "web", "patroni.reinit", current, check=False)
    # Patroni's own message, passed on.
    assert out.returncode != 0 and "Patroni refused the reinitialize" in out.stdout


def test_etcd_health_status_and_members(healthy_cluster):
    health = on_web("etcd_cluster.health")
    assert health["quorum"] is True and health["healthy"] == 3
    status = on_web("etcd_cluster.status")
    assert len(status) == 3 and sum(r["is_leader"] for r in status) == 1
    assert all(r["version"].startswith("3.4.") for r in status)
    members = on_web("etcd_cluster.members")
    assert sorted(m["name"] for m in members) == list(MEMBERS)
    keys = on_web("etcd_cluster.patroni_keys")
    assert keys["leader"] == leader_of(healthy_cluster)
    assert set(keys["members"] if isinstance(keys.get("members"), dict) else []) <= set(MEMBERS)
    assert any(k.startswith("members/") for k in keys)


def test_a_stopped_host_shows_as_down_quickly_and_with_a_clear_error(healthy_cluster):
    run(LAB, "stop", "postgres-srv3")
    try:
        health = on_web("etcd_cluster.health")
        assert health["healthy"] == 2 and health["quorum"] is True
        down = health["endpoints"]["http://10.0.0.13:2379"]
        assert down["healthy"] is False and down["error"]
        started = time.monotonic()
        listing = on_web("patroni.list")
        elapsed = time.monotonic() - started
        srv3 = next(m for m in listing["members"] if m["name"] == "postgres-srv3")
        assert srv3["state"] in ("unreachable", "stopped")
        print(f"patroni.list with a host down took {elapsed:.1f}s")
    finally:
        run(LAB, "start", "postgres-srv3")
    wait_healthy(timeout=240)
