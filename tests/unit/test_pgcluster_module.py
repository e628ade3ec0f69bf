"""The execution module pgcluster: the model and renderers (_utils) as Salt's loader gives them
to a minion, fed the pillar and the components' defaults from the fileserver."""

from __future__ import annotations

import copy

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import CLUSTER_PILLAR, CREDENTIALS, DEFAULTS_PILLAR, load_module, salt_utils

pgcluster = load_module("_modules/pgcluster.py")



def _pillar_get(pillar):
    def get(key, default=None, unmask=False):
        value = pillar
        for part in key.split(":"):
            if not isinstance(value, dict) or part not in value:
                return default
            value = value[part]
        return value
    return get


def _pillar_items(pillar):
    def items(unmask=False):
        FETCHES.append(unmask)
        return copy.deepcopy(pillar.get("on_the_master", pillar))
    return items


FETCHES: list = []


@pytest.fixture
def pillar():
    return {"pgcluster": copy.deepcopy(CLUSTER_PILLAR), "pgcluster_credentials": dict(CREDENTIALS),
            "pgcluster_defaults": copy.deepcopy(DEFAULTS_PILLAR)}


@pytest.fixture
def configure_loader_modules(pillar):
    return {pgcluster: {
        "__salt__": {"pillar.get": _pillar_get(pillar), "pillar.items": _pillar_items(pillar)},
        "__utils__": salt_utils(),
        "__opts__": {"id": "postgres-srv1", "master": "10.0.0.1"},
        "__context__": {},
    }}


def test_config_is_the_model_of_the_pillar_and_the_defaults():
    cfg = pgcluster.config()
    assert cfg["member_names"] == ["postgres-srv1", "postgres-srv2", "postgres-srv3"]
    assert cfg["patroni"]["venv"] == "/opt/patroni"  # from salt/patroni/defaults.yaml


def test_a_bad_pillar_is_a_clear_salt_error(pillar):
    pillar["pgcluster"]["patroni"] = {"ttl": 10}
    with pytest.raises(CommandExecutionError, match=r"^pillar pgcluster:patroni:ttl: 10 is not allowed"):
        pgcluster.config()


def test_no_cluster_pillar_says_where_it_comes_from(pillar):
    del pillar["pgcluster"]
    with pytest.raises(CommandExecutionError, match=r"pillar pgcluster is missing.*pillar/top\.sls"):
        pgcluster.config()


def test_patroni_config_hides_passwords_unless_asked():
    conf = pgcluster.patroni_config("postgres-srv2")
    assert conf["restapi"]["authentication"]["password"] == "**********"
    assert "secret-" not in repr(conf)
    shown = pgcluster.patroni_config("postgres-srv2", show_secrets=True)
    assert shown["postgresql"]["authentication"]["superuser"]["password"] == "secret-superuser"


def test_the_salt_master_may_reach_the_apps_database_and_is_let_through_the_firewall():
    hba = pgcluster.patroni_config()["postgresql"]["pg_hba"]
    assert "hostssl webapp webapp 10.0.0.1/32 scram-sha-256" in hba
    assert pgcluster.firewall()["salt_master"] == {"sources": ["10.0.0.1"], "ports": [4505, 4506]}


def test_a_minion_outside_the_cluster_gets_no_patroni_config():
    with pytest.raises(CommandExecutionError, match="web is not in pillar pgcluster:members"):
        pgcluster.patroni_config("web")


def test_missing_defaults_say_where_they_come_from(pillar):
    del pillar["pgcluster_defaults"]
    with pytest.raises(CommandExecutionError, match=r"ext_pillar pgcluster_defaults"):
        pgcluster.config()


def test_a_broken_defaults_file_is_named(pillar):
    pillar["pgcluster_defaults"]["patroni"]["patroni"]["ttl"] = "twenty"
    with pytest.raises(CommandExecutionError, match=r"pgcluster:patroni:ttl: 'twenty'"):
        pgcluster.config()


