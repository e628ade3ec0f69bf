"""_modules/patroni.py and _modules/etcd_cluster.py against answers recorded from the lab's
Patroni 4.1 and etcd 3.4 (tests/recordings/record.py), served over real HTTP on loopback."""

from __future__ import annotations

import functools
import json
import time
from datetime import datetime

import pytest
from salt.exceptions import CommandExecutionError

from tests.certificates import issue
from tests.unit.conftest import LoaderContext, load_module, salt_utils
from tests.unit.recorded_api import MEMBERS, RecordedCluster, cluster_config

patroni = load_module("_modules/patroni.py")
etcd_cluster = load_module("_modules/etcd_cluster.py")
PILLAR = {"pgcluster_credentials:restapi": "recorded-secret"}


@pytest.fixture
def configure_loader_modules():
    funcs = {"pgcluster.config": cluster_config,
             "pillar.get": lambda key, default=None, unmask=False: PILLAR.get(key, default)}
    return {patroni: {"__salt__": funcs, "__utils__": salt_utils(), "__context__": LoaderContext()},
            etcd_cluster: {"__salt__": funcs, "__utils__": salt_utils()}}


@pytest.fixture
def recorded(request):
    """request.param: a scenario, or (scenario, down), or (scenario, down, raw): see
    RecordedCluster."""
    param = request.param if isinstance(request.param, tuple) else (request.param,)
    cluster = RecordedCluster(*param)
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


def _timed(function, *args, **kwargs):
    started = time.monotonic()
    try:
        return function(*args, **kwargs), time.monotonic() - started
    except CommandExecutionError as exc:
        return exc, time.monotonic() - started


# srv3 powered off, as the lab recorded it; its address accepts connections and never answers
# (a hung host: the worst case, where only the timeout ends the wait).
@pytest.mark.parametrize("recorded", [("member_down", (), {"postgres-srv3": "silent"})],
                         indirect=True)
def test_a_member_down_shows_as_such_quickly(recorded):
    # One member that does not answer costs one timeout per call, not one per request to it.
    listing, took = _timed(patroni.list_, timeout=1)
    assert took < 1.8, f"patroni.list took {took:.2f} s with one member down, timeout 1 s"
    members = _by_name(listing)
    # Patroni still lists the powered-off member, from its last word in etcd.
    assert members["postgres-srv3"]["state"] == "stopped"
    assert members["postgres-srv3"]["lag_mb"] == "unknown"
    assert members["postgres-srv3"]["host"] == "127.0.0.13"
    health, took = _timed(patroni.health, timeout=1)
    assert took < 1.8, f"patroni.health took {took:.2f} s with one member down, timeout 1 s"
    assert health["healthy"] is False
    down = health["members"]["postgres-srv3"]
    assert down["rest_api"] is False
    assert "postgres-srv3" in down["error"] and "http://127.0.0.13:18008/patroni" in down["error"]
    assert health["members"]["postgres-srv1"]["role"] == "Leader"


# The first member asked is the silent one: the others' answers must not wait behind it.
@pytest.mark.parametrize("recorded", [("healthy", (), {"postgres-srv1": "silent"})], indirect=True)
def test_a_silent_first_member_does_not_hold_up_the_others(recorded):
    listing, took = _timed(patroni.list_, timeout=1)
    assert took < 1.8, f"patroni.list took {took:.2f} s with the first member silent, timeout 1 s"
    assert sorted(_by_name(listing)) == sorted(MEMBERS)
    assert listing["system_identifier"].isdigit()  # from another member's /patroni
    health, took = _timed(etcd_cluster.health, timeout=1)
    assert took < 1.8, f"etcd_cluster.health took {took:.2f} s with the first member silent"
    assert health["healthy"] == len(MEMBERS) - 1 and health["quorum"] is True


SILENT = {name: "silent" for name in cluster_config()["member_names"]}


