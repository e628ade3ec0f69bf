"""Every state of every role, rendered through real Salt without the lab (tests/render/render_host.py),
for three pillars, and every config file it writes checked by the config's own tool."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN
from tests.render import validators

# The pillars: the repo's (the lab's; the Yandex map gives its VMs the same addresses), the
# example of every key, and one that takes the other branches (five members, no PgBouncer,
# other ports, admin networks, Patroni tags, the firewall off).
VARIANT = {
    "name": "variant",
    "members": {f"db{i}": {"address": f"192.168.40.{10 + i}"} for i in range(1, 6)},
    "web": {"front": {"address": "192.168.40.5"}},
    "app": {"database": "shop", "user": "shop"},
    "postgresql": {"port": 5433, "parameters": {"work_mem": "8MB"}},
    "patroni": {"restapi_port": 8009, "tags": {"db5": {"nofailover": True, "nosync": True}}},
    "etcd": {"client_port": 2479, "peer_port": 2480, "keep_leader_off_primary": False},
    "pgbouncer": {"enabled": False},
    "haproxy": {"primary_port": 6000, "replica_port": 6001, "check": {"inter": "1s"}},
    "webapp": {"port": 8080, "bind": "127.0.0.1:8100", "workers": 2},
    "firewall": {"enabled": True, "admin_sources": ["10.20.0.0/16", "172.16.1.9"]},
}
PILLARS = {
    "lab": None,
    "example": yaml.safe_load((REPO / "pillar" / "pillar.example").read_text()),
    "variant": {"pgcluster": VARIANT},
}
HOSTS = {"lab": ("postgres-srv1", "web"), "example": ("postgres-srv2", "web"),
         "variant": ("db5", "front")}
CASES = [(pillar, host) for pillar, hosts in HOSTS.items() for host in hosts]


def _pillar_root(tmp: Path, name: str) -> str | None:
    if PILLARS[name] is None:
        return None  # the repo's own pillar/
    root = tmp / name
    root.mkdir()
    (root / "top.sls").write_text("base:\n  '*':\n    - cluster\n")
    (root / "cluster.sls").write_text(yaml.safe_dump(PILLARS[name]))
    return str(root)


def render(host: str, pillar_root: str | None = None, pillar: dict | None = None) -> dict:
    cmd = [VENV_BIN / "python", REPO / "tests/render/render_host.py", host]
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
        futures = {(p, h): pool.submit(render, h, roots[p]) for p, h in CASES}
        return {case: future.result() for case, future in futures.items()}


MEMBER_STATES = {"common", "firewall", "etcd", "postgresql", "patroni", "postgresql.app", "pgbouncer"}
WEB_STATES = {"common", "firewall", "haproxy", "webapp"}


def _sls(states: dict) -> set[str]:
    return {body["__sls__"] for key, body in states.items() if not key.startswith("__")}


@pytest.mark.parametrize(("pillar", "host"), CASES)
def test_every_state_renders(rendered, pillar, host):
    result = rendered[pillar, host]
    assert result["errors"] == []
    expected = WEB_STATES if host == HOSTS[pillar][1] else MEMBER_STATES
    assert _sls(result["states"]) == expected


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
    validators.etcd_env(_member(rendered, pillar)["etcd-config"]["text"])


@pytest.mark.parametrize(("pillar", "host"), CASES)
def test_nftables_ruleset_passes_nft_check(rendered, pillar, host):
    validators.nftables_conf(rendered[pillar, host]["files"]["firewall-config"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_haproxy_config_passes_haproxy_check(rendered, pillar):
    validators.haproxy_cfg(_web(rendered, pillar)["haproxy-config"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_nginx_site_passes_nginx_check(rendered, pillar):
    validators.nginx_site(_web(rendered, pillar)["webapp-nginx-site"]["text"])


@pytest.mark.parametrize("pillar", HOSTS)
def test_web_app_config_is_json_with_its_connections(rendered, pillar):
    config = json.loads(_web(rendered, pillar)["webapp-config"]["text"])
    assert {"writer", "reader", "patroni", "csrf_secret"} <= set(config)
    assert config["writer"]["port"] != config["reader"]["port"]
    # The form tokens' own key, not one derived from the database password.
    assert config["csrf_secret"] and config["csrf_secret"] != config["writer"]["password"]


def test_the_variant_pillar_reaches_the_files(rendered):
    member, web = _member(rendered, "variant"), _web(rendered, "variant")
    patroni = yaml.safe_load(member["patroni-config"]["text"])
    assert patroni["restapi"]["listen"] == "192.168.40.15:8009"
    assert patroni["tags"]["nofailover"] is True
    assert len(patroni["etcd3"]["hosts"]) == 5
    # Without PgBouncer, HAProxy sends clients to PostgreSQL itself.
    assert "192.168.40.11:5433 check port 8009" in web["haproxy-config"]["text"]
    assert "listen 8080 default_server" in web["webapp-nginx-site"]["text"]
    assert "10.20.0.0/16" in member["firewall-config"]["text"]


def test_a_typo_in_the_pillar_fails_the_render_naming_the_key():
    result = render("postgres-srv1", pillar={"pgcluster": {"haproxy": {"chek": {"inter": "1s"}}}})
    assert result["errors"], "a typo'd key rendered"
    assert all("pillar pgcluster:haproxy:chek: unknown key (did you mean check?)" in e
               for e in result["errors"]), result["errors"]
    assert not any("Traceback" in e for e in result["errors"])
