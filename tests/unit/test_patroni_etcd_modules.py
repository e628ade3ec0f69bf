"""_modules/patroni.py and _modules/etcd_cluster.py against answers recorded from the lab's
Patroni 4.1 and etcd 3.4 (tests/recordings/record.py), served over real HTTP on loopback."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest
from salt.exceptions import CommandExecutionError

from tests.conftest import REPO
from tests.unit.recorded_api import RecordedCluster, cluster_config


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "_modules" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


patroni = _load("patroni")
etcd_cluster = _load("etcd_cluster")
PILLAR = {"pgcluster_credentials:restapi": "recorded-secret"}


@pytest.fixture
def configure_loader_modules():
    funcs = {"pgcluster.config": cluster_config,
             "pillar.get": lambda key, default=None, unmask=False: PILLAR.get(key, default)}
    return {patroni: {"__salt__": funcs}, etcd_cluster: {"__salt__": funcs}}


@pytest.fixture
def recorded(request):
    scenario, down = request.param if isinstance(request.param, tuple) else (request.param, ())
    cluster = RecordedCluster(scenario, down)
    yield cluster
    cluster.close()


def _by_name(listing):
    return {m["name"]: m for m in listing["members"]}


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_list_of_a_healthy_cluster(recorded):
    listing = patroni.list_()
    assert listing["cluster"] == "pg-cluster-skynet"
    assert listing["system_identifier"].isdigit()
    assert listing["paused"] is False
    members = _by_name(listing)
    assert sorted(m["role"] for m in members.values()) == ["Leader", "Replica", "Sync Standby"]
    for m in members.values():
        assert m["state"] in ("running", "streaming")
        assert isinstance(m["timeline"], int)
    replicas = [m for m in members.values() if m["role"] != "Leader"]
    assert all(m["lag_mb"] == 0 for m in replicas)
    assert patroni.leader() in members
    assert patroni.health()["healthy"] is True


@pytest.mark.parametrize("recorded", ["paused"], indirect=True)
def test_a_paused_cluster_shows_as_paused(recorded):
    assert patroni.list_()["paused"] is True


@pytest.mark.parametrize("recorded", ["lag"], indirect=True)
def test_lag_is_reported_in_megabytes(recorded):
    members = _by_name(patroni.list_())
    lagging = [m for m in members.values() if isinstance(m["replay_lag_mb"], float)
               and m["replay_lag_mb"] > 1]
    assert lagging, members
    assert lagging[0]["receive_lag_mb"] <= lagging[0]["replay_lag_mb"]


@pytest.mark.parametrize("recorded", [("member_down", ("postgres-srv3",))], indirect=True)
def test_a_member_down_shows_as_such_quickly(recorded):
    started = time.monotonic()
    members = _by_name(patroni.list_())
    assert time.monotonic() - started < 5
    # Patroni still lists the powered-off member, from its last word in etcd.
    assert members["postgres-srv3"]["state"] == "stopped"
    assert members["postgres-srv3"]["lag_mb"] == "unknown"
    assert members["postgres-srv3"]["host"] == "127.0.0.13"
    health = patroni.health()
    assert health["healthy"] is False
    assert health["members"]["postgres-srv3"]["rest_api"] is False
    assert health["members"]["postgres-srv3"]["error"]


@pytest.mark.parametrize("recorded", [("healthy", ("postgres-srv3",))], indirect=True)
def test_a_member_that_etcd_forgot_and_that_does_not_answer_is_unreachable(recorded):
    # srv3's API is gone and it is left out of the others' view of the cluster.
    for answers in recorded.answers.values():
        cluster = json.loads(answers["GET /cluster"]["body"])
        cluster["members"] = [m for m in cluster["members"] if m["name"] != "postgres-srv3"]
        answers["GET /cluster"]["body"] = json.dumps(cluster)
    assert _by_name(patroni.list_())["postgres-srv3"]["state"] == "unreachable"


@pytest.mark.parametrize("recorded", [("healthy", tuple(sorted(cluster_config()["members"])))],
                         indirect=True)
def test_no_member_answering_is_an_error_not_a_traceback(recorded):
    with pytest.raises(CommandExecutionError, match="no Patroni REST API answered"):
        patroni.list_()


@pytest.mark.parametrize("recorded", ["refusals"], indirect=True)
def test_switchover_refusals_carry_patronis_message(recorded):
    leader = patroni.leader()
    with pytest.raises(CommandExecutionError, match=f"{leader} is already the leader"):
        patroni.switchover(candidate=leader)
    with pytest.raises(CommandExecutionError, match="unknown member 'postgres-srv9'"):
        patroni.switchover(candidate="postgres-srv9")
    # Patroni's own refusal, passed on with its status.
    answers = recorded.answers[leader]
    answers["POST /switchover"] = answers["POST /switchover (unknown candidate)"]
    replica = next(n for n in recorded.answers if n != leader)
    with pytest.raises(CommandExecutionError, match=r"Patroni refused the switchover \(HTTP 4\d\d\)"):
        patroni.switchover(candidate=replica)
    sent = [r for r in recorded.requests() if r[0] == "POST"]
    assert sent and sent[-1][3]["Authorization"].startswith("Basic ")
    answers["POST /reinitialize"] = answers["POST /reinitialize (on the leader)"]
    with pytest.raises(CommandExecutionError, match="Patroni refused the reinitialize"):
        patroni.reinit(leader)


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_history(recorded):
    history = patroni.history()
    for entry in history:
        assert {"timeline", "lsn", "reason", "new_leader"} <= set(entry)


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_etcd_health_status_members_and_keys(recorded):
    health = etcd_cluster.health()
    assert health["quorum"] is True and health["healthy"] == 3
    status = etcd_cluster.status()
    assert len(status) == 3
    assert sum(row["is_leader"] for row in status) == 1
    assert all(row["version"].startswith("3.4.") and row["raft_term"] > 0 for row in status)
    members = etcd_cluster.members()
    assert sorted(m["name"] for m in members) == ["postgres-srv1", "postgres-srv2", "postgres-srv3"]
    assert all(m["status"] == "started" for m in members)
    keys = etcd_cluster.patroni_keys()
    assert keys["leader"] in ("postgres-srv1", "postgres-srv2", "postgres-srv3")
    assert "config" in keys and "initialize" in keys
    assert keys["config"]["ttl"] == 20


@pytest.mark.parametrize("recorded", [("member_down", ("postgres-srv3",))], indirect=True)
def test_etcd_with_a_member_down(recorded):
    health = etcd_cluster.health()
    assert (health["healthy"], health["quorum"]) == (2, True)
    down = health["endpoints"]["http://127.0.0.13:12379"]
    assert down["healthy"] is False and "refused" in down["error"].lower()
    rows = {row["endpoint"]: row for row in etcd_cluster.status()}
    assert "error" in rows["http://127.0.0.13:12379"]