@pytest.mark.parametrize("recorded", [("healthy", (), SILENT)], indirect=True)
def test_members_are_asked_at_once_so_silent_ones_cost_one_timeout(recorded):
    # 3 members that accept and never answer, timeout 1 s: asked one after another that is 3 s
    # or more per call; asked at once, about 1 s.
    bound = 2.5
    for function in (patroni.list_, patroni.cluster, patroni.history, patroni.dynamic_config):
        error, took = _timed(function, timeout=1)
        assert took < bound, f"patroni.{function.__name__} took {took:.2f} s"
        assert isinstance(error, CommandExecutionError)
        assert "no Patroni REST API answered" in str(error)
        for name, address in (("postgres-srv1", "127.0.0.11"), ("postgres-srv3", "127.0.0.13")):
            assert f"{name}'s Patroni REST API did not answer GET http://{address}:18008/" in str(error)
    health, took = _timed(patroni.health, timeout=1)
    assert took < bound, f"patroni.health took {took:.2f} s"
    assert health["healthy"] is False
    assert all(not m["rest_api"] and m["error"] for m in health["members"].values())
    etcd_health, took = _timed(etcd_cluster.health, timeout=1)
    assert took < bound, f"etcd_cluster.health took {took:.2f} s"
    assert (etcd_health["healthy"], etcd_health["quorum"]) == (0, False)
    assert "http://127.0.0.12:12379/health" in etcd_health["endpoints"]["http://127.0.0.12:12379"]["error"]
    status, took = _timed(etcd_cluster.status, timeout=1)
    assert took < bound, f"etcd_cluster.status took {took:.2f} s"
    assert len(status) == 3 and all("error" in row for row in status)
    for function in (etcd_cluster.members, etcd_cluster.patroni_keys):
        error, took = _timed(function, timeout=1)
        assert took < bound, f"etcd_cluster.{function.__name__} took {took:.2f} s"
        assert isinstance(error, CommandExecutionError) and "no etcd endpoint answered" in str(error)


@pytest.mark.parametrize("how", ["close", "garbage"])
def test_a_member_that_hangs_up_or_answers_garbage_is_a_clear_error(how):
    wrong = {"close": "RemoteDisconnected", "garbage": "BadStatusLine"}[how]
    cluster = RecordedCluster("healthy", raw={name: how for name in SILENT})
    try:
        with pytest.raises(CommandExecutionError, match="no Patroni REST API answered") as error:
            patroni.list_(timeout=1)
        for name, address in (("postgres-srv1", "127.0.0.11"), ("postgres-srv2", "127.0.0.12")):
            assert (f"{name}'s Patroni REST API did not answer GET http://{address}:18008/cluster: "
                    f"{wrong}") in str(error.value)
        health = patroni.health(timeout=1)
        assert all(wrong in m["error"] for m in health["members"].values())
        endpoints = etcd_cluster.health(timeout=1)["endpoints"]
        assert all(wrong in e["error"] and "/health" in e["error"] for e in endpoints.values())
        with pytest.raises(CommandExecutionError, match=f"no etcd endpoint answered: .*{wrong}"):
            etcd_cluster.members(timeout=1)
        report = patroni.restart("postgres-srv2")
        assert report["postgres-srv2"]["outcome"] == "unreachable"
        assert "http://127.0.0.12:18008/restart" in report["postgres-srv2"]["message"]
        assert patroni.__context__["retcode"] == 1
    finally:
        cluster.close()


@pytest.mark.parametrize("how", ["close", "garbage"])
@pytest.mark.parametrize("recorded", ["switchover"], indirect=True)
def test_an_action_whose_answer_never_comes_is_a_clear_error(recorded, how):
    # The member answers what it is asked to read, then hangs up or answers garbage to the
    # action itself: an error naming it and the URL, not a traceback.
    wrong = {"close": "RemoteDisconnected", "garbage": "BadStatusLine"}[how]
    leader = patroni.leader()
    sync = next(n for n, role in patroni.members().items() if role == "Sync Standby")
    urls = {name: f"http://{address}:18008" for name, address in MEMBERS.items()}
    recorded.misbehave(leader, "POST /switchover", how)
    with pytest.raises(CommandExecutionError) as error:
        patroni.switchover(candidate=sync)
    assert str(error.value).startswith(
        f"{leader}'s Patroni REST API did not answer POST {urls[leader]}/switchover: {wrong}")
    recorded.misbehave(sync, "POST /reinitialize", how)
    with pytest.raises(CommandExecutionError, match=f"{sync}'s Patroni REST API did not answer "
                                                    f"POST {urls[sync]}/reinitialize: {wrong}"):
        patroni.reinit(sync)
    for name in MEMBERS:
        recorded.misbehave(name, "POST /failover", how)
    with pytest.raises(CommandExecutionError, match=f"did not answer POST .*/failover: {wrong}"):
        patroni.failover(sync)


