"""What the model turns into per host (_utils/pgcluster_render.py): Patroni's configuration,
pg_hba and the firewall's rules."""

from __future__ import annotations

from tests.unit.conftest import CREDENTIALS, build, render

MASTER = "10.0.0.1"


def test_patroni_config_of_a_member(cfg):
    conf = render.patroni_config(cfg, "postgres-srv2", CREDENTIALS, [])
    assert conf["scope"] == "pg-cluster-skynet"
    assert conf["name"] == "postgres-srv2"
    assert conf["etcd3"]["hosts"] == ["10.0.0.11:2379", "10.0.0.12:2379", "10.0.0.13:2379"]
    assert conf["restapi"]["listen"] == "10.0.0.12:8008"
    assert conf["restapi"]["authentication"]["password"] == "secret-restapi"
    # One port at the end: `ADDR1:PORT,ADDR2:PORT` breaks replication (lab.md).
    assert conf["postgresql"]["listen"] == "10.0.0.12,127.0.0.1:5432"
    dcs = conf["bootstrap"]["dcs"]
    assert (dcs["ttl"], dcs["loop_wait"], dcs["retry_timeout"]) == (20, 2, 9)
    assert dcs["synchronous_mode"] == "quorum" and dcs["failsafe_mode"] is True
    assert dcs["postgresql"]["use_pg_rewind"] is True
    assert dcs == render.dcs_config(cfg)


def test_a_members_patroni_tags_come_from_the_pillar():
    cfg = build({"patroni": {"tags": {"postgres-srv3": {"nofailover": True}}}})
    assert render.patroni_config(cfg, "postgres-srv3", CREDENTIALS, [])["tags"]["nofailover"] is True
    assert render.patroni_config(cfg, "postgres-srv2", CREDENTIALS, [])["tags"]["nofailover"] is False


def test_pg_hba_is_least_privilege(cfg):
    hba = render.pg_hba(cfg, "postgres-srv1", [])
    assert not any("trust" in rule for rule in hba)
    assert all(r.split()[-1] == "scram-sha-256" or r.endswith("scram-sha-256 clientcert=verify-ca")
               for r in hba if r.startswith("host"))
    replication = [r for r in hba if " replication " in r]
    assert sorted(r.split()[3] for r in replication if r.startswith("host")) == [
        "10.0.0.11/32", "10.0.0.12/32", "10.0.0.13/32"]
    # Patroni's replication connection to itself goes over the socket: no certificate names
    # 127.0.0.1.
    assert "local replication replicator scram-sha-256" in hba
    # The web host (the app's libpq data path, the default) and PgBouncer on the member
    # itself, showing the member's certificate; others are refused.
    assert [r for r in hba if " webapp " in r] == [
        "hostssl webapp webapp 10.0.0.11/32 scram-sha-256 clientcert=verify-ca",
        "hostssl webapp webapp 10.0.0.10/32 scram-sha-256"]
    # On the haproxy data path the web host comes through PgBouncer only.
    hba = render.pg_hba(build({"webapp": {"data_path": "haproxy"}}), "postgres-srv1", [])
    assert [r for r in hba if " webapp " in r] == [
        "hostssl webapp webapp 10.0.0.11/32 scram-sha-256 clientcert=verify-ca"]


def test_with_tls_every_remote_rule_is_hostssl_and_members_show_a_certificate(cfg):
    hba = render.pg_hba(cfg, "postgres-srv1", ["10.0.0.1/32"])
    remote = [r for r in hba if r.startswith("host") and "127.0.0.1/32" not in r]
    assert remote and all(r.startswith("hostssl ") for r in remote)
    assert all(r.endswith("clientcert=verify-ca") for r in remote
               if " replication " in r or " rewind " in r)
    conf = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [])
    pg = conf["postgresql"]
    assert pg["parameters"]["ssl"] == "on"
    assert pg["parameters"]["ssl_key_file"] == "/var/lib/postgresql/tls/host.key"
    for user in ("replication", "rewind"):
        auth = pg["authentication"][user]
        assert auth["sslmode"] == "verify-full"
        assert auth["sslrootcert"] == "/var/lib/postgresql/tls/ca.crt"
        assert auth["sslcert"] == "/var/lib/postgresql/tls/host.crt"
    assert pg["use_unix_socket_repl"] is True


def test_without_tls_the_rules_are_plain_host_and_nothing_asks_for_ssl():
    cfg = build({"postgresql": {"tls": False}})
    hba = render.pg_hba(cfg, "postgres-srv1", [])
    assert not any("hostssl" in r or "clientcert" in r for r in hba)
    pg = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [])["postgresql"]
    assert "ssl" not in pg["parameters"]
    assert "sslmode" not in pg["authentication"]["replication"]


def test_patronis_rest_api_serves_https_with_postgres_copies_and_advertises_https(cfg):
    restapi = render.patroni_config(cfg, "postgres-srv2", CREDENTIALS, [])["restapi"]
    assert (restapi["certfile"], restapi["keyfile"], restapi["cafile"]) == (
        "/var/lib/postgresql/tls/host.crt", "/var/lib/postgresql/tls/host.key",
        "/var/lib/postgresql/tls/ca.crt")
    # What every client of the REST API is given (the patroni module, the web app, HAProxy).
    assert cfg["patroni"]["urls"]["postgres-srv2"] == "https://10.0.0.12:8008"
    assert cfg["tls"]["ca_file"] == "/etc/pgcluster/tls/ca.crt"


