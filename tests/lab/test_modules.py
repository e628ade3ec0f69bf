"""The execution modules on the live cluster, from the web host: no ssh to a database host."""

from __future__ import annotations

import time

import pytest

from lab.cluster import SYNCHRONOUS_ROLES, cluster, leader, on_web, salt
from lab.workload import run_under
from tests.conftest import REPO, VENV_BIN, run
from tests.lab.conftest import LAB, wait_healthy

C = cluster()
MEMBERS = list(C.members)
WEB = C.web
LAST = MEMBERS[-1]
# The modules' default timeout per round of requests (DEFAULT_TIMEOUT in _modules/patroni.py and
# _modules/etcd_cluster.py): a member down costs at most this much, once per call.
MODULE_TIMEOUT = 2.0


@pytest.fixture
def healthy_cluster(lab):
    return wait_healthy(settled=True)


def leader_of(listing: dict) -> str:
    return next(m["name"] for m in listing["members"] if m["role"] == "Leader")


def salt_on_web(*args: str):
    """`salt WEB ARGS` as an operator types it: the table or error they read, and the exit."""
    return run(VENV_BIN / "salt", WEB, *args, check=False)


def test_patroni_list_from_the_web_host(healthy_cluster):
    listing = on_web("patroni.list")
    assert listing["cluster"] == C.name
    assert listing["system_identifier"].isdigit()
    assert listing["paused"] is False
    roles = sorted(m["role"] for m in listing["members"])
    assert roles == C.settled_roles
    for member in listing["members"]:
        assert {"name", "host", "role", "state", "timeline", "lag_mb"} <= set(member)
    # The default outputter shows a table, as patronictl list does.
    table = salt_on_web("patroni.list").stdout
    assert f"+ Cluster: {C.name} (" in table
    assert "| Member" in table and "| Leader" in table and f"| {roles[-1]}" in table


def test_switchover_moves_the_leader_and_list_shows_it(healthy_cluster):
    old = leader_of(healthy_cluster)
    candidate = next(m["name"] for m in healthy_cluster["members"] if m["role"] in SYNCHRONOUS_ROLES)
    result = on_web("patroni.switchover", f"candidate={candidate}")
    assert result["previous_leader"] == old
    assert candidate in result["message"]
    deadline = time.monotonic() + 60
    while leader() != candidate:
        assert time.monotonic() < deadline, "the leader did not change"
        time.sleep(1)
    assert on_web("patroni.leader") == candidate
    history = on_web("patroni.history")
    assert history[-1]["new_leader"] == candidate
    wait_healthy()


def test_patroni_refusals_are_clear(healthy_cluster):
    current = leader_of(healthy_cluster)
    out = salt_on_web("patroni.switchover", f"candidate={current}")
    assert out.returncode != 0 and f"{current} is already the leader" in out.stdout
    out = salt_on_web("patroni.switchover", "candidate=no-such-member")
    assert "unknown member 'no-such-member'" in out.stdout
    out = salt_on_web("patroni.reinit", current)
    # Patroni's own message, passed on.
    assert out.returncode != 0 and "Patroni refused the reinitialize" in out.stdout
    assert leader() == current


def test_switchover_to_an_asynchronous_replica_is_refused_with_synchronous_mode_true(
        healthy_cluster):
    # synchronous_mode true (not quorum commit): only the synchronous standby can take over in a
    # switchover; the module says so (naming it) before asking Patroni, and the leader stays.
    current = leader_of(healthy_cluster)
    run_under({"synchronous_mode": True})
    try:
        listing = wait_healthy(sync_standby="Sync Standby")
        sync = next(m["name"] for m in listing["members"] if m["role"] == "Sync Standby")
        asynchronous = next(m["name"] for m in listing["members"] if m["role"] == "Replica")
        out = salt_on_web("patroni.switchover", f"candidate={asynchronous}")
    finally:
        run_under(None)
    assert out.returncode != 0
    assert (f"{asynchronous} is an asynchronous replica; with synchronous_mode Patroni switches "
            f"over only to the synchronous standby: {sync}") in " ".join(out.stdout.split())
    assert leader() == current