@pytest.mark.parametrize("recorded", [("healthy", (), {"postgres-srv3": "silent"})], indirect=True)
def test_an_action_on_a_member_that_hangs_ends_at_its_timeout(recorded, monkeypatch):
    monkeypatch.setattr(patroni, "RESTART_TIMEOUT", 1)
    report, took = _timed(patroni.restart, "postgres-srv3", timeout=1)
    assert took < 2.5, f"patroni.restart took {took:.2f} s against a 1 s timeout"
    assert report["postgres-srv3"]["outcome"] == "unreachable"
    message = report["postgres-srv3"]["message"]
    assert message.startswith("postgres-srv3's Patroni REST API did not answer POST "
                              "http://127.0.0.13:18008/restart: ")
    assert "timed out" in message or "no answer within 1 s" in message


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
    # Patroni's own refusal, passed on with its status (the candidate is valid as far as the
    # module can tell: the synchronous standby).
    answers = recorded.answers[leader]
    answers["POST /switchover"] = answers["POST /switchover (unknown candidate)"]
    sync = next(n for n, role in patroni.members().items() if role == "Sync Standby")
    with pytest.raises(CommandExecutionError, match=r"Patroni refused the switchover \(HTTP 412\): "
                                                    "candidate name does not match with sync_standby"):
        patroni.switchover(candidate=sync)
    sent = [r for r in recorded.requests() if r[0] == "POST"]
    assert sent and sent[-1][3]["Authorization"].startswith("Basic ")
    answers["POST /reinitialize"] = answers["POST /reinitialize (on the leader)"]
    with pytest.raises(CommandExecutionError, match="Patroni refused the reinitialize"):
        patroni.reinit(leader)


def _sync_and_async(leader):
    roles = patroni.members()
    sync = next(n for n, role in roles.items() if role == "Sync Standby")
    asynchronous = next(n for n, role in roles.items() if role == "Replica")
    return sync, asynchronous


@pytest.mark.parametrize("recorded", ["switchover"], indirect=True)
def test_switchover_without_a_candidate_lets_patroni_choose(recorded):
    leader = patroni.leader()
    sync, _ = _sync_and_async(leader)
    answers = recorded.answers[leader]
    answers["POST /switchover"] = answers["POST /switchover (to the synchronous standby)"]
    result = patroni.switchover()
    # Only the leader: with synchronous_mode Patroni takes the synchronous standby.
    assert recorded.posts("/switchover") == [(leader, {"leader": leader})]
    assert result["previous_leader"] == leader and result["candidate"] is None
    assert f'switched over to "{sync}"' in result["message"]
    # The POST itself (GETs of the round before it may still arrive after it: order is free).
    post = next(r for r in recorded.requests(leader) if r[:2] == ("POST", "/switchover"))
    assert post[3]["Authorization"].startswith("Basic ")


@pytest.mark.parametrize("recorded", ["switchover"], indirect=True)
def test_switchover_to_the_synchronous_standby(recorded):
    leader = patroni.leader()
    sync, _ = _sync_and_async(leader)
    answers = recorded.answers[leader]
    answers["POST /switchover"] = answers["POST /switchover (to the synchronous standby)"]
    result = patroni.switchover(candidate=sync)
    assert recorded.posts("/switchover") == [(leader, {"leader": leader, "candidate": sync})]
    assert result == {"previous_leader": leader, "candidate": sync, "scheduled_at": None,
                      "message": f'Successfully switched over to "{sync}"'}


