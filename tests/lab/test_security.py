"""The cluster locked down, as an outsider and as each kind of host sees it: the firewall,
pg_hba, Patroni's REST API, and secrets kept out of process lists and logs."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

import pytest

from tests.conftest import run
from tests.lab.conftest import LAB, lab_exec
from tests.lab.test_cluster import MEMBERS, credentials

OUTSIDER = "10.0.0.99"  # an address on the lab bridge that belongs to no cluster host
BRIDGE = "pglab0"
WEB = "10.0.0.10"
DB = MEMBERS["postgres-srv2"]


@pytest.fixture(scope="module")
def outsider(lab):
    """A second address of this machine on the lab network: a stranger in the subnet."""
    run("ip", "addr", "add", f"{OUTSIDER}/32", "dev", BRIDGE)
    yield OUTSIDER
    run("ip", "addr", "del", f"{OUTSIDER}/32", "dev", BRIDGE, check=False)


def connects(address: str, port: int, source: str | None = None) -> bool:
    """True if a TCP connection opens; False if it is refused (the firewall resets it)."""
    with socket.socket() as s:
        s.settimeout(5)
        if source:
            s.bind((source, 0))
        try:
            s.connect((address, port))
        except ConnectionRefusedError:
            return False
        return True


def connects_from(host: str, address: str, port: int) -> bool:
    probe = (f"import socket; s = socket.socket(); s.settimeout(5); "
             f"print(s.connect_ex(('{address}', {port})))")
    return lab_exec(host, "python3", "-c", probe).stdout.strip() == "0"


@pytest.mark.parametrize("port", [5432, 6432, 8008, 2379, 2380])
def test_database_ports_are_closed_to_an_outsider(outsider, port):
    assert not connects(DB, port, source=outsider)


@pytest.mark.parametrize("port", [5000, 5001, 7000, 8000])
def test_the_web_host_shows_an_outsider_only_http(outsider, port):
    assert connects(WEB, 80, source=outsider)
    assert not connects(WEB, port, source=outsider)


def test_the_web_host_reaches_the_database_ports_it_uses_and_not_etcds_peer_port(lab):
    for port in (5432, 6432, 8008, 2379):
        assert connects_from("web", DB, port), port
    assert not connects_from("web", DB, 2380)
    # Members are not HAProxy's clients either.
    assert not connects_from("postgres-srv1", WEB, 5000)


def test_members_reach_each_other_on_every_cluster_port(lab):
    for port in (5432, 6432, 8008, 2379, 2380):
        assert connects_from("postgres-srv1", DB, port), port


def test_the_salt_master_is_let_in_as_the_admin(lab):
    assert connects(DB, 5432) and connects(WEB, 5000)


def psql_from_web(user: str, password: str, dbname: str, *, port: int = 5432, replication=False):
    dsn = f"host={DB} port={port} user={user} dbname={dbname} connect_timeout=5"
    if replication:
        dsn += " replication=database"
    sql = "IDENTIFY_SYSTEM" if replication else "select current_user"
    # The password goes in on stdin: not in an argument list, not in a failed test's output.
    return run(LAB, "exec", "web", "--", "sh", "-c", 'PGPASSWORD="$(cat)" exec psql "$0" -XAtc "$1"',
               dsn, sql, input=password, check=False)


def test_pg_hba_lets_the_app_in_through_pgbouncer_and_nobody_else(lab):
    creds = credentials()
    ok = psql_from_web("webapp", creds["app"], "webapp", port=6432)
    assert ok.returncode == 0 and ok.stdout.strip() == "webapp", ok.stderr
    refused = {
        # PgBouncer connects from the member itself: nobody reaches PostgreSQL from web directly.
        "app user straight to PostgreSQL": psql_from_web("webapp", creds["app"], "webapp"),
        "replication user from web": psql_from_web("replicator", creds["replication"], "postgres",
                                                   replication=True),
        "app user on another database": psql_from_web("webapp", creds["app"], "postgres"),
        "superuser from web": psql_from_web("postgres", creds["superuser"], "postgres"),
        "rewind user from web": psql_from_web("rewind", creds["rewind"], "postgres"),
    }
    for what, result in refused.items():
        assert result.returncode != 0 and "no pg_hba.conf entry" in result.stderr, what
    wrong = psql_from_web("webapp", "not-the-password", "webapp", port=6432)
    assert wrong.returncode != 0 and "authentication failed" in wrong.stderr, wrong.stderr
    # PgBouncer serves only the app's database.
    other = psql_from_web("webapp", creds["app"], "postgres", port=6432)
    assert other.returncode != 0, other.stdout


@pytest.mark.parametrize("host", sorted(MEMBERS))
def test_no_trust_in_pg_hba(lab, host):
    hba = lab_exec(host, "cat", "/var/lib/postgresql/15/main/pg_hba.conf").stdout
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all("trust" not in rule for rule in rules)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/switchover", {"leader": "postgres-srv1", "candidate": "postgres-srv2"}),
    ("POST", "/failover", {"candidate": "postgres-srv2"}),
    ("POST", "/restart", {}),
    ("POST", "/reinitialize", {}),
    ("PATCH", "/config", {"ttl": 20}),
    ("POST", "/reload", {}),
])
def test_patronis_unsafe_endpoints_refuse_requests_without_credentials(lab, method, path, body):
    request = urllib.request.Request(f"http://{DB}:8008{path}", data=json.dumps(body).encode(),
                                     method=method, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_no_secret_in_process_lists_or_logs(lab):
    secrets = [v for v in credentials().values() if v]
    for host in [*sorted(MEMBERS), "web"]:
        processes = lab_exec(host, "ps", "-eo", "args").stdout
        logs = lab_exec(host, "journalctl", "--no-pager", "-q", "-o", "cat", timeout=120).stdout
        logs += lab_exec(host, "sh", "-c", "cat /var/log/postgresql/*.log 2>/dev/null",
                         check=False).stdout
        for secret in secrets:
            assert secret not in processes, host
            assert secret not in logs, host