def test_missing_credentials_say_where_they_come_from(pillar):
    del pillar["pgcluster_credentials"]
    with pytest.raises(CommandExecutionError, match=r"ext_pillar pgcluster_credentials"):
        pgcluster.patroni_config("postgres-srv1")


def test_fresh_asks_the_master_once_per_job_and_ignores_the_minions_copy(pillar):
    FETCHES.clear()
    # The minion's copy still holds a typo the master's pillar no longer has.
    pillar["on_the_master"] = copy.deepcopy(pillar)
    pillar["pgcluster"]["patorni"] = {}
    with pytest.raises(CommandExecutionError, match="patorni"):
        pgcluster.config()
    assert pgcluster.config(fresh=True)["member_names"] == sorted(CLUSTER_PILLAR["members"])
    pgcluster.config(fresh=True)
    assert FETCHES == [True]  # one fetch, unmasked, for the whole job


def test_own_address_is_the_pillars_with_its_key():
    assert pgcluster.own_address() == {
        "address": CLUSTER_PILLAR["members"]["postgres-srv1"]["address"],
        "key": "pgcluster:members:postgres-srv1:address"}
    web = next(iter(CLUSTER_PILLAR["web"]))
    pgcluster.__opts__["id"] = web
    assert pgcluster.own_address()["key"] == f"pgcluster:web:{web}:address"
    pgcluster.__opts__["id"] = "stranger"
    with pytest.raises(CommandExecutionError, match="stranger is in neither pillar pgcluster:members"):
        pgcluster.own_address()


def test_the_web_apps_config_follows_its_data_path_and_hides_secrets(pillar):
    """libpq (the default): every member's PostgreSQL in one string (not PgBouncer, which
    reports a stale in_hot_standby), libpq finding the writer or a standby, each verified by
    its address, and pg_hba letting the web host in; haproxy: HAProxy's two ports on the web
    host, and the web host not let in; the password and the form key hidden unless asked for."""
    cfg = pgcluster.config()
    assert cfg["webapp"]["data_path"] == "libpq"
    shown = pgcluster.webapp_config()
    assert shown["writer"]["password"] == "**********" and shown["csrf_secret"] == "**********"
    config = pgcluster.webapp_config(show_secrets=True)
    assert config["writer"]["password"] == CREDENTIALS["app"]
    hosts = ",".join(cfg["members"][n]["address"] for n in cfg["member_names"])
    assert {k: config["writer"][k] for k in ("host", "port", "target_session_attrs", "sslmode")} \
        == {"host": hosts, "port": cfg["postgresql"]["port"], "target_session_attrs": "read-write",
            "sslmode": "verify-full"}
    assert config["reader"] == {**config["writer"], "target_session_attrs": "prefer-standby"}
    assert config["spread_reads"] is True
    address = cfg["web"][cfg["web_names"][0]]["address"]
    web = f"hostssl {cfg['app']['database']} {cfg['app']['user']} {address}/32"
    hba = pgcluster.patroni_config()["postgresql"]["pg_hba"]
    assert f"{web} scram-sha-256" in hba
    pillar["pgcluster"].setdefault("webapp", {})["data_path"] = "haproxy"
    config = pgcluster.webapp_config(show_secrets=True)
    assert (config["writer"]["host"], config["writer"]["port"], config["reader"]["port"]) == (
        "127.0.0.1", cfg["haproxy"]["primary_port"], cfg["haproxy"]["replica_port"])
    assert config["writer"]["sslmode"] == "verify-ca" and config["spread_reads"] is False
    hba = pgcluster.patroni_config()["postgresql"]["pg_hba"]
    assert not [rule for rule in hba if rule.startswith(web)]
    pillar["pgcluster"]["webapp"]["data_path"] = "pgpool"
    with pytest.raises(CommandExecutionError, match="pgcluster:webapp:data_path"):
        pgcluster.config()