@pytest.mark.parametrize("recorded", ["switchover"], indirect=True)
def test_switchover_to_an_asynchronous_replica_is_refused_before_asking_patroni(recorded):
    leader = patroni.leader()
    sync, asynchronous = _sync_and_async(leader)
    # What Patroni answers it (recorded), were the module to ask.
    answers = recorded.answers[leader]
    answers["POST /switchover"] = answers["POST /switchover (asynchronous candidate)"]
    expected = (f"{asynchronous} is an asynchronous replica; with synchronous_mode Patroni "
                f"switches over only to the synchronous standby: {sync}")
    with pytest.raises(CommandExecutionError) as error:
        patroni.switchover(candidate=asynchronous)
    assert str(error.value) == expected
    # Without GET /config (an older API, or none answers it) the roles in /cluster tell.
    for member_answers in recorded.answers.values():
        del member_answers["GET /config"]
    with pytest.raises(CommandExecutionError) as error:
        patroni.switchover(candidate=asynchronous)
    assert str(error.value) == expected
    assert recorded.posts("/switchover") == []


@pytest.mark.parametrize("recorded", ["member_down"], indirect=True)
def test_switchover_to_a_stopped_or_nofailover_replica_is_refused_before_asking_patroni(recorded):
    # srv3 is powered off (Patroni lists it as stopped); srv2 is the synchronous standby.
    with pytest.raises(CommandExecutionError) as error:
        patroni.switchover(candidate="postgres-srv3")
    assert str(error.value) == ("postgres-srv3 is stopped: Patroni promotes only a running "
                                "replica; valid candidates: postgres-srv2")
    for answers in recorded.answers.values():
        if "GET /cluster" not in answers:
            continue  # srv3: powered off when recorded, nothing to serve
        cluster = json.loads(answers["GET /cluster"]["body"])
        for member in cluster["members"]:
            if member["name"] == "postgres-srv2":
                member["tags"] = {"nofailover": True}
        answers["GET /cluster"]["body"] = json.dumps(cluster)
    with pytest.raises(CommandExecutionError) as error:
        patroni.switchover(candidate="postgres-srv2")
    assert str(error.value) == ("postgres-srv2 is tagged nofailover: Patroni never promotes it; "
                                "valid candidates: none now")
    assert recorded.posts("/switchover") == []


@pytest.mark.parametrize("recorded", ["healthy", "lag", "member_down", "switched_over"],
                         indirect=True)
def test_health_names_roles_as_list_does(recorded):
    listing = {m["name"]: m["role"] for m in patroni.list_()["members"]}
    health = {name: m["role"] for name, m in patroni.health()["members"].items()}
    assert health == listing
    assert "Sync Standby" in health.values()


@pytest.mark.parametrize("recorded", [("refusals", ("postgres-srv3",))], indirect=True)
def test_restart_all_reports_every_member_and_fails_when_one_did_not_restart(recorded):
    srv1, srv2 = recorded.answers["postgres-srv1"], recorded.answers["postgres-srv2"]
    # srv1 refuses (recorded: a request Patroni does not accept the credentials of), srv2
    # restarts, srv3 is down.
    srv1["POST /restart"] = srv1["POST /restart (no credentials)"]
    srv2["POST /restart"] = srv2["POST /restart (restarted)"]
    report = patroni.restart("all")
    assert report == {
        "postgres-srv1": {"outcome": "refused", "message": "Patroni refused the restart of "
                          "postgres-srv1 (HTTP 401): no auth header received"},
        "postgres-srv2": {"outcome": "ok", "message": "restarted successfully"},
        "postgres-srv3": {"outcome": "unreachable", "message": report["postgres-srv3"]["message"]},
    }
    assert report["postgres-srv3"]["message"].startswith(
        "postgres-srv3's Patroni REST API did not answer POST http://127.0.0.13:18008/restart: ")
    assert [member for member, _ in recorded.posts("/restart")] == ["postgres-srv1", "postgres-srv2"]
    assert patroni.__context__["retcode"] == 1


@pytest.mark.parametrize("recorded", ["refusals"], indirect=True)
def test_restart_pending_skips_the_members_with_nothing_pending(recorded):
    restarted = recorded.answers["postgres-srv2"]["POST /restart (restarted)"]
    nothing = recorded.answers["postgres-srv2"]["POST /restart (nothing pending)"]
    recorded.answers["postgres-srv1"]["POST /restart"] = restarted
    recorded.answers["postgres-srv2"]["POST /restart"] = nothing
    recorded.answers["postgres-srv3"]["POST /restart"] = restarted
    report = patroni.restart("all", pending=True)
    assert {name: entry["outcome"] for name, entry in report.items()} == {
        "postgres-srv1": "ok", "postgres-srv2": "skipped", "postgres-srv3": "ok"}
    assert all(body == {"restart_pending": True} for _, body in recorded.posts("/restart"))
    assert "retcode" not in patroni.__context__


