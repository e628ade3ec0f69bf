"""The cluster locked down, as an outsider and as each kind of host sees it: the firewall,
pg_hba, TLS and its certificates, Patroni's REST API, etcd's users, and secrets kept out of
process lists and logs."""

from __future__ import annotations

import base64
import concurrent.futures
import datetime
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from lab import settings
from lab.cluster import CA_STORE, cluster, cluster_ca_file, credentials, leader, on_web, salt, secrets
from lab.workload import Writer, ensure_table, rows_on
from tests.certificates import issue
from tests.conftest import REPO, run
from tests.lab.conftest import LAB, lab_exec
from tests.unit.conftest import load_module

C = cluster()
MEMBERS = C.members
FIRST, SECOND = C.model["member_names"][:2]
DB = MEMBERS[SECOND]
WEB = C.web_address
# The ports each kind of host serves, from the pillar.
DB_CLIENT_PORTS = [C.model["postgresql"]["port"], C.model["pgbouncer"]["port"], C.patroni_port,
                   C.etcd_port]
PEER_PORT = C.model["etcd"]["peer_port"]
WEB_PRIVATE_PORTS = [C.primary_port, C.replica_port, C.model["haproxy"]["stats_port"],
                     int(C.model["webapp"]["bind"].rpartition(":")[2])]
# The exporters (the Prometheus host's only) and Prometheus (the operators' and the web hosts').
MONITORING_PORTS = C.model["monitoring"]["ports"]
DB_EXPORTER_PORTS = [MONITORING_PORTS[name] for name in
                     ("node_exporter", "postgres_exporter", "pgbouncer_exporter")]
WEB_MONITORING_PORTS = [MONITORING_PORTS[name] for name in ("node_exporter", "haproxy", "prometheus")]
# An address on the lab bridge that belongs to no cluster host: a stranger in the subnet.
OUTSIDER = next(f"{settings.SUBNET_PREFIX}.{i}" for i in range(254, 1, -1)
                if f"{settings.SUBNET_PREFIX}.{i}" not in C.hosts.values())
BRIDGE = settings.BRIDGE
# The header by which a member's running Patroni says it logs in to etcd (patroni.etcd_logins).
ETCD_USER_HEADER = load_module("_modules/patroni.py").ETCD_USER_HEADER


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


@pytest.mark.parametrize("port", [*DB_CLIENT_PORTS, PEER_PORT, *DB_EXPORTER_PORTS])
def test_database_ports_are_closed_to_an_outsider(outsider, port):
    assert not connects(DB, port, source=outsider)


@pytest.mark.parametrize("port", [*WEB_PRIVATE_PORTS, *WEB_MONITORING_PORTS])
def test_the_web_host_shows_an_outsider_only_http(outsider, port):
    assert connects(WEB, C.model["webapp"]["port"], source=outsider)
    assert not connects(WEB, port, source=outsider)


def test_the_web_apps_metrics_are_refused_to_an_outsider(outsider):
    with socket.create_connection((WEB, C.model["webapp"]["port"]), timeout=5,
                                  source_address=(outsider, 0)) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\nHost: web\r\n\r\n")
        answer = s.recv(200).decode()
    assert answer.startswith("HTTP/1.1 403"), answer


def test_the_web_host_reaches_the_database_ports_it_uses_and_not_etcds_peer_port(lab):
    for port in DB_CLIENT_PORTS:
        assert connects_from(C.web, DB, port), port
    assert not connects_from(C.web, DB, PEER_PORT)
    # Members are not HAProxy's clients either.
    assert not connects_from(FIRST, WEB, C.primary_port)


def test_members_reach_each_other_on_every_cluster_port(lab):
    for port in (*DB_CLIENT_PORTS, PEER_PORT):
        assert connects_from(FIRST, DB, port), port


def test_the_salt_master_is_let_in_as_the_admin(lab):
    assert connects(DB, C.model["postgresql"]["port"]) and connects(WEB, C.primary_port)