def test_etcd_health_status_and_members(healthy_cluster):
    health = on_web("etcd_cluster.health")
    assert health["quorum"] is True and health["healthy"] == len(MEMBERS)
    status = on_web("etcd_cluster.status")
    assert len(status) == len(MEMBERS) and sum(r["is_leader"] for r in status) == 1
    assert all(r["version"].startswith("3.4.") for r in status)
    members = on_web("etcd_cluster.members")
    assert sorted(m["name"] for m in members) == sorted(MEMBERS)
    # Flat keys under /service/<scope>/: "leader", "config", "members/<name>"...
    keys = on_web("etcd_cluster.patroni_keys")
    for name in MEMBERS:
        assert f"members/{name}" in keys, sorted(keys)
        assert keys[f"members/{name}"]["api_url"] == C.patroni_url(name, "/patroni")
    assert keys["leader"] in MEMBERS and keys["leader"] == leader_of(healthy_cluster)
    assert "config" in keys
    assert keys["config"]["synchronous_mode"] == C.model["patroni"]["synchronous_mode"]


def timed_on_web(function: str) -> tuple[object, float]:
    started = time.monotonic()
    result = on_web(function)
    return result, time.monotonic() - started


def test_a_stopped_host_shows_as_down_quickly_and_with_a_clear_error(healthy_cluster):
    # What each call costs with every member up (publish, loading the module, the answers,
    # the return), measured on this machine as it is now: a member down may add one timeout
    # (every member is asked at once), plus a margin for a noisy machine. Without a timeout a
    # dropped SYN would hold the call for TCP's two minutes.
    functions = ("etcd_cluster.health", "patroni.list", "patroni.health")
    bound = {f: min(timed_on_web(f)[1] for _ in range(2)) + MODULE_TIMEOUT + 4.0 for f in functions}
    run(LAB, "stop", LAST)
    try:
        health, took = timed_on_web("etcd_cluster.health")
        assert took < bound["etcd_cluster.health"], \
            f"etcd_cluster.health took {took:.1f} s (bound {bound['etcd_cluster.health']:.1f} s)"
        assert health["healthy"] == len(MEMBERS) - 1 and health["quorum"] is True
        down = health["endpoints"][C.etcd_url(LAST)]
        assert down["healthy"] is False and f"{C.etcd_url(LAST)}/health" in down["error"]
        listing, took = timed_on_web("patroni.list")
        assert took < bound["patroni.list"], \
            f"patroni.list took {took:.1f} s (bound {bound['patroni.list']:.1f} s)"
        stopped = next(m for m in listing["members"] if m["name"] == LAST)
        assert stopped["state"] in ("unreachable", "stopped")
        health, took = timed_on_web("patroni.health")
        assert took < bound["patroni.health"], \
            f"patroni.health took {took:.1f} s (bound {bound['patroni.health']:.1f} s)"
        stopped = health["members"][LAST]
        assert stopped["rest_api"] is False
        assert LAST in stopped["error"] and C.patroni_url(LAST, "/patroni") in stopped["error"]
    finally:
        run(LAB, "start", LAST)
    wait_healthy(timeout=240)


def test_a_pillar_mistake_fixed_on_the_master_is_gone_without_a_deployment(healthy_cluster):
    cluster_sls = REPO / "pillar" / "cluster.sls"
    original = cluster_sls.read_text()
    try:
        cluster_sls.write_text(original.replace("\n  members:", "\n  patorni: {}\n  members:", 1))
        salt(WEB, "saltutil.refresh_pillar", "wait=True", check=True)
        # The minion daemon's copy now holds the typo: a state would refuse it, naming the key.
        assert "pgcluster:patorni: unknown key" in salt_on_web("pgcluster.config").stdout
    finally:
        cluster_sls.write_text(original)
    # Fixed on the master: the operator's next call works at once, no deployment, no refresh.
    listing = on_web("patroni.list", check=True)
    assert sorted(m["name"] for m in listing["members"]) == sorted(MEMBERS)
    assert on_web("etcd_cluster.health", check=True)["quorum"] is True
    salt(WEB, "saltutil.refresh_pillar", "wait=True", check=True)