@pytest.mark.parametrize("recorded", ["switched_over"], indirect=True)
def test_history(recorded):
    history = patroni.history()
    listing = patroni.list_()
    leader = patroni.leader()
    timeline = next(m["timeline"] for m in listing["members"] if m["name"] == leader)
    assert timeline > 1 and len(history) == timeline - 1
    last = history[-1]
    # The last promotion made the current leader, and started its timeline.
    assert last["new_leader"] == leader
    assert last["timeline"] == timeline - 1
    assert isinstance(last["lsn"], int) and last["lsn"] > 0
    assert last["reason"] == "no recovery target specified"
    assert datetime.fromisoformat(last["timestamp"]).tzinfo is not None
    assert [entry["timeline"] for entry in history] == list(range(1, timeline))


@pytest.mark.parametrize("recorded", ["switched_over"], indirect=True)
def test_pause_and_resume_ask_the_leader(recorded):
    # The leader (srv3 here) rather than the first member by name that answers.
    leader = patroni.leader()
    config = json.loads(recorded.answers[leader]["GET /config"]["body"])
    recorded.answers[leader]["PATCH /config"] = {"status": 200,
                                                 "body": json.dumps(dict(config, pause=True))}
    assert patroni.pause() == {"paused": True}
    recorded.answers[leader]["PATCH /config"]["body"] = json.dumps(config)
    assert patroni.resume() == {"paused": False}
    patches = [(s.member, json.loads(r[2])) for s in recorded.servers for r in s.requests
               if r[0] == "PATCH"]
    assert patches == [(leader, {"pause": True}), (leader, {"pause": False})]


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


@pytest.mark.parametrize("recorded", [("healthy", ("postgres-srv3",))], indirect=True)
def test_is_leader_asks_the_members_own_patroni(recorded):
    leader = patroni.leader()
    assert patroni.is_leader(leader) is True
    others = [name for name in MEMBERS if name != leader]
    # A replica says no (503), a member that does not answer is not the leader either.
    assert [patroni.is_leader(name, timeout=1) for name in others] == [False, False]
    assert patroni.is_leader("not-a-member") is False


@pytest.mark.parametrize("recorded", [("healthy", ("postgres-srv3",))], indirect=True)
def test_etcd_logins_are_what_each_running_patroni_says(recorded):
    """The header a member's Patroni sends once it runs with its etcd login (the config
    salt/patroni writes asks for it), per member; a member that does not answer says why."""
    recorded.send_headers("postgres-srv1", {patroni.ETCD_USER_HEADER: "patroni"})
    logins = patroni.etcd_logins(timeout=1)
    assert logins["postgres-srv1"] == {"etcd_user": "patroni"}
    assert logins["postgres-srv2"] == {"etcd_user": None}
    assert logins["postgres-srv3"]["error"].startswith(
        "postgres-srv3's Patroni REST API did not answer GET http://127.0.0.13:18008/patroni")


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_operations_model_the_cluster_from_the_masters_pillar_as_it_is_now(recorded):
    # The minion daemon's copy of the pillar may hold a mistake fixed on the master since.
    asked = []

    def config(fresh=False):
        asked.append(fresh)
        return cluster_config()

    for module in (patroni, etcd_cluster):
        module.__salt__["pgcluster.config"] = config
    patroni.list_()
    etcd_cluster.health()
    assert asked and all(asked)


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_health_reports_the_archive_against_the_leaders_wal_position(recorded):
    # Where pgBackRest is not installed, health says so and where to ask.
    report = patroni.health()
    assert report["healthy"] is True
    assert report["archive"]["ok"] is None and "pgBackRest is not on" in report["archive"]["error"]
    asked = []

    def archive_lag(location):
        asked.append(location)
        return {"ok": False, "repositories": {1: {"newest": "x", "segments_waiting": 5}}}

    patroni.__salt__["pgbackrest.archive_lag"] = archive_lag
    try:
        report = patroni.health()
    finally:
        del patroni.__salt__["pgbackrest.archive_lag"]
    # The leader's position from its REST API; a failing archive does not make it unhealthy.
    leader = report["leader"]
    assert asked == [json.loads(recorded.answers[leader]["GET /patroni"]["body"])["xlog"]["location"]]
    assert report["archive"]["ok"] is False and report["healthy"] is True