def psql_from_web(user: str, password: str, dbname: str, *, port: int | None = None,
                  replication=False):
    port = port or C.model["postgresql"]["port"]
    dsn = f"host={DB} port={port} user={user} dbname={dbname} connect_timeout=5"
    if replication:
        dsn += " replication=database"
    sql = "IDENTIFY_SYSTEM" if replication else "select current_user"
    # The password goes in on stdin: not in an argument list, not in a failed test's output.
    return run(LAB, "exec", C.web, "--", "sh", "-c", 'PGPASSWORD="$(cat)" exec psql "$0" -XAtc "$1"',
               dsn, sql, input=password, check=False)


def test_pg_hba_lets_the_app_in_on_its_data_path_and_nobody_else(lab):
    creds = credentials()
    user, db = C.app["user"], C.app["database"]
    bouncer = C.model["pgbouncer"]["port"]
    ok = psql_from_web(user, creds["app"], db, port=bouncer)
    assert ok.returncode == 0 and ok.stdout.strip() == user, ok.stderr
    straight = psql_from_web(user, creds["app"], db)
    if C.model["webapp"]["data_path"] == "libpq":
        # The app's own data path: the web host's app user straight to PostgreSQL.
        assert straight.returncode == 0 and straight.stdout.strip() == user, straight.stderr
    else:
        # PgBouncer connects from the member itself: nobody reaches PostgreSQL from web directly.
        assert straight.returncode != 0 and "no pg_hba.conf entry" in straight.stderr
    refused = {
        "replication user from web": psql_from_web("replicator", creds["replication"], "postgres",
                                                   replication=True),
        "app user on another database": psql_from_web(user, creds["app"], "postgres"),
        "superuser from web": psql_from_web("postgres", creds["superuser"], "postgres"),
        "rewind user from web": psql_from_web("rewind", creds["rewind"], "postgres"),
    }
    for what, result in refused.items():
        assert result.returncode != 0 and "no pg_hba.conf entry" in result.stderr, what
    wrong = psql_from_web(user, "not-the-password", db, port=bouncer)
    assert wrong.returncode != 0 and "authentication failed" in wrong.stderr, wrong.stderr
    # PgBouncer serves only the app's database.
    other = psql_from_web(user, creds["app"], "postgres", port=bouncer)
    assert other.returncode != 0, other.stdout