def test_patronis_rest_api_without_tls_is_plain_http():
    cfg = build({"patroni": {"tls": False}})
    restapi = render.patroni_config(cfg, "postgres-srv2", CREDENTIALS, [])["restapi"]
    assert not {"certfile", "keyfile", "cafile"} & set(restapi)
    assert cfg["patroni"]["urls"]["postgres-srv2"] == "http://10.0.0.12:8008"


def test_the_admin_sources_reach_the_apps_database_directly():
    cfg = build({"firewall": {"admin_sources": ["192.168.5.0/24"]}})
    hba = render.pg_hba(cfg, "postgres-srv1", render.admin_networks(cfg, [MASTER]))
    assert [r for r in hba if " webapp " in r] == [
        "hostssl webapp webapp 10.0.0.11/32 scram-sha-256 clientcert=verify-ca",
        "hostssl webapp webapp 10.0.0.10/32 scram-sha-256",
        "hostssl webapp webapp 10.0.0.1/32 scram-sha-256",
        "hostssl webapp webapp 192.168.5.0/24 scram-sha-256"]
    assert not any("10.0.0.1/32" in r for r in hba if "webapp" not in r)


def test_without_pgbouncer_the_web_host_reaches_postgresql_directly():
    cfg = build({"pgbouncer": {"enabled": False}})
    hba = render.pg_hba(cfg, "postgres-srv1", [])
    assert [r for r in hba if " webapp " in r] == ["hostssl webapp webapp 10.0.0.10/32 scram-sha-256"]


def test_the_firewall_opens_each_port_to_the_hosts_that_use_it(cfg):
    member = render.firewall_rules(cfg, "postgres-srv1", [MASTER], [4505, 4506])
    clients = ["10.0.0.1", "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]
    assert member["open"] == [22]
    assert member["salt_master"] == {"sources": [MASTER], "ports": [4505, 4506]}
    assert {s["name"]: (s["port"], s["sources"]) for s in member["services"]} == {
        "postgresql": (5432, clients), "pgbouncer": (6432, clients), "patroni": (8008, clients),
        "etcd-client": (2379, clients),
        "etcd-peer": (2380, ["10.0.0.11", "10.0.0.12", "10.0.0.13"]),
        # pgBackRest's TLS server: the repository host only.
        "pgbackrest": (8432, ["10.0.0.10"]),
        # The exporters: the Prometheus host (the web host) only.
        "node-exporter": (9100, ["10.0.0.10"]), "postgres-exporter": (9187, ["10.0.0.10"]),
        "pgbouncer-exporter": (9127, ["10.0.0.10"]),
    }
    web = render.firewall_rules(cfg, "web", [MASTER], [4505, 4506])
    assert web["open"] == [22, 80]
    assert {s["name"]: s["sources"] for s in web["services"]} == {
        "haproxy-primary": [MASTER], "haproxy-replica": [MASTER],
        "pgbackrest": ["10.0.0.11", "10.0.0.12", "10.0.0.13"],
        "node-exporter": ["10.0.0.10"], "haproxy-metrics": ["10.0.0.10"],
        # Prometheus: the operators (the master) and the cluster's hosts.
        "prometheus": [MASTER, "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13"]}


def test_prometheus_on_a_member_is_reached_there_and_its_exporters_answer_it():
    cfg = build({"monitoring": {"host": "postgres-srv3"}})
    rules = {host: {s["name"]: s["sources"] for s in render.firewall_rules(
        cfg, host, [MASTER], [4505, 4506])["services"]} for host in ("postgres-srv3", "web")}
    assert rules["postgres-srv3"]["prometheus"] == [MASTER, "10.0.0.10", "10.0.0.11", "10.0.0.12",
                                                    "10.0.0.13"]
    assert "prometheus" not in rules["web"]
    assert rules["web"]["node-exporter"] == rules["web"]["haproxy-metrics"] == ["10.0.0.13"]


def test_monitoring_off_opens_no_exporter_port(cfg):
    cfg = build({"monitoring": {"enabled": False}})
    for host in ("postgres-srv1", "web"):
        names = {s["name"] for s in render.firewall_rules(cfg, host, [MASTER], [4505])["services"]}
        assert not names & {"node-exporter", "postgres-exporter", "pgbouncer-exporter",
                            "haproxy-metrics", "prometheus", "alertmanager"}, host


def test_a_host_outside_the_cluster_opens_only_ssh(cfg):
    other = render.firewall_rules(cfg, "monitoring", [MASTER], [4505, 4506])
    assert (other["open"], other["services"]) == ([22], [])


def test_the_firewall_follows_the_ports_in_the_pillar():
    cfg = build({"postgresql": {"port": 5433}, "webapp": {"port": 8080}})
    member = render.firewall_rules(cfg, "postgres-srv1", [], [])
    assert {s["name"]: s["port"] for s in member["services"]}["postgresql"] == 5433
    assert render.firewall_rules(cfg, "web", [], [])["open"] == [22, 8080]