# --- Patroni's REST API over HTTPS (pgcluster:patroni:tls) ----------------------------------

@pytest.fixture
def https_cluster(tmp_path):
    """The healthy recording served over HTTPS, each member with a certificate from a CA of
    the test's own naming its address; yields (start, ca) where start(tls) serves it with
    {member: (cert, key)} overriding some members' certificates."""
    ca = issue("cluster-ca")
    (tmp_path / "ca.crt").write_bytes(ca[0])
    patroni.__salt__["pgcluster.config"] = functools.partial(cluster_config,
                                                             ca_file=str(tmp_path / "ca.crt"))
    servers = []

    def start(overrides=None):
        tls = {n: issue(n, ca, address=a) for n, a in MEMBERS.items()}
        servers.append(RecordedCluster("healthy", tls={**tls, **(overrides or {})}, tmp=tmp_path))
        return servers[-1]

    yield start, ca
    for server in servers:
        server.close()


def test_the_rest_api_over_https_is_verified_by_the_clusters_ca(https_cluster):
    start, _ = https_cluster
    start()
    listing = patroni.list_()
    assert all(m["state"] in ("running", "streaming") for m in listing["members"])
    assert patroni.health()["healthy"] is True


def test_a_certificate_from_another_ca_or_for_another_address_is_refused(https_cluster):
    start, ca = https_cluster
    start({"postgres-srv2": issue("postgres-srv2", issue("another-ca"), address=MEMBERS["postgres-srv2"]),
           "postgres-srv3": issue("postgres-srv3", ca, address="127.0.0.99")})
    members = patroni.health()["members"]
    assert members["postgres-srv1"]["rest_api"] is True
    for name, why in (("postgres-srv2", "CERTIFICATE_VERIFY_FAILED"), ("postgres-srv3", "mismatch")):
        assert members[name]["rest_api"] is False
        assert f"https://{MEMBERS[name]}:18008/" in members[name]["error"] and why in members[name]["error"]


def test_a_missing_ca_certificate_is_named(https_cluster, tmp_path):
    (tmp_path / "ca.crt").unlink()
    with pytest.raises(CommandExecutionError, match=f"{tmp_path / 'ca.crt'}.*salt/tls puts it there"):
        patroni.list_()


# --- etcd over TLS with client certificates, and etcd's users (pgcluster:etcd:tls, auth) ------

PREFIX = "/service/pg-cluster-skynet/"
ETCD_PASSWORDS = {"pgcluster_credentials:etcd_reader": "reader-secret",
                  "pgcluster_credentials:etcd_patroni": "patroni-secret"}


@pytest.fixture
def secure_etcd(tmp_path, monkeypatch):
    """The healthy recording with etcd over HTTPS (each member's certificate from the cluster's
    CA, naming its address) and its users on; the CA's certificate where salt/tls puts it.
    Yields (cluster, ca, TLS folder)."""
    ca = issue("cluster-ca")
    (tmp_path / "ca.crt").write_bytes(ca[0])
    monkeypatch.setitem(etcd_cluster.__salt__, "pgcluster.config", functools.partial(
        cluster_config, ca_file=str(tmp_path / "ca.crt"), etcd_tls=True, etcd_auth=True))
    for key, value in ETCD_PASSWORDS.items():
        monkeypatch.setitem(PILLAR, key, value)
    servers = tmp_path / "servers"
    started = []

    def start(tls=None):
        started.append(RecordedCluster(
            "healthy", tls=tls or {n: issue(n, ca, address=a) for n, a in MEMBERS.items()},
            tmp=servers, etcd_tls=True, etcd_users={"reader": ("reader-secret", PREFIX, False),
                                                    "patroni": ("patroni-secret", PREFIX, True)}))
        return started[-1]

    yield start, ca, tmp_path
    for recorded in started:
        recorded.close()