@pytest.mark.parametrize("host", sorted(MEMBERS))
def test_no_trust_in_pg_hba(lab, host):
    version = C.model["postgresql"]["version"]
    hba = lab_exec(host, "cat", f"/var/lib/postgresql/{version}/main/pg_hba.conf").stdout
    rules = [line.split() for line in hba.splitlines() if line.strip() and not line.startswith("#")]
    assert rules and all("trust" not in rule for rule in rules)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/switchover", {"leader": FIRST, "candidate": SECOND}),
    ("POST", "/failover", {"candidate": SECOND}),
    ("POST", "/restart", {}),
    ("POST", "/reinitialize", {}),
    ("PATCH", "/config", {"ttl": 20}),
    ("POST", "/reload", {}),
])
def test_patronis_unsafe_endpoints_refuse_requests_without_credentials(lab, method, path, body):
    request = urllib.request.Request(C.patroni_url(SECOND, path), data=json.dumps(body).encode(),
                                     method=method, headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        C.open_patroni(request, timeout=10)
    assert refused.value.code == 401


def test_no_secret_in_process_lists_or_logs(lab):
    every = secrets()
    for host in C.hosts:
        processes = lab_exec(host, "ps", "-eo", "args").stdout
        logs = lab_exec(host, "journalctl", "--no-pager", "-q", "-o", "cat", timeout=120).stdout
        logs += lab_exec(host, "sh", "-c", "cat /var/log/postgresql/*.log 2>/dev/null",
                         check=False).stdout
        for secret in every:
            assert secret not in processes, host
            assert secret not in logs, host


# --- The cluster's CA (_runners/pgcluster_ca.py) and each host's key (salt/tls) ----------------

TLS = C.model["tls"]


def _salt_json(*args: str) -> dict:
    # lab.cluster.salt gives the CLI -t: without it the CLI gives up on a busy minion after
    # its default 5 s + gather_job_timeout ("No return received") while the job still runs.
    return salt(*args, timeout=300, check=True)


def test_each_host_made_its_own_key_and_holds_a_certificate_for_its_names_from_the_ca(lab):
    ca = cluster_ca_file(C.model)
    for host, address in C.hosts.items():
        owner = lab_exec(host, "stat", "-c", "%a %U", f"{TLS['dir']}/host.key").stdout.split()
        assert owner == ["600", "root"], host
        assert lab_exec(host, "cat", f"{TLS['dir']}/ca.crt").stdout == ca.read_text(), host
        verified = lab_exec(host, "openssl", "verify", "-CAfile", f"{TLS['dir']}/ca.crt",
                            f"{TLS['dir']}/host.crt").stdout
        assert verified.strip().endswith(": OK"), host
        names = lab_exec(host, "openssl", "x509", "-noout", "-ext", "subjectAltName",
                         "-in", f"{TLS['dir']}/host.crt").stdout
        assert f"DNS:{host}, IP Address:{address}" in names, (host, names)
    # No host's key travels: the pillars carry none (the CA's key is on the master only).
    assert "PRIVATE KEY" not in json.dumps(_salt_json("*", "pillar.items"))


def _near_its_end(host: str, days: int) -> str:
    """The host's certificate made again by the cluster's CA with ``days`` to live, as one
    issued long ago would be: its PEM (written on the host)."""
    ca_key = serialization.load_pem_private_key((CA_STORE / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((CA_STORE / "ca.crt").read_bytes())
    path = settings.HOSTS_DIR / host / "root" / TLS["dir"].lstrip("/") / "host.crt"
    current = x509.load_pem_x509_certificate(path.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca.subject)
               .public_key(current.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=300))
               .not_valid_after(now + datetime.timedelta(days=days)))
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()
    path.write_text(pem)
    return pem


def served_certificate(address: str, port: int, starttls: str | None = "postgres") -> str:
    """The certificate shown at address:port: by PostgreSQL or PgBouncer, whose TLS starts after
    the protocol's SSLRequest (which openssl speaks), or with starttls None by a TLS server such
    as etcd (which shows it before asking for the client's)."""
    start = ["-starttls", starttls] if starttls else []
    shown = run("openssl", "s_client", *start, "-connect", f"{address}:{port}",
                input="", timeout=30, check=False).stdout
    return shown[shown.index("-----BEGIN CERTIFICATE-----"):
                 shown.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]


def _main_pids(host: str) -> dict[str, str]:
    """What changes when PostgreSQL, PgBouncer or etcd restart, and not when they reload."""
    pids = {service: lab_exec(host, "systemctl", "show", "-p", "MainPID", "--value",
                              service).stdout.strip()
            for service in (C.model["pgbouncer"]["service"], C.model["etcd"]["service"])}
    return {"postgresql": lab_exec(host, "runuser", "-u", "postgres", "--", "psql", "-XAtc",
                                   "select pg_postmaster_start_time()").stdout.strip(), **pids}


def test_a_certificate_near_its_end_is_renewed_by_state_apply_and_test_mode_says_so(lab):
    host = C.model["member_names"][-1]
    address = MEMBERS[host]
    pids = _main_pids(host)
    old = _near_its_end(host, TLS["renew_days"] - 1)
    dry = _salt_json(host, "state.sls", "tls", "test=True")[host]
    [state] = [s for k, s in dry.items() if "tls-certificate" in k]
    assert state["result"] is None and f"within {TLS['renew_days']} days" in state["comment"], state
    assert lab_exec(host, "cat", f"{TLS['dir']}/host.crt").stdout == old  # test mode signs nothing
    states = "tls,pgbackrest,postgresql,pgbouncer,etcd"
    done = _salt_json(host, "state.sls", states)[host]
    [state] = [s for k, s in done.items() if "tls-certificate" in k]
    assert state["result"] is True and state["changes"]["not_after"], state
    renewed = x509.load_pem_x509_certificate(
        lab_exec(host, "cat", f"{TLS['dir']}/host.crt").stdout.encode())
    life = renewed.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert life > datetime.timedelta(days=TLS["days"] - 1)
    # The services' copies follow (pgBackRest's TLS server restarts on them).
    current = lab_exec(host, "cat", f"{TLS['dir']}/host.crt").stdout
    for tls_dir in (C.backup["tls_dir"], C.model["postgresql"]["tls_dir"],
                    C.model["pgbouncer"]["tls_dir"], C.model["etcd"]["tls_dir"]):
        assert lab_exec(host, "cat", f"{tls_dir}/host.crt").stdout == current, tls_dir
    # PostgreSQL and PgBouncer show it, reloaded, not restarted; etcd reads it at the next
    # handshake, not restarted either.
    for port in (C.model["postgresql"]["port"], C.model["pgbouncer"]["port"]):
        assert served_certificate(address, port).strip() == current.strip(), port
    etcd_shows = served_certificate(address, C.etcd_port, starttls=None)
    assert etcd_shows.strip() == current.strip()
    assert _main_pids(host) == pids
    # Renewed, it is current again: the next apply changes nothing.
    again = _salt_json(host, "state.sls", states)[host]
    assert not [s for s in again.values() if s["changes"]], again


# --- TLS inside the cluster: PostgreSQL and PgBouncer (pgcluster:postgresql:tls, pgbouncer:tls) --

PG_PORT = C.model["postgresql"]["port"]
BOUNCER_PORT = C.model["pgbouncer"]["port"]


def psql(dsn: str, password: str, sql: str = "select 1", *, host: str | None = None):
    """psql on this machine (the salt-master, an admin source) or on a lab host; the password
    goes in on stdin."""
    argv = ["sh", "-c", 'PGPASSWORD="$(cat)" exec psql "$0" -XAtc "$1"', dsn, sql]
    if host:
        argv = [LAB, "exec", host, "--", *argv]
    return run(*argv, input=password, check=False)


def test_plain_text_is_refused_by_postgresql_and_pgbouncer_from_the_admin_a_member_and_web(lab):
    creds = credentials()
    user, db = C.app["user"], C.app["database"]
    app = f"host={DB} user={user} dbname={db} connect_timeout=5"
    # The same connections with TLS get in: what is refused is the plain text.
    assert psql(f"{app} port={PG_PORT} sslmode=require", creds["app"]).returncode == 0
    assert psql(f"{app} port={BOUNCER_PORT} sslmode=require", creds["app"],
                host=C.web).returncode == 0
    plain = {
        "the admin to PostgreSQL": psql(f"{app} port={PG_PORT} sslmode=disable", creds["app"]),
        "a member's replication": psql(
            f"host={DB} port={PG_PORT} user=replicator dbname=postgres replication=database "
            "sslmode=disable connect_timeout=5", creds["replication"], "IDENTIFY_SYSTEM",
            host=FIRST),
        "a member's pg_rewind user": psql(
            f"host={DB} port={PG_PORT} user=rewind dbname=postgres sslmode=disable "
            "connect_timeout=5", creds["rewind"], host=FIRST),
    }
    for what, result in plain.items():
        assert result.returncode != 0 and "no encryption" in result.stderr, (what, result.stderr)
    bouncer = psql(f"{app} port={BOUNCER_PORT} sslmode=disable", creds["app"], host=C.web)
    assert bouncer.returncode != 0 and "SSL required" in bouncer.stderr, bouncer.stderr


def test_replication_and_pgbouncers_server_connections_run_over_tls(lab):
    first = leader()
    sql = ("select count(*) filter (where s.ssl), count(*) from pg_stat_replication r "
           "join pg_stat_ssl s using (pid)")
    out = lab_exec(first, "runuser", "-u", "postgres", "--", "psql", "-XAtc", sql).stdout
    encrypted, replicas = map(int, out.strip().split("|"))
    assert replicas == len(MEMBERS) - 1 and encrypted == replicas, out
    # PgBouncer's own connection to PostgreSQL, as a query through it sees it.
    creds = credentials()
    through = psql(f"host={MEMBERS[first]} port={BOUNCER_PORT} user={C.app['user']} "
                   f"dbname={C.app['database']} connect_timeout=5", creds["app"],
                   "select ssl from pg_stat_ssl where pid = pg_backend_pid()", host=C.web)
    assert through.stdout.strip() == "t", through.stderr


def _another_ca(tmp_path) -> dict[str, str]:
    """A CA that is not the cluster's and a client certificate from it, as files."""
    ca = issue("not the cluster's CA")
    cert, key = issue(FIRST, issuer=ca)
    paths = {}
    for kind, data in {"ca": ca[0], "cert": cert, "key": key}.items():
        path = tmp_path / f"other-{kind}.pem"
        path.write_bytes(data)
        path.chmod(0o600)
        paths[kind] = str(path)
    return paths


def test_a_certificate_from_another_ca_is_refused_both_ways(lab, tmp_path):
    creds = credentials()
    other = _another_ca(tmp_path)
    ours = str(cluster_ca_file(C.model))
    app = f"host={DB} user={C.app['user']} dbname={C.app['database']} connect_timeout=5"
    for port in (PG_PORT, BOUNCER_PORT):
        # The servers' certificates verify with the cluster's CA, by the address they serve...
        good = psql(f"{app} port={port} sslmode=verify-full sslrootcert={ours}", creds["app"])
        assert good.returncode == 0, (port, good.stderr)
        # ...and not with another.
        bad = psql(f"{app} port={port} sslmode=verify-ca sslrootcert={other['ca']}", creds["app"])
        assert bad.returncode != 0 and "certificate verify failed" in bad.stderr, (port, bad.stderr)
    # A client certificate from another CA is refused in the handshake, before pg_hba is read.
    forged = psql(f"host={DB} port={PG_PORT} user=replicator dbname=postgres "
                  f"replication=database sslmode=verify-full sslrootcert={ours} "
                  f"sslcert={other['cert']} sslkey={other['key']} connect_timeout=5",
                  creds["replication"], "IDENTIFY_SYSTEM")
    assert forged.returncode != 0 and "unknown ca" in forged.stderr, forged.stderr


# --- Patroni's REST API over HTTPS (pgcluster:patroni:tls) --------------------------------------

FETCH = """\
import ssl, sys, urllib.error, urllib.request
url, ca = sys.argv[1:]
context = ssl.create_default_context(cafile=ca) if ca else None
try:
    print(urllib.request.urlopen(url, timeout=5, context=context).status)
except urllib.error.HTTPError as exc:
    print(exc.code)
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def _fetch_on(host: str, url: str, ca: str = "") -> str:
    """A GET from a lab host with its own python3: the HTTP status, or why there was none."""
    return lab_exec(host, "python3", "-c", FETCH, url, ca).stdout.strip()


def test_patronis_rest_api_takes_only_https_verified_by_the_clusters_ca(lab, tmp_path):
    ca = C.model["tls"]["ca_file"]
    for host, member in ((FIRST, SECOND), (C.web, FIRST)):
        url = C.patroni_url(member, "/health")
        assert url.startswith("https://"), url
        assert _fetch_on(host, url, ca) == "200", (host, member)
        # The same request in plain text gets no HTTP answer at all.
        plain = _fetch_on(host, "http://" + url.removeprefix("https://"))
        assert not plain.isdigit(), (host, member, plain)
    # A client that trusts another CA refuses the member's certificate.
    other = ssl.create_default_context(cafile=_another_ca(tmp_path)["ca"])
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(C.patroni_url(SECOND, "/health"), timeout=5, context=other)
    # patronictl on a member reaches another's REST API (a reload changes nothing here),
    # verifying its certificate by the same CA (Patroni's restapi.cafile).
    reload = lab_exec(FIRST, "patronictl", "reload", C.name, SECOND, "--force").stdout
    assert f"Reload request received for member {SECOND}" in reload, reload


# --- etcd: TLS for peers and clients, client certificates, users (pgcluster:etcd:tls, auth) ---

ETCD = C.model["etcd"]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _etcd_refusal(call) -> str:
    """etcd's own error message for a call it refuses (its gateway answers JSON)."""
    with pytest.raises(urllib.error.HTTPError) as refused:
        call()
    return json.loads(refused.value.read()).get("error", "")


def test_etcd_takes_only_tls_and_its_peers_only_the_clusters_certificates(lab, tmp_path):
    # Plain text, from another member and from web, to the client and to the peer port: no
    # answer, or a bare 400 from Go's TLS server; nothing served.
    peer = f"{MEMBERS[SECOND]}:{PEER_PORT}"
    for host, url in ((FIRST, C.etcd_url(SECOND) + "/health"),
                      (C.web, C.etcd_url(FIRST) + "/health"), (FIRST, f"https://{peer}/members")):
        assert url.startswith("https://"), url
        plain = _fetch_on(host, "http://" + url.removeprefix("https://"))
        assert plain == "400" or not plain.isdigit(), (host, url, plain)
    # A client that trusts another CA refuses the member's certificate.
    other = _another_ca(tmp_path)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(C.etcd_url(SECOND) + "/health", timeout=5,
                               context=ssl.create_default_context(cafile=other["ca"]))
    # The peer port takes only a peer's certificate: none, or one from another CA, fails the
    # handshake (a client's, on the client port, is not asked for: etcd's users are).
    for cert in (None, (other["cert"], other["key"])):
        context = ssl.create_default_context(cafile=cluster_ca_file(C.model))
        if cert:
            context.load_cert_chain(*cert)
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionResetError)):
            with urllib.request.urlopen(f"https://{peer}/members", timeout=5,
                                        context=context) as answer:
                answer.read()
    # Health is open to any TLS client (etcd 3.4 asks no user for it); keys are not (below).
    assert C.etcd(SECOND, "/health", user=None)["health"] == "true"


