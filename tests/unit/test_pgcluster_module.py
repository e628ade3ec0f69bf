"""The cluster model (_modules/pgcluster.py): defaults, derived values and the pillar checks."""

from __future__ import annotations

import copy
import importlib.util

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("pgcluster", REPO / "_modules" / "pgcluster.py")
pgcluster = importlib.util.module_from_spec(spec)
spec.loader.exec_module(pgcluster)

CLUSTER_PILLAR = yaml.safe_load((REPO / "pillar" / "cluster.sls").read_text())["pgcluster"]
CREDENTIALS = {n: f"secret-{n}" for n in ("superuser", "replication", "rewind", "app", "restapi",
                                          "pgbouncer_admin")}


def _pillar_get(pillar):
    def get(key, default=None, unmask=False):
        value = pillar
        for part in key.split(":"):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value
    return get


@pytest.fixture
def pillar():
    return {"pgcluster": copy.deepcopy(CLUSTER_PILLAR), "pgcluster_credentials": dict(CREDENTIALS)}


@pytest.fixture
def configure_loader_modules(pillar):
    return {pgcluster: {"__salt__": {"pillar.get": _pillar_get(pillar)},
                        "__opts__": {"id": "postgres-srv1"}}}


def test_the_repo_pillar_gives_the_original_tasks_cluster():
    cfg = pgcluster.config()
    assert cfg["name"] == "pg-cluster-skynet"
    assert cfg["member_names"] == ["postgres-srv1", "postgres-srv2", "postgres-srv3"]
    assert cfg["web_names"] == ["web"]
    assert cfg["bootstrap_member"] == "postgres-srv1"
    assert cfg["etcd"]["initial_cluster"] == (
        "postgres-srv1=http://10.0.0.11:2380,postgres-srv2=http://10.0.0.12:2380,"
        "postgres-srv3=http://10.0.0.13:2380"
    )
    assert cfg["patroni"]["synchronous_mode"] is True
    assert cfg["backend_port"] == 6432  # PgBouncer is on by default


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"members": {"postgres-srv2": {"address": None}}},
         "pillar pgcluster:members:postgres-srv2:address is missing"),
        ({"members": {"postgres-srv2": {"address": "10.0.0.300"}}},
         "pgcluster:members:postgres-srv2:address '10.0.0.300' is not an IPv4 address"),
        ({"members": {"postgres-srv3": {"address": "10.0.0.11"}}},
         "pgcluster:members:postgres-srv3:address 10.0.0.11 is already the address of "
         "pgcluster:members:postgres-srv1"),
        ({"web": {"web": {"address": "10.0.0.12"}}},
         "pgcluster:web:web:address 10.0.0.12 is already the address of pgcluster:members:postgres-srv2"),
        ({"members": {"postgres-srv4": {"address": "10.0.0.14"}}},
         "pgcluster:members has 4 members: etcd runs on each and needs an odd number"),
        ({"patroni": {"ttl": 10}}, "pgcluster:patroni:ttl is 10: Patroni refuses a ttl below 20"),
        ({"patroni": {"loop_wait": 10, "retry_timeout": 10}},
         "loop_wait (10) + 2 * retry_timeout (10) = 30 is more than ttl (20)"),
        ({"patroni": {"tags": {"postgres-srv9": {"nofailover": True}}}},
         "pgcluster:patroni:tags:postgres-srv9: unknown member"),
        ({"patroni": {"tll": 30}}, "pillar pgcluster:patroni:tll: unknown key"),
        ({"patroni": {"ttl": "thirty"}}, "pgcluster:patroni:ttl: expected a whole number"),
        ({"haproxy": {"primary_port": 70000}}, "pgcluster:haproxy:primary_port is 70000: not a port"),
        ({"pgbouncer": {"server_login_retry": 0}},
         "pgcluster:pgbouncer:server_login_retry is 0: it must be at least 1"),
        ({"postgresql": {"version": 16}}, "pgcluster:postgresql:version is 16"),
        ({"web": {"postgres-srv1": {"address": "10.0.0.20"}}},
         "pgcluster:web:postgres-srv1 is also a database member"),
    ],
)
def test_bad_pillar_is_refused_naming_the_key(pillar, override, message):
    for section, value in override.items():
        target = pillar["pgcluster"].setdefault(section, {})
        for key, item in value.items():
            if isinstance(item, dict) and isinstance(target.get(key), dict):
                target[key].update(item)
            else:
                target[key] = item
    with pytest.raises(CommandExecutionError) as error:
        pgcluster.config()
    assert message in str(error.value)


def test_no_members_at_all_is_refused(pillar):
    pillar["pgcluster"]["members"] = {}
    with pytest.raises(CommandExecutionError, match=r"pgcluster:members: list the hosts"):
        pgcluster.config()


