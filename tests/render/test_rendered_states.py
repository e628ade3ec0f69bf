"""Every state of every role, rendered through real Salt without the lab (tests/render/render_host.py),
for three pillars, and every config file it writes checked by the config's own tool."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jinja2
import pytest
import yaml

from lab import object_storage
from tests.conftest import REPO, VENV_BIN
from tests.render import validators
from tests.unit.conftest import load_module

# The header by which patroni.etcd_logins knows a Patroni runs with its etcd login.
ETCD_USER_HEADER = load_module("_modules/patroni.py").ETCD_USER_HEADER

# The pillars: the repo's, as the lab's master and as the Yandex master serve it, the
# example of every key, and one that takes the other branches (five members, no PgBouncer,
# other ports, admin networks, Patroni tags, Patroni's REST API and etcd without TLS, etcd
# without authentication).
VARIANT = {
    "name": "variant",
    "members": {f"db{i}": {"address": f"192.168.40.{10 + i}"} for i in range(1, 6)},
    "web": {"front": {"address": "192.168.40.5"}},
    "app": {"database": "shop", "user": "shop"},
    "postgresql": {"port": 5433, "parameters": {"work_mem": "8MB"}},
    "patroni": {"restapi_port": 8009, "tls": False,
                "tags": {"db5": {"nofailover": True, "nosync": True}}},
    "etcd": {"client_port": 2479, "peer_port": 2480, "keep_leader_off_primary": False,
             "tls": False, "auth": False},
    "pgbouncer": {"enabled": False},
    "haproxy": {"primary_port": 6000, "replica_port": 6001, "check": {"inter": "1s"}},
    "webapp": {"port": 8080, "bind": "127.0.0.1:8100", "workers": 2},
    "firewall": {"enabled": True, "admin_sources": ["10.20.0.0/16", "172.16.1.9"]},
    # Prometheus on a member, with Alertmanager for a webhook.
    "monitoring": {"host": "db5", "scrape_interval": "15s", "retention": "30d",
                   "receivers": {"webhook": "http://hooks.example.net:9000/alerts"}},
}
PILLARS = {
    "lab": None,
    "yandex": None,  # the repo's pillar as the Yandex master serves it (pgcluster_site: yandex)
    "example": yaml.safe_load((REPO / "pillar" / "pillar.example").read_text()),
    "variant": {"pgcluster": VARIANT},
}
SITES = {"yandex": "yandex"}
HOSTS = {"lab": ("postgres-srv1", "web"), "yandex": ("postgres-srv3", "web"),
         "example": ("postgres-srv2", "web"), "variant": ("db5", "front")}
CASES = [(pillar, host) for pillar, hosts in HOSTS.items() for host in hosts]


def _pillar_root(tmp: Path, name: str) -> str | None:
    if name == "yandex":
        # The repo's own pillar, beside the Object Storage key a user writes before deploying.
        root = tmp / name
        root.mkdir()
        for sls in (REPO / "pillar").glob("*.sls"):
            shutil.copy(sls, root)
        (root / "generated").mkdir(mode=0o700)
        object_storage.write_access_key(root / "generated" / "object-storage.yaml")
        return str(root)
    if PILLARS[name] is None:
        return None  # the repo's own pillar/
    root = tmp / name
    root.mkdir()
    (root / "top.sls").write_text("base:\n  '*':\n    - cluster\n")
    (root / "cluster.sls").write_text(yaml.safe_dump(PILLARS[name]))
    return str(root)


def render(host: str, pillar_root: str | None = None, pillar: dict | None = None,
           site: str | None = None) -> dict:
    cmd = [VENV_BIN / "python", REPO / "tests/render/render_host.py", host]
    if site:
        cmd += ["--site", site]
    if pillar_root:
        cmd += ["--pillar-root", pillar_root]
    if pillar:
        cmd += ["--pillar", json.dumps(pillar)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pillars")
    roots = {name: _pillar_root(tmp, name) for name in PILLARS}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {(p, h): pool.submit(render, h, roots[p], None, SITES.get(p)) for p, h in CASES}
        return {case: future.result() for case, future in futures.items()}


MEMBER_STATES = {"common.address", "common", "firewall", "tls", "etcd", "etcd.member", "postgresql",
                 "pgbackrest", "patroni.install", "patroni", "etcd.auth", "postgresql.app", "pgbouncer",
                 "monitoring.exporters", "monitoring.prometheus", "monitoring.alertmanager"}
WEB_STATES = {"common.address", "common", "firewall", "tls", "haproxy.install", "haproxy",
              "webapp.install", "webapp", "pgbackrest",
              "pgbackrest.repository", "monitoring.exporters", "monitoring.prometheus",
              "monitoring.alertmanager"}
# Where each pillar runs Prometheus (it alone has the reload helper, monitoring.reload).
PROMETHEUS_HOST = {"lab": "web", "yandex": "web", "example": "web", "variant": "db5"}


def _sls(states: dict) -> set[str]:
    return {body["__sls__"] for key, body in states.items() if not key.startswith("__")}


@pytest.mark.parametrize(("pillar", "host"), CASES)
def test_every_state_renders(rendered, pillar, host):
    result = rendered[pillar, host]
    assert result["errors"] == []
    expected = WEB_STATES if host == HOSTS[pillar][1] else MEMBER_STATES
    if pillar in DATA_DISK and host != HOSTS[pillar][1]:
        expected = expected | {"postgresql.data_disk"}
    if host == PROMETHEUS_HOST[pillar]:
        expected = expected | {"monitoring.reload"}
    assert _sls(result["states"]) == expected


# The repo's pillars give the members a data disk; the example and the variant keep the data
# on the system disk.
DATA_DISK = {"lab", "yandex"}


@pytest.mark.parametrize("pillar", HOSTS)
def test_the_data_disk_is_mounted_on_home_before_postgresql_is_installed(rendered, pillar):
    states = rendered[pillar, HOSTS[pillar][0]]["states"]
    packages = states["postgresql-packages"]["pkg"]
    if pillar not in DATA_DISK:
        assert "postgresql-data-disk-mounted" not in states
        return
    unit = {k: v for arg in states["postgresql-data-disk-unit"]["file"]
            if isinstance(arg, dict) for k, v in arg.items()}
    assert unit["name"] == "/etc/systemd/system/var-lib-postgresql.mount"
    assert "What=/dev/disk/by-id/virtio-pgdata\nWhere=/var/lib/postgresql\nType=ext4\n" in \
        unit["contents"]
    assert "WantedBy=local-fs.target" in unit["contents"]
    assert {"service": "postgresql-data-disk-mounted"} in next(
        arg["require"] for arg in packages if isinstance(arg, dict) and "require" in arg)


def _member(rendered, pillar):
    return rendered[pillar, HOSTS[pillar][0]]["files"]


def _web(rendered, pillar):
    return rendered[pillar, HOSTS[pillar][1]]["files"]


@pytest.mark.parametrize("pillar", HOSTS)
def test_patroni_config_passes_patronis_own_check(rendered, pillar):
    text = _member(rendered, pillar)["patroni-config"]["text"]
    validators.patroni_config(text)


@pytest.mark.parametrize("pillar", HOSTS)
def test_pg_hba_passes_postgresqls_own_parser(rendered, pillar):
    config = yaml.safe_load(_member(rendered, pillar)["patroni-config"]["text"])
    validators.pg_hba(config["postgresql"]["pg_hba"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_pgbouncer_config_loads_in_pgbouncer(rendered, pillar):
    files = _member(rendered, pillar)
    if "pgbouncer-config" not in files:
        assert PILLARS[pillar]["pgcluster"]["pgbouncer"]["enabled"] is False
        return
    validators.pgbouncer_ini(files["pgbouncer-config"]["text"], files["pgbouncer-userlist"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_etcd_environment_names_only_etcds_own_flags(rendered, pillar):
    # etcd starts with both: the bootstrap file's initial cluster is read while it has no data.
    member = _member(rendered, pillar)
    validators.etcd_env(member["etcd-config"]["text"] + member["etcd-bootstrap-config"]["text"])


@pytest.mark.parametrize(("pillar", "host"), CASES)
def test_nftables_ruleset_passes_nft_check(rendered, pillar, host):
    validators.nftables_conf(rendered[pillar, host]["files"]["firewall-config"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_haproxy_config_passes_haproxy_check(rendered, pillar):
    validators.haproxy_cfg(_web(rendered, pillar)["haproxy-config"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_nginx_site_passes_nginx_check(rendered, pillar):
    validators.nginx_site(_web(rendered, pillar)["webapp-nginx-site"]["text"])


def _metrics_allowed(site: str) -> list[str]:
    """The addresses nginx's location = /metrics lets in; it must deny everyone else."""
    block = site[site.index("location = /metrics {"):]
    block = block[:block.index("}")]
    lines = [line.strip() for line in block.splitlines()[1:]]
    allowed = [line.removeprefix("allow ").rstrip(";") for line in lines if line.startswith("allow ")]
    assert lines[len(allowed)] == "deny all;", block  # right after the allows: first match wins
    assert "proxy_pass http://" in block
    return allowed