def test_etcd_users_reach_only_what_their_role_allows(lab):
    ours = _b64(ETCD["prefix"] + "leader")
    elsewhere = _b64("/service/another-cluster/leader")
    # Without a user, no key.
    assert "user name is empty" in _etcd_refusal(
        lambda: C.etcd(SECOND, "/v3/kv/range", {"key": ours}, user=None))
    # reader reads the cluster's keys, writes none, and reads nothing outside them.
    assert C.etcd(SECOND, "/v3/kv/range", {"key": ours})["kvs"]
    assert "permission denied" in _etcd_refusal(
        lambda: C.etcd(SECOND, "/v3/kv/put", {"key": _b64(ETCD["prefix"] + "x"), "value": ""}))
    assert "permission denied" in _etcd_refusal(
        lambda: C.etcd(SECOND, "/v3/kv/range", {"key": elsewhere}))
    # patroni reads the cluster's prefix, and nothing outside it.
    assert C.etcd(SECOND, "/v3/kv/range", {"key": ours}, user="patroni")["kvs"]
    for path, body in (("/v3/kv/range", {"key": elsewhere}),
                       ("/v3/kv/put", {"key": elsewhere, "value": _b64("x")})):
        assert "permission denied" in _etcd_refusal(
            lambda path=path, body=body: C.etcd(SECOND, path, body, user="patroni"))
    # A wrong password gets no token.
    request = urllib.request.Request(
        C.etcd_url(SECOND) + "/v3/auth/authenticate",
        data=json.dumps({"name": "patroni", "password": "not-the-password"}).encode())
    assert "authentication failed" in _etcd_refusal(lambda: urllib.request.urlopen(
        request, timeout=5, context=ssl.create_default_context(cafile=cluster_ca_file(C.model))))
    # etcd's copy of the host's key is etcd's own and nobody else's.
    for host in C.members:
        assert lab_exec(host, "stat", "-c", "%a %U", f"{ETCD['tls_dir']}/host.key").stdout.split() \
            == ["600", ETCD["user"]], host
        assert lab_exec(host, "stat", "-c", "%a %U", ETCD["etcdctl_env"]).stdout.split() \
            == ["600", "root"], host


