"""The validators accept a realistic rendering of each config (tests/render/samples/: written by
hand from the templates for the 3-member cluster of pillar/cluster.sls) and refuse it with one
typo'd keyword or one bad value, with the tool's own message: each validator is known to fail."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.render import validators
from tests.render.validators import ConfigInvalid

SAMPLES = Path(__file__).resolve().parent / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


def mutate(text: str, old: str, new: str) -> str:
    """text with old (which must be there, once) replaced by new."""
    assert text.count(old) == 1, f"{old!r} is not in the sample exactly once"
    return text.replace(old, new)


def need(kind: str) -> None:
    reason = validators.missing(kind)
    if reason:
        pytest.skip(f"{kind}: {reason}")


def hba_lines() -> list[str]:
    return yaml.safe_load(sample("patroni-postgres-srv1.yml"))["postgresql"]["pg_hba"]


# --- HAProxy ----------------------------------------------------------------------------------

def test_haproxy_accepts_the_web_hosts_config():
    need("haproxy_cfg")
    validators.haproxy_cfg(sample("haproxy.cfg"))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("timeout connect 4s", "timeout conect 4s", r"got 'conect'"),
    ("balance roundrobin", "balance roundrobbin", r"balance only supports"),
    ("10.0.0.13:6432 check port 8008\n\nfrontend", "10.0.0.13:6432 chek port 8008\n\nfrontend",
     r"unknown keyword 'chek'"),
    ("inter 500ms", "inter 500xs", r"unexpected character 'x'"),
    ("fall 2", "fall two", r"'fall' has to be > 0"),
], ids=["typo-keyword", "bad-balance", "typo-server-option", "bad-duration", "bad-number"])
def test_haproxy_refuses(old, new, message):
    need("haproxy_cfg")
    with pytest.raises(ConfigInvalid, match=message):
        validators.haproxy_cfg(mutate(sample("haproxy.cfg"), old, new))


def test_haproxy_warning_fails():
    """Zero-warning mode: a config HAProxy only warns about (no timeouts) is refused."""
    need("haproxy_cfg")
    text = sample("haproxy.cfg")
    for line in ("    timeout client 30m\n", "    timeout server 30m\n", "    timeout connect 4s\n"):
        text = mutate(text, line, "")
    with pytest.raises(ConfigInvalid, match=r"missing timeouts"):
        validators.haproxy_cfg(text)


# --- nginx ------------------------------------------------------------------------------------

def test_nginx_accepts_the_site():
    need("nginx_site")
    validators.nginx_site(sample("nginx-webapp.conf"))


def test_nginx_accepts_a_listen_address_of_the_host():
    """nginx -t binds: the address the site listens on is on the check's own loopback."""
    need("nginx_site")
    validators.nginx_site(mutate(sample("nginx-webapp.conf"), "listen 80", "listen 10.0.0.10:80"))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("proxy_read_timeout 30s", "proxy_read_timout 30s", r'unknown directive "proxy_read_timout"'),
    ("client_max_body_size 32k", "client_max_body_size 32q",
     r'"client_max_body_size" directive invalid value'),
    ("combined buffer=64k", "combined buffer=64k flsh=5s buffer=1k", r"invalid parameter"),
    ("    }\n}", "    \n}", r"unexpected end of file"),
], ids=["typo-directive", "bad-size", "bad-log-parameter", "unbalanced-brace"])
def test_nginx_refuses(old, new, message):
    need("nginx_site")
    with pytest.raises(ConfigInvalid, match=message):
        validators.nginx_site(mutate(sample("nginx-webapp.conf"), old, new))


# --- nftables ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["nftables-member.conf", "nftables-web.conf"])
def test_nftables_accepts_the_rulesets(name):
    need("nftables_conf")
    validators.nftables_conf(sample(name))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("ct state invalid drop", "ct state invalid dorp", r"syntax error"),
    ("10.0.0.13 } tcp dport 5432", "10.0.0.313 } tcp dport 5432", r"Could not resolve hostname"),
    ("tcp dport 5432", "tcp dport 65536", r"out of range"),
    ("policy drop;\n        ct state", "policy dorp;\n        ct state", r"syntax error|[Pp]olicy"),
], ids=["typo-verdict", "bad-address", "bad-port", "bad-policy"])
def test_nftables_refuses(old, new, message):
    need("nftables_conf")
    with pytest.raises(ConfigInvalid, match=message):
        validators.nftables_conf(mutate(sample("nftables-member.conf"), old, new))


# --- Patroni ----------------------------------------------------------------------------------

def test_patroni_accepts_the_members_config():
    need("patroni_config")
    validators.patroni_config(sample("patroni-postgres-srv1.yml"))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  listen: 10.0.0.11:8008", "  listn: 10.0.0.11:8008", r"restapi\.listen +is not defined"),
    ("use_pg_rewind: true", "use_pg_rewind: yes please", r"use_pg_rewind yes please is not a boolean"),
    ("ttl: 20", "ttl: twenty", r"bootstrap\.dcs\.ttl twenty didn't pass validation"),
    ("ttl: 20", "ttl: 10", r"bootstrap\.dcs\.ttl 10 didn't pass validation"),
    ("synchronous_mode: true", "synchronous_mode: sometimes", r"invalid value for synchronous_mode"),
    ("bin_dir: /usr/lib/postgresql/15/bin", "bin_dir: /usr/lib/postgresql/15/bni",
     r"Directory '/usr/lib/postgresql/15/bni' does not exist"),
    ("connect_address: 10.0.0.11:8008", "connect_address: 127.0.0.1:8008", r"must not contain"),
    ("scope: pg-cluster-skynet", "scope: [pg-cluster-skynet", r"while parsing a flow sequence"),
], ids=["typo-required-key", "wrong-type", "wrong-number", "too-small", "bad-enum", "bad-bin-dir",
        "loopback-connect-address", "bad-yaml"])