@pytest.mark.parametrize("pillar", HOSTS)
def test_the_web_apps_metrics_are_for_loopback_and_prometheus_only(rendered, pillar):
    """Prometheus runs on the first web host unless the pillar says otherwise (the variant's
    runs on its member db5): nginx lets in its address (nginx -t passes it above)."""
    host = PROMETHEUS_HOST[pillar]
    own = next(arg["name"] for arg in rendered[pillar, host]["states"]
               ["common-host-has-its-pillar-address"]["pgcluster"] if isinstance(arg, dict) and "name" in arg)
    assert _metrics_allowed(_web(rendered, pillar)["webapp-nginx-site"]["text"]) == ["127.0.0.1", own]


def test_the_web_apps_metrics_follow_the_monitoring_host_or_are_loopbacks_alone():
    with ThreadPoolExecutor(max_workers=2) as pool:
        elsewhere, off = pool.map(lambda monitoring: render("web", pillar={"pgcluster": {
            "monitoring": monitoring}}), [{"host": "postgres-srv2"}, {"enabled": False}])
    for result in (elsewhere, off):
        assert result["errors"] == []
    site = elsewhere["files"]["webapp-nginx-site"]["text"]
    assert _metrics_allowed(site) == ["127.0.0.1", "10.0.0.12"]
    site = off["files"]["webapp-nginx-site"]["text"]
    assert _metrics_allowed(site) == ["127.0.0.1"]
    if not validators.missing("nginx_site"):
        validators.nginx_site(site)