def test_a_role_widened_by_hand_is_narrowed_back_by_state_apply(lab):
    boot = C.model["bootstrap_member"]
    lab_exec(boot, "etcdctl", "role", "grant-permission", "reader", "readwrite", "--prefix=true", "/")
    key = {"key": _b64(ETCD["prefix"] + "widened"), "value": _b64("x")}
    C.etcd(SECOND, "/v3/kv/put", key)  # the reader writes now
    C.etcd(SECOND, "/v3/kv/deleterange", {"key": key["key"]}, user="patroni")
    done = _salt_json(boot, "state.sls", "etcd")[boot]
    [auth] = [s for k, s in done.items() if "etcd-auth" in k]
    assert auth["result"] is True and auth["changes"]["etcd"] == ["revoke from role reader its "
                                                                  "READWRITE on /"], auth
    assert "permission denied" in _etcd_refusal(lambda: C.etcd(SECOND, "/v3/kv/put", key))


def _etcd_asks_for_a_user() -> bool:
    try:
        C.etcd(SECOND, "/v3/kv/range", {"key": _b64(ETCD["prefix"] + "leader")}, user=None)
    except urllib.error.HTTPError as error:
        if "user name is empty" in json.loads(error.read()).get("error", ""):
            return True
        raise
    return False


def _patronis_login(member: str) -> bool:
    """Whether the member's running Patroni logs in to etcd: its REST API says so (the header
    salt/patroni's config asks for), which it does once it has applied that config, not when
    Salt has written it."""
    try:
        with C.open_patroni(C.patroni_url(member, "/patroni"), timeout=2) as answer:
            headers = answer.headers
    except urllib.error.HTTPError as error:
        headers = error.headers
    return headers.get(ETCD_USER_HEADER) == "patroni"