def test_patroni_refuses(old, new, message):
    need("patroni_config")
    with pytest.raises(ConfigInvalid, match=message):
        validators.patroni_config(mutate(sample("patroni-postgres-srv1.yml"), old, new))


@pytest.mark.xfail(strict=True, reason="Patroni's validator ignores keys it does not know: "
                                       "a typo'd optional key passes")
def test_patroni_known_gap_typo_in_an_optional_key():
    need("patroni_config")
    with pytest.raises(ConfigInvalid):
        validators.patroni_config(mutate(sample("patroni-postgres-srv1.yml"), "ttl: 20", "tll: 20"))


# --- PgBouncer --------------------------------------------------------------------------------

def test_pgbouncer_accepts_the_members_config():
    need("pgbouncer_ini")
    validators.pgbouncer_ini(sample("pgbouncer.ini"), sample("userlist.txt"))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("pool_mode = transaction", "pool_mode = bogus", r'invalid value "bogus" for parameter pool_mode'),
    ("default_pool_size = 20", "default_pool_sise = 20", r"unknown parameter: pgbouncer/default_pool_sise"),
    ("server_login_retry = 1", "server_login_retry = one",
     r'invalid value "one" for parameter server_login_retry'),
    ("port=5432 dbname=webapp", "prot=5432 dbname=webapp", r"unrecognized connection parameter: prot"),
    ("auth_type = scram-sha-256", "auth_type = scram", r'invalid value "scram" for parameter auth_type'),
    ("listen_addr = 10.0.0.11,127.0.0.1", "listen_addr = 10.0.0.11;127.0.0.1", r"getaddrinfo"),
], ids=["bad-pool-mode", "typo-key", "bad-number", "typo-in-database", "bad-auth-type", "bad-listen-addr"])
def test_pgbouncer_refuses(old, new, message):
    need("pgbouncer_ini")
    with pytest.raises(ConfigInvalid, match=message):
        validators.pgbouncer_ini(mutate(sample("pgbouncer.ini"), old, new), sample("userlist.txt"))


def test_pgbouncer_refuses_a_broken_userlist():
    need("pgbouncer_ini")
    with pytest.raises(ConfigInvalid, match=r"broken auth file"):
        validators.pgbouncer_ini(sample("pgbouncer.ini"), '"webapp" "secret\n')


# --- pg_hba -----------------------------------------------------------------------------------

def test_pg_hba_accepts_the_members_rules():
    need("pg_hba")
    validators.pg_hba(hba_lines())


@pytest.mark.parametrize(("line", "message"), [
    ("host all all 10.0.0.1/32 trustt", r'invalid authentication method "trustt"'),
    ("host all all 10.0.0.1/33 scram-sha-256", r'invalid CIDR mask in address "10.0.0.1/33"'),
    ("host all all 10.0.0.256/32 scram-sha-256", r"specifying both host name and CIDR mask is invalid"),
    ("hostx all all 10.0.0.1/32 scram-sha-256", r'invalid connection type "hostx"'),
    ("host all all", r"end-of-line before IP address specification"),
], ids=["typo-method", "bad-mask", "bad-address", "typo-type", "missing-field"])
def test_pg_hba_refuses(line, message):
    need("pg_hba")
    lines = hba_lines()
    with pytest.raises(ConfigInvalid, match=message) as refused:
        validators.pg_hba([*lines, line])
    assert f"line {len(lines) + 1}:" in str(refused.value)


# --- etcd -------------------------------------------------------------------------------------

def test_etcd_accepts_the_members_env_file():
    need("etcd_env")
    validators.etcd_env(sample("etcd.env"))


@pytest.mark.parametrize(("old", "new", "message"), [
    ("ETCD_ENABLE_V2=", "ETCD_ENABEL_V2=", r"unrecognized environment variable ETCD_ENABEL_V2"),
    ('ETCD_INITIAL_CLUSTER_STATE="new"', 'ETCD_INITIAL_CLUSTER_STATE="nwe"',
     r'invalid value "nwe" for ETCD_INITIAL_CLUSTER_STATE'),
    ('ETCD_ENABLE_V2="false"', 'ETCD_ENABLE_V2="flase"', r'invalid value "flase" for ETCD_ENABLE_V2'),
    ('ETCD_LISTEN_PEER_URLS="http://', 'ETCD_LISTEN_PEER_URLS="htp://', r"URL scheme must be"),
    ('ETCD_NAME="postgres-srv1"', 'ETCD_NAME="postgres-srv4"',
     r'couldn\'t find local name "postgres-srv4" in the initial cluster'),
    ('ETCD_INITIAL_ADVERTISE_PEER_URLS="http://10.0.0.11:2380"',
     'ETCD_INITIAL_ADVERTISE_PEER_URLS="http://10.0.0.11:2381"',
     r"missing from --initial-advertise-peer-urls"),
    ('ETCD_INITIAL_CLUSTER_TOKEN="pg-cluster-skynet"', 'ETCD_INITIAL_CLUSTER_TOKEN "pg-cluster-skynet"',
     r"not KEY=VALUE"),
], ids=["typo-variable", "bad-enum", "bad-bool", "bad-url", "name-not-in-cluster", "advertise-mismatch",
        "not-an-assignment"])
def test_etcd_refuses(old, new, message):
    need("etcd_env")
    with pytest.raises(ConfigInvalid, match=message):
        validators.etcd_env(mutate(sample("etcd.env"), old, new))