@pytest.mark.parametrize("pillar", HOSTS)
def test_the_web_apps_workers_share_a_metrics_directory_emptied_at_each_start(rendered, pillar):
    files, states = _web(rendered, pillar), rendered[pillar, HOSTS[pillar][1]]["states"]
    unit = files["webapp-unit"]["text"]
    runtime = [line.removeprefix("RuntimeDirectory=") for line in unit.splitlines()
               if line.startswith("RuntimeDirectory=")]
    assert len(runtime) == 1 and runtime[0] and not runtime[0].startswith("/"), unit
    assert f"\nEnvironment=PROMETHEUS_MULTIPROC_DIR=/run/{runtime[0]}\n" in unit
    hooks = files["webapp-gunicorn-config"]
    assert f" --config {hooks['name']} " in unit
    assert "def child_exit(server, worker):" in hooks["text"] and "mark_process_dead" in hooks["text"]
    watched = [w for arg in states["webapp-service"]["service"] if isinstance(arg, dict)
               for w in arg.get("watch", [])]
    assert {"file": "webapp-gunicorn-config"} in watched and {"file": "webapp-unit"} in watched
    packages = next(arg["pkgs"] for arg in states["webapp-packages"]["pkg"]
                    if isinstance(arg, dict) and "pkgs" in arg)
    assert "python3-prometheus-client" in packages


@pytest.mark.parametrize("pillar", HOSTS)
def test_web_app_config_is_json_with_its_connections(rendered, pillar):
    config = json.loads(_web(rendered, pillar)["webapp-config"]["text"])
    assert {"writer", "reader", "patroni", "csrf_secret"} <= set(config)
    # The default data path, libpq: one list of every member for both, libpq choosing.
    members = config["writer"]["host"]
    assert len(members.split(",")) >= 3 and config["reader"]["host"] == members
    assert (config["writer"]["target_session_attrs"], config["reader"]["target_session_attrs"]) \
        == ("read-write", "prefer-standby")
    # The form tokens' own key, not one derived from the database password.
    assert config["csrf_secret"] and config["csrf_secret"] != config["writer"]["password"]
    # The page's charts ask Prometheus on its host (the variant's runs on db5, port 9090).
    expected = {"lab": "http://10.0.0.10:9090", "yandex": "http://10.0.1.10:9090",
                "example": "http://10.0.0.10:9090", "variant": "http://192.168.40.15:9090"}
    assert config["prometheus"] == expected[pillar]