def _timeline() -> int:
    return next(m["timeline"] for m in on_web("patroni.list")["members"] if m["role"] == "Leader")


class _LoginWatch(threading.Thread):
    """Samples, every 0.2 s, whether each member's running Patroni logs in to etcd, and keeps
    every sample in which one did not (with etcd's authentication on, what makes a Patroni
    leader demote itself; with it off, a Patroni that dropped its login was left with a token
    etcd refuses)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples, self.without = 0, []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                logins = {m: _patronis_login(m) for m in MEMBERS}
            except (OSError, ValueError):  # busy past the call's timeout, or not JSON: again
                continue
            self.samples += 1
            if not all(logins.values()):
                self.without.append((time.monotonic(), logins))
            self.stop.wait(0.2)


def _apply_staggered(first: list[str], later: list[str], *args: str, delay: float = 10) -> None:
    """`state.apply` on `first`, and `delay` seconds later on `later` too: the hosts of one
    `salt '*' state.apply` do not run in step, and one may be that far behind the others."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(_salt_json, "-L", ",".join(first), "state.apply", *args)
        time.sleep(delay)
        _salt_json("-L", ",".join(later), "state.apply", *args)
        ahead.result()  # its failure, if it failed, is this test's


def test_etcds_authentication_goes_off_and_on_under_load_with_a_plain_state_apply(lab):
    """etcd's authentication switched off, then on again, each with a plain `state.apply` of
    the members in which the host that acts on etcd (the bootstrap member) runs 10 s after the
    others going off and 10 s before them going on, under the fault tests' writer: every
    Patroni keeps its etcd login throughout (etcd answers "not enabled" while it is off), no
    acknowledged write is lost, and no failover happens (the timeline stays). Patronis that
    dropped their login going off kept a token etcd refused: the leader demoted itself (CI,
    and 2 runs of 3 in the lab, 2026-12-05)."""
    boot = C.model["bootstrap_member"]
    others = [m for m in MEMBERS if m != boot]
    password = credentials()["app"]
    ensure_table(password)
    writer = Writer(password, f"auth-off-on-{time.time_ns()}")
    watch = _LoginWatch()
    leader_before, timeline_before = leader(), _timeline()
    writer.start()
    watch.start()
    try:
        off = "pillar=" + json.dumps({"pgcluster": {"etcd": {"auth": False}}})
        _apply_staggered(others, [boot], "etcd,patroni", off)
        assert not _etcd_asks_for_a_user()
        # Patroni's loops go on without a token (a leader refused would show in 2 loops).
        time.sleep(2 * C.model["patroni"]["loop_wait"])
        _apply_staggered([boot], others, "etcd,patroni,etcd.auth")
        assert _etcd_asks_for_a_user()
        time.sleep(2 * C.model["patroni"]["loop_wait"])
    finally:
        watch.stop.set()
        watch.join()
        writer.stop.set()
        writer.join()
    assert watch.samples > 20 and not watch.without, watch.without
    assert writer.acked and not writer.acked - rows_on(leader(), writer.tag)
    assert (leader(), _timeline()) == (leader_before, timeline_before)