def _tokens(recorded, path):
    return {r[3].get("Authorization") for r in recorded.requests() if r[1] == path}


def test_etcd_over_https_verified_by_the_clusters_ca_and_as_the_reader_user(secure_etcd):
    recorded = secure_etcd[0]()
    assert etcd_cluster.health()["quorum"] is True
    assert [row.get("error") for row in etcd_cluster.status()] == [None, None, None]
    assert {m["name"] for m in etcd_cluster.members()} == set(MEMBERS)
    assert etcd_cluster.patroni_keys()["leader"] in MEMBERS
    # Patroni's keys are read as reader; health, status and the member list take no token.
    assert _tokens(recorded, "/v3/kv/range") == {"token-of-reader.1"}
    assert _tokens(recorded, "/v3/maintenance/status") == {None}


def test_removing_patronis_keys_is_patronis_not_the_readers(secure_etcd):
    recorded = secure_etcd[0]()
    with pytest.raises(CommandExecutionError):  # no recorded answer: only who asked matters
        etcd_cluster.remove_patroni_keys()
    assert _tokens(recorded, "/v3/kv/deleterange") == {"token-of-patroni.1"}


def test_a_wrong_etcd_password_names_its_pillar_key(secure_etcd, monkeypatch):
    secure_etcd[0]()
    monkeypatch.setitem(PILLAR, "pgcluster_credentials:etcd_reader", "not-the-password")
    with pytest.raises(CommandExecutionError, match="etcd refused the user reader "
                       r"\(pgcluster_credentials:etcd_reader\): .*authentication failed"):
        etcd_cluster.patroni_keys()


def test_an_etcd_member_with_a_certificate_from_another_ca_is_refused(secure_etcd):
    start, ca, _folder = secure_etcd
    stranger = issue("postgres-srv2", issue("another-ca"), address=MEMBERS["postgres-srv2"])
    start({**{n: issue(n, ca, address=a) for n, a in MEMBERS.items()}, "postgres-srv2": stranger})
    health = etcd_cluster.health(timeout=1)
    assert health["healthy"] == 2 and health["quorum"] is True
    error = health["endpoints"]["https://127.0.0.12:12379"]["error"]
    assert "https://127.0.0.12:12379/health" in error and "CERTIFICATE_VERIFY_FAILED" in error


def test_a_missing_ca_certificate_for_etcd_is_named(secure_etcd):
    _start, _ca, folder = secure_etcd
    (folder / "ca.crt").unlink()
    with pytest.raises(CommandExecutionError, match=f"etcd's TLS: cannot load the cluster's CA "
                       f"{folder / 'ca.crt'}"):
        etcd_cluster.health()


@pytest.mark.parametrize("recorded", ["healthy"], indirect=True)
def test_a_state_reaches_patroni_as_its_runs_pillar_says_not_as_the_masters(recorded, tmp_path):
    """bin/deploy --pillar turning Patroni's TLS off: the members' REST APIs speak plain HTTP
    already while the master's pillar still says HTTPS. The states' calls (fresh=False) follow
    the run's pillar; an operator's call (fresh, the default) follows the master's."""
    ca = issue("cluster-ca")
    (tmp_path / "ca.crt").write_bytes(ca[0])
    masters = cluster_config(ca_file=str(tmp_path / "ca.crt"))  # TLS on
    runs = cluster_config()  # the override: TLS off, as the members serve now
    patroni.__salt__["pgcluster.config"] = lambda fresh=False: masters if fresh else runs
    dcs = load_module("_states/patroni_dcs.py")
    dcs.__salt__ = {"patroni.dynamic_config": patroni.dynamic_config,
                    "patroni.patch_config": patroni.patch_config}
    dcs.__opts__ = {"test": True}
    current = patroni.dynamic_config(fresh=False)
    assert dcs.managed("dcs", {"ttl": current["ttl"]})["result"] is True
    assert sum(patroni.is_leader(name, fresh=False) for name in MEMBERS) == 1
    with pytest.raises(CommandExecutionError, match=r"GET https://127\.0\.0\.11:18008/config"):
        patroni.dynamic_config()