@pytest.mark.parametrize("pillar", HOSTS)
def test_the_rest_apis_backlog_outlasts_a_stopping_leaders_checks(rendered, pillar):
    """Patroni's own 5 fill with HAProxy's checks while a stopping leader shuts down, and the
    candidate's status request to it then waits 1 s for TCP to send its SYN again."""
    restapi = yaml.safe_load(_member(rendered, pillar)["patroni-config"]["text"])["restapi"]
    assert restapi["request_queue_size"] == 64


def test_a_local_pillar_beside_the_sites_is_merged_over_it(tmp_path):
    """pillar/local.sls (out of git: bench/tls.py switches TLS with it) changes what it names
    and leaves the rest of the site's pillar as it is."""
    root = tmp_path / "pillar"
    root.mkdir()
    for sls in (REPO / "pillar").glob("*.sls"):
        shutil.copy(sls, root)
    (root / "generated").symlink_to(REPO / "pillar" / "generated")  # the lab's storage key
    (root / "local.sls").write_text(yaml.safe_dump({"pgcluster": {"postgresql": {"port": 5439}}}))
    files = render("postgres-srv1", str(root))["files"]
    patroni = yaml.safe_load(files["patroni-config"]["text"])
    assert patroni["postgresql"]["connect_address"] == "10.0.0.11:5439"
    assert patroni["restapi"]["connect_address"] == "10.0.0.11:8008"  # the site's, as it was


def test_the_variant_pillar_reaches_the_files(rendered):
    member, web = _member(rendered, "variant"), _web(rendered, "variant")
    patroni = yaml.safe_load(member["patroni-config"]["text"])
    assert patroni["restapi"]["listen"] == "192.168.40.15:8009"
    assert patroni["tags"]["nofailover"] is True
    assert len(patroni["etcd3"]["hosts"]) == 5
    # Without PgBouncer, HAProxy sends clients to PostgreSQL itself; without TLS on Patroni's
    # REST API its checks are plain HTTP, and so is every client's URL.
    assert "192.168.40.11:5433 check port 8009\n" in web["haproxy-config"]["text"]
    assert "certfile" not in patroni["restapi"]
    config = json.loads(web["webapp-config"]["text"])
    assert config["patroni"][0] == "http://192.168.40.11:8009" and "patroni_ca" not in config
    assert "listen 8080 default_server" in web["webapp-nginx-site"]["text"]
    assert "10.20.0.0/16" in member["firewall-config"]["text"]
    # etcd in plain text and without authentication: Patroni shows no certificate, and keeps
    # its login, which etcd then does not ask for (a login dropped left Patroni a token that
    # etcd refuses once authentication is off: a leader demoted itself).
    assert patroni["etcd3"] == {"hosts": [f"192.168.40.{10 + i}:2479" for i in range(1, 6)],
                                "username": "patroni", "password": patroni["etcd3"]["password"]}
    assert patroni["etcd3"]["password"]
    assert patroni["restapi"]["http_extra_headers"] == {ETCD_USER_HEADER: "patroni"}
    env = member["etcd-config"]["text"]
    assert 'ETCD_LISTEN_CLIENT_URLS="http://192.168.40.15:2479"' in env and "CERT" not in env