def _etcd_serves() -> dict[str, str | None]:
    """The scheme each member's etcd serves its clients, and its peers in etcd's member list."""
    report = _salt_json(FIRST, "etcd_cluster.tls_switch_health")[FIRST]
    assert all(entry["healthy"] for entry in report.values()), report
    return {name: (entry["serves"], *entry["peer_urls"]) for name, entry in report.items()}


def _deploy(*args: str) -> str:
    return run(REPO / "bin" / "deploy", *args, timeout=900).stdout


def test_etcds_tls_goes_off_and_on_under_load_with_bin_deploy(lab):
    """etcd's TLS switched off, then on again, under the fault tests' writer: a plain
    state.apply that would switch it is refused, changing nothing; bin/deploy switches it
    member by member (pgcluster_etcd.tls_switch), Patroni's REST API with it (which the switch
    must reach as it runs, and leave to the patroni step): no acknowledged write is lost, no
    failover happens, PostgreSQL is not restarted, the cluster is not left paused, and etcd and
    its peers serve as the pillar says."""
    off = {"pgcluster": {"etcd": {"tls": False}, "patroni": {"tls": False}}}
    peer = {name: f"{address}:{PEER_PORT}" for name, address in MEMBERS.items()}
    tls = {name: ("https", f"https://{peer[name]}") for name in MEMBERS}
    assert _etcd_serves() == tls
    refused = salt(SECOND, "state.apply", "etcd,patroni", "pillar=" + json.dumps(off),
                   timeout=300)[SECOND]
    failed = {s["__id__"]: s["comment"] for s in refused.values() if s["result"] is False}
    assert "bin/deploy" in failed["etcd-tls-unchanged"], failed
    assert "bin/deploy" in failed["patroni-etcd-tls-unchanged"], failed
    assert not [s["__id__"] for s in refused.values() if s["changes"]]
    assert _etcd_serves() == tls
    password = credentials()["app"]
    ensure_table(password)
    writer = Writer(password, f"etcd-tls-off-on-{time.time_ns()}")
    leader_before, timeline_before = leader(), _timeline()
    postgres_before = {m: _main_pids(m)["postgresql"] for m in MEMBERS}
    started = time.monotonic()
    writer.start()
    try:
        shown = _deploy("--pillar", json.dumps(off))
        assert re.search(r"^  etcd-tls-switch +ok .*steps to plain", shown, re.M), shown
        assert _etcd_serves() == {name: ("http", f"http://{peer[name]}") for name in MEMBERS}
        assert _salt_json("-L", ",".join(MEMBERS), "patroni.rest_scheme") == \
            {m: "http" for m in MEMBERS}
        shown = _deploy()
        assert re.search(r"^  etcd-tls-switch +ok .*steps to tls", shown, re.M), shown
        assert _etcd_serves() == tls
        assert _salt_json("-L", ",".join(MEMBERS), "patroni.rest_scheme") == \
            {m: "https" for m in MEMBERS}
    finally:
        writer.stop.set()
        writer.join()
    print(f"etcd TLS off and on: longest write outage {writer.longest_gap(started):.2f} s, "
          f"{len(writer.acked)} writes acknowledged")
    assert writer.acked and not writer.acked - rows_on(leader(), writer.tag)
    assert (leader(), _timeline()) == (leader_before, timeline_before)
    assert {m: _main_pids(m)["postgresql"] for m in MEMBERS} == postgres_before
    assert on_web("patroni.list", check=True)["paused"] is False