def test_patroni_config_of_a_member():
    conf = pgcluster.patroni_config("postgres-srv2", show_secrets=True)
    assert conf["scope"] == "pg-cluster-skynet"
    assert conf["name"] == "postgres-srv2"
    assert conf["etcd3"]["hosts"] == ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"]
    assert conf["restapi"]["listen"] == "10.0.0.12:8008"
    assert conf["restapi"]["authentication"]["password"] == "secret-restapi"
    # One port at the end: `ADDR1:PORT,ADDR2:PORT` breaks replication (lab.md).
    assert conf["postgresql"]["listen"] == "10.0.0.12,127.0.0.1:5432"
    dcs = conf["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 2, 9)
    assert dcs["synchronous_mode"] is True and dcs["failsafe_mode"] is True
    assert dcs["postgresql"]["use_pg_rewind"] is True


def test_patroni_config_hides_passwords_unless_asked():
    conf = pgcluster.patroni_config("postgres-srv2")
    assert conf["restapi"]["authentication"]["password"] == "**********"
    assert conf["postgresql"]["authentication"]["superuser"]["password"] == "**********"
    assert "secret-" not in repr(conf)


def test_pg_hba_is_least_privilege():
    hba = pgcluster.patroni_config("postgres-srv1")["postgresql"]["pg_hba"]
    assert not any("trust" in rule for rule in hba)
    assert all(r.endswith("scram-sha-256") for r in hba if r.startswith("host"))
    replication = [r for r in hba if " replication " in r]
    assert sorted(r.split()[3] for r in replication) == [
        "10.0.0.11/32", "10.0.0.12/32", "10.0.0.13/32", "127.0.0.1/32"]
    app = [r for r in hba if " webapp " in r]
    # Through PgBouncer on the member itself; the web host and others are refused.
    assert app == ["host webapp webapp 10.0.0.11/32 scram-sha-256"]


def test_the_admin_sources_reach_the_apps_database_directly(pillar):
    pgcluster.__opts__["master"] = "10.0.0.1"
    pillar["pgcluster"]["firewall"] = {"admin_sources": ["192.168.5.0/24"]}
    hba = pgcluster.patroni_config("postgres-srv1")["postgresql"]["pg_hba"]
    assert [r for r in hba if " webapp " in r] == [
        "host webapp webapp 10.0.0.11/32 scram-sha-256",
        "host webapp webapp 10.0.0.1/32 scram-sha-256",
        "host webapp webapp 192.168.5.0/24 scram-sha-256"]
    assert not any("10.0.0.1/32" in r for r in hba if "webapp" not in r)


def test_without_pgbouncer_the_web_host_reaches_postgresql_directly(pillar):
    pillar["pgcluster"]["pgbouncer"] = {"enabled": False}
    hba = pgcluster.patroni_config("postgres-srv1")["postgresql"]["pg_hba"]
    assert [r for r in hba if " webapp " in r] == ["host webapp webapp 10.0.0.10/32 scram-sha-256"]
    assert pgcluster.config()["backend_port"] == 5432


def test_a_minion_outside_the_cluster_gets_no_patroni_config():
    with pytest.raises(CommandExecutionError, match="web is not in pillar pgcluster:members"):
        pgcluster.patroni_config("web")


def test_missing_credentials_say_where_they_come_from(pillar):
    del pillar["pgcluster_credentials"]
    with pytest.raises(CommandExecutionError, match=r"pillar/credentials\.sls"):
        pgcluster.patroni_config("postgres-srv1")


def test_roles():
    assert pgcluster.role("postgres-srv3") == "member"
    assert pgcluster.role("web") == "web"
    assert pgcluster.role("other") == "none"


def test_the_firewall_opens_each_port_to_the_hosts_that_use_it(configure_loader_modules):
    pgcluster.__opts__["master"] = "10.0.0.1"
    member = pgcluster.firewall("postgres-srv1")
    clients = ["10.0.0.1", "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]
    assert member["open"] == [22]
    assert member["salt_master"] == {"sources": ["10.0.0.1"], "ports": [4505, 4506]}
    assert {s["name"]: (s["port"], s["sources"]) for s in member["services"]} == {
        "postgresql": (5432, clients), "pgbouncer": (6432, clients), "patroni": (8008, clients),
        "etcd-client": (2379, clients),
        "etcd-peer": (2380, ["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
    }
    web = pgcluster.firewall("web")
    assert web["open"] == [22, 80]
    assert {s["name"]: s["sources"] for s in web["services"]} == {
        "haproxy-primary": ["10.0.0.1"], "haproxy-replica": ["10.0.0.1"]}


def test_admin_sources_must_be_networks(pillar):
    pillar["pgcluster"]["firewall"] = {"admin_sources": ["192.168.1.0/24", "office"]}
    with pytest.raises(CommandExecutionError,
                       match="pgcluster:firewall:admin_sources: 'office' is not an IPv4 network"):
        pgcluster.config()