def test_etcd_speaks_tls_peers_show_certificates_and_patroni_logs_in(rendered):
    member = _member(rendered, "lab")  # postgres-srv1, the bootstrap member
    env = member["etcd-config"]["text"]
    assert 'ETCD_LISTEN_CLIENT_URLS="https://10.0.0.11:2379"\n' in env
    assert 'ETCD_PEER_CLIENT_CERT_AUTH="true"' in env
    assert "postgres-srv2=https://10.0.0.12:2380" in member["etcd-bootstrap-config"]["text"]
    # No client CA: etcd would ask clients for a certificate, which its gateway then refuses.
    assert "ETCD_TRUSTED_CA_FILE" not in env and "ETCD_CLIENT_CERT_AUTH" not in env
    etcd3 = yaml.safe_load(member["patroni-config"]["text"])["etcd3"]
    assert etcd3["protocol"] == "https" and etcd3["cacert"] == "/etc/pgcluster/tls/ca.crt"
    assert etcd3["username"] == "patroni" and etcd3["password"] and "cert" not in etcd3
    # Every answer of its REST API says so, once Patroni runs with it (patroni.etcd_logins).
    restapi = yaml.safe_load(member["patroni-config"]["text"])["restapi"]
    assert restapi["http_extra_headers"] == {ETCD_USER_HEADER: "patroni"}
    # The bootstrap member sets up etcd's users with etcd, and turns authentication on only
    # after Patroni has its login (etcd.auth, after the patroni state); root's etcdctl and the
    # leader mover use root.
    states = rendered["lab", "postgres-srv1"]["states"]
    assert {"enable": False} in states["etcd-auth"]["etcd_cluster"]
    enabled = states["etcd-auth-enabled"]
    assert enabled["__sls__"] == "etcd.auth" and "enable" not in json.dumps(enabled["etcd_cluster"])
    elsewhere = rendered["example", "postgres-srv2"]["states"]
    assert "etcd-auth-enabled" not in elsewhere and "etcd-auth-elsewhere" in elsewhere
    etcdctl = member["etcdctl-env"]["text"]
    assert "ETCDCTL_USER=root:" in etcdctl and "ETCDCTL_CACERT=/etc/pgcluster/tls/ca.crt" in etcdctl
    unit = member["etcd-leader-off-primary-unit"]["text"]
    assert "--etcd https://10.0.0.11:2379" in unit and "EnvironmentFile=/etc/etcd/etcdctl.env" in unit


def test_a_typo_in_the_pillar_fails_the_render_naming_the_key():
    result = render("postgres-srv1", pillar={"pgcluster": {"haproxy": {"chek": {"inter": "1s"}}}})
    assert result["errors"], "a typo'd key rendered"
    assert all("pillar pgcluster:haproxy:chek: unknown key (did you mean check?)" in e
               for e in result["errors"]), result["errors"]
    assert not any("Traceback" in e for e in result["errors"])


# --- patronictl on the PATH -------------------------------------------------------------------
# The rendered wrapper and script, run with the Patroni the hosts run, against a copy of the
# rendered config whose etcd endpoints are on this machine's loopback (only they differ).

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def bounded_patronictl(rendered, tmp_path):
    """(run, config, rendered config): run(*args, etcd_hosts) runs the rendered
    /usr/local/bin/patronictl of a lab member with the rendered config, its etcd hosts replaced."""
    reason = validators.missing("patroni_config")
    if reason:
        pytest.skip(reason)
    python = validators.patroni_venv().parent / "python"
    files = _member(rendered, "lab")
    defaults = yaml.safe_load((REPO / "salt/patroni/defaults.yaml").read_text())["patroni"]
    script = tmp_path / "bounded_patronictl.py"
    script.write_text(files["patroni-bounded-patronictl"]["text"])
    config = tmp_path / "config.yml"
    wrapper = tmp_path / "patronictl"
    wrapper.write_text(files["patronictl-on-path"]["text"]
                       .replace(f"{defaults['venv']}/bin/python", str(python))
                       .replace(files["patroni-bounded-patronictl"]["name"], str(script))
                       .replace(defaults["config_file"], str(config)))
    wrapper.chmod(0o755)
    rendered_config = yaml.safe_load(files["patroni-config"]["text"])

    def run(*args: str, etcd_hosts: list[str]) -> tuple[subprocess.CompletedProcess, float]:
        config.write_text(yaml.safe_dump({**rendered_config, "etcd3": {"hosts": etcd_hosts}}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PATRONICTL_", "PGCLUSTER_"))}
        started = time.monotonic()
        result = subprocess.run([wrapper, *args], capture_output=True, text=True, timeout=60, env=env,
                                check=False)
        return result, time.monotonic() - started

    return run, config, rendered_config


def test_patronictl_ends_within_retry_timeout_when_no_etcd_answers(bounded_patronictl):
    """One endpoint refuses, one accepts and never answers (a partitioned host's view): Patroni's
    patronictl would wait without end; the one on the PATH says so within retry_timeout."""
    run, _, rendered_config = bounded_patronictl
    wait = rendered_config["bootstrap"]["dcs"]["retry_timeout"]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        hosts = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{silent.getsockname()[1]}"]
        result, took = run("list", etcd_hosts=hosts)
    assert result.returncode == 1, result
    assert wait - 1 <= took <= wait + 5, took
    message = result.stderr
    assert "no etcd endpoint" in message and "systemctl status etcd" in message, message
    assert f"http://{hosts[0]}: Connection refused" in message, message
    assert f"http://{hosts[1]}: no answer in {wait:g} s" in message, message
    assert "Traceback" not in message


def test_patronis_own_patronictl_waits_without_end(bounded_patronictl):
    """Why the wrapper exists: the same config straight to Patroni's patronictl is still waiting
    well after the wrapper's bound (if Patroni ever bounds it, the wrapper can go)."""
    _, config, rendered_config = bounded_patronictl
    wait = rendered_config["bootstrap"]["dcs"]["retry_timeout"]
    config.write_text(yaml.safe_dump({"scope": "x", "etcd3": {"hosts": [f"127.0.0.1:{_free_port()}"]}}))
    patronictl = validators.patroni_venv().parent / "patronictl"
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([patronictl, "-c", config, "list"], capture_output=True, timeout=wait + 5, check=False)


def test_patronictl_runs_patronis_own_when_etcd_answers(bounded_patronictl, tmp_path):
    """A real etcd on loopback: the wrapper hands over to Patroni's patronictl, which reads the
    host's config without -c and lists the (empty) cluster."""
    if not shutil.which("etcd"):
        pytest.skip("etcd is not installed (make apt installs it)")
    run, _, rendered_config = bounded_patronictl
    client, peer = _free_port(), _free_port()
    etcd = subprocess.Popen(
        ["etcd", "--name", "t", "--data-dir", str(tmp_path / "etcd"),
         "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls",
         f"http://127.0.0.1:{client}", "--listen-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
         "--initial-cluster", f"t=http://127.0.0.1:{peer}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", client)) == 0:
                    break
            time.sleep(0.2)
        result, _ = run("list", etcd_hosts=[f"127.0.0.1:{client}"])
    finally:
        etcd.terminate()
        etcd.wait(timeout=30)
    assert result.returncode == 0, result
    assert f"Cluster: {rendered_config['scope']}" in result.stdout, result.stdout


def test_the_yandex_site_gets_the_yandex_pillar(rendered):
    """bin/master --site yandex: the members' services bind the addresses of their zones' subnets."""
    yandex = yaml.safe_load((REPO / "pillar/cluster_yandex.sls").read_text())["pgcluster"]
    address = yandex["members"]["postgres-srv3"]["address"]
    member = _member(rendered, "yandex")
    assert yaml.safe_load(member["patroni-config"]["text"])["restapi"]["listen"].startswith(f"{address}:")
    states = rendered["yandex", "postgres-srv3"]["states"]
    check = states["common-host-has-its-pillar-address"]["pgcluster"]
    assert {"name": address} in check and {"failhard": True} in check
    lab = yaml.safe_load((REPO / "pillar/cluster.sls").read_text())["pgcluster"]
    assert lab["members"]["postgres-srv3"]["address"] != address
    # Backups go to Object Storage too, by its public name: no hosts entry, the public CAs.
    conf = member["pgbackrest-config"]["text"]
    for line in ("repo2-type=s3", "repo2-s3-endpoint=storage.yandexcloud.net",
                 "repo2-s3-region=ru-central1", "repo2-s3-uri-style=path"):
        assert line in conf.splitlines(), conf
    assert "repo2-storage-ca-file" not in conf
    assert not [k for k in states if k.startswith("pgbackrest-repo2-storage-")]


def test_a_member_joins_a_running_etcd_by_its_bootstrap_file_which_only_a_new_host_gets():
    """A new cluster's members start together, from the pillar's list; a member the runner
    pgcluster_members.join added (pillar etcd_join) starts as one of an existing cluster. The
    file is written only while etcd has no data, so a member added later restarts no other
    member: the environment etcd-config writes (and the service watches) names no member."""
    new = render("postgres-srv1")
    text = new["files"]["etcd-bootstrap-config"]["text"]
    assert 'ETCD_INITIAL_CLUSTER_STATE="new"' in text
    assert ('ETCD_INITIAL_CLUSTER="postgres-srv1=https://10.0.0.11:2380,postgres-srv2=https://'
            '10.0.0.12:2380,postgres-srv3=https://10.0.0.13:2380"') in text
    assert "unless" in json.dumps(new["states"]["etcd-bootstrap-config"])
    assert "/var/lib/etcd/pg-cluster-skynet/member" in json.dumps(new["states"]["etcd-bootstrap-config"])
    assert "postgres-srv2" not in new["files"]["etcd-config"]["text"]
    initial = "postgres-srv1=https://10.0.0.11:2380,postgres-srv4=https://10.0.0.14:2380"
    joining = render("postgres-srv1", pillar={"etcd_join": {"initial_cluster": initial}})
    text = joining["files"]["etcd-bootstrap-config"]["text"]
    assert 'ETCD_INITIAL_CLUSTER_STATE="existing"' in text and f'ETCD_INITIAL_CLUSTER="{initial}"' in text


def test_switching_etcds_tls_with_a_plain_state_apply_is_refused_and_bin_deploy_named(tmp_path):
    """A member whose etcd has data and runs with plain-text peers: turning TLS on is
    bin/deploy's (member by member, _runners/pgcluster_etcd.py), so a highstate refuses before
    writing etcd's config, root's etcdctl settings or Patroni's config; the switch's own runs
    (pillar etcd_tls_stage, etcd_tls_switch) are not refused."""
    (tmp_path / "pg-cluster-skynet" / "member").mkdir(parents=True)
    env = tmp_path / "etcd.env"
    env.write_text('ETCD_LISTEN_PEER_URLS="http://10.0.0.11:2380"\n')
    etcd = {"data_root": str(tmp_path), "env_file": str(env)}
    high = render("postgres-srv1", pillar={"pgcluster": {"etcd": etcd}})["states"]
    refusal = json.dumps(high["etcd-tls-unchanged"]["test"])
    assert "pgcluster:etcd:tls: true would switch this running etcd from plain to tls" in refusal
    assert "bin/deploy" in refusal and "bin/deploy" in json.dumps(high["patroni-etcd-tls-unchanged"])

    def requires(state, kind="file"):
        return [r for arg in high[state][kind] if isinstance(arg, dict) for r in arg.get("require", [])]

    assert {"test": "etcd-tls-unchanged"} in requires("etcd-config")  # waits on the refusal
    assert {"file": "etcd-config"} in requires("etcdctl-env")
    assert {"test": "patroni-etcd-tls-unchanged"} in requires("patroni-config")
    # The switch's own runs: the stage it asks for, written as asked.
    staged = render("postgres-srv1", pillar={"pgcluster": {"etcd": etcd}, "etcd_tls_stage": "bridge",
                                             "etcd_tls_switch": True})
    assert "etcd-tls-unchanged" not in staged["states"]
    assert "patroni-etcd-tls-unchanged" not in staged["states"]
    bridge = staged["files"]["etcd-config"]["text"]
    assert 'ETCD_LISTEN_PEER_URLS="http://10.0.0.11:2380"' in bridge
    assert "ETCD_PEER_CERT_FILE" in bridge and "ETCD_CERT_FILE" not in bridge
    # The same data with https peers, as this version deploys them: nothing refused.
    env.write_text('ETCD_LISTEN_PEER_URLS="https://10.0.0.11:2380"\n')
    assert "etcd-tls-unchanged" not in render("postgres-srv1", pillar={"pgcluster": {"etcd": etcd}})["states"]


def _prometheus_host(rendered, pillar) -> dict:
    hosts = [files for (p, _), result in rendered.items() if p == pillar
             for files in [result["files"]] if "monitoring-prometheus-config" in files]
    assert len(hosts) == 1, f"{pillar}: Prometheus on {len(hosts)} of the rendered hosts"
    return hosts[0]


@pytest.mark.parametrize("pillar", HOSTS)
def test_prometheus_config_and_rules_pass_promtool(rendered, pillar):
    files = _prometheus_host(rendered, pillar)
    validators.prometheus_config(files["monitoring-prometheus-config"]["text"],
                                 files["monitoring-prometheus-rules"]["text"])


def test_alertmanager_config_passes_amtool_where_a_receiver_is_set(rendered):
    for (pillar, host), result in rendered.items():
        files = result["files"]
        if pillar == "variant" and host == "db5":
            validators.alertmanager_config(files["monitoring-alertmanager-config"]["text"])
        else:
            assert "monitoring-alertmanager-config" not in files, (pillar, host)


def test_the_modules_step_syncs_every_kind_of_custom_module_the_repo_has():
    """orch.cluster's first step syncs only the kinds of salt/_* the repo has (sync_all's
    twenty took 13 s): a kind added later must be added there too, or minions never get it.
    Its last sync refreshes the minions' pillar, as sync_all did (the runners read it)."""
    text = (REPO / "salt" / "saltutil" / "init.sls").read_text()
    states = yaml.safe_load(jinja2.Environment().from_string(text).render())
    synced = {function.split(".")[1].removeprefix("sync_")
              for state in states.values() for function in state}
    kinds = {path.name.removeprefix("_") for path in (REPO / "salt").glob("_*") if path.is_dir()}
    assert kinds and synced - {"grains"} == kinds, (synced, kinds)
    *_, last = states.values()
    # Only these refresh the pillar after the sync (salt/modules/saltutil.py); the others
    # reload the modules alone.
    (function, args), = last.items()
    assert function in ("saltutil.sync_grains", "saltutil.sync_all"), function
    assert {"refresh": True} in args
    assert all({"refresh": True} not in args for state in list(states.values())[:-1]
               for args in state.values())


def _orchestration(pillar: dict) -> dict[str, dict]:
    """orch.cluster rendered for ``pillar`` (its Jinja reads the pillar alone): {step: its
    arguments merged, with "function" salt.state or salt.runner}."""
    env = jinja2.Environment()
    env.filters["json"] = json.dumps
    text = (REPO / "salt" / "orch" / "cluster.sls").read_text()
    rendered = env.from_string(text).render(salt={"pillar.get": lambda key, default=None:
                                                  pillar.get(key, default)})
    steps = {}
    for step, body in yaml.safe_load(rendered).items():
        (function, args), = body.items()
        steps[step] = {"function": function, **{k: v for arg in args for k, v in arg.items()}}
    return steps


def _step_hosts(step: dict, hosts: list[str]) -> set[str]:
    if step["function"] != "salt.state":
        return set(hosts)  # a runner may act on any host through its own jobs
    tgt = step["tgt"]
    return set(hosts) if tgt == "*" else set(tgt.split(","))


@pytest.mark.parametrize("pillar", ["lab", "variant"])
def test_no_two_steps_that_may_run_at_once_share_a_host(pillar):
    """A host runs one state run at a time (a second is refused): a step marked parallel may
    overlap every later step that does not require it, directly or through another step, and
    must share no host with one. Prometheus's targets come in the first step on its host after
    the membership steps, before any Patroni starts (no alert waits on a host gone)."""
    cfg = (yaml.safe_load((REPO / "pillar/cluster.sls").read_text()) if pillar == "lab"
           else PILLARS[pillar])["pgcluster"]
    hosts = [*cfg["members"], *cfg["web"]]
    steps = _orchestration({"pgcluster": cfg})
    order = list(steps)

    def required(name: str) -> set[str]:
        direct = {req["salt"] for req in steps[name].get("require", [])}
        return direct.union(*(required(r) for r in direct))

    for i, first in enumerate(order):
        if not steps[first].get("parallel"):
            continue
        for later in order[i + 1:]:
            if first not in required(later):
                shared = _step_hosts(steps[first], hosts) & _step_hosts(steps[later], hosts)
                assert not shared, (first, later, shared)

    prometheus = cfg.get("monitoring", {}).get("host") or sorted(cfg["web"])[0]
    on_it = [name for name in order if steps[name]["function"] == "salt.state"
             and "members-join" in required(name)
             and prometheus in _step_hosts(steps[name], hosts)]
    sls = steps[on_it[0]]["sls"]
    assert {"monitoring", "monitoring.prometheus"} & set(sls), (on_it[0], sls)
    assert order.index(on_it[0]) < order.index("patroni-first")
