"""What the etcd TLS switch (_runners/pgcluster_etcd.py) asks of each member, against a real etcd
3.4 (Debian's etcd-server) on loopback: the stage a member's etcd runs, read from its
environment file; its peer URL moved to another scheme in etcd's member list (as root when
authentication is on); and each member's health and scheme on both schemes at once. The
switch itself runs in the lab (tests/lab/test_security.py)."""

from __future__ import annotations

import shutil

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load_module, salt_utils, start_etcd

etcd_cluster = load_module("_modules/etcd_cluster.py")
PASSWORDS = {"root": "root-secret", "patroni": "patroni-secret", "reader": "reader-secret"}
CONFIG: dict = {}

pytestmark = pytest.mark.skipif(not shutil.which("etcd"), reason="etcd-server is not installed "
                                "(make apt installs it)")


@pytest.fixture
def configure_loader_modules():
    def config(fresh=False, pillar=None):
        return CONFIG

    pillar = {f"pgcluster_credentials:etcd_{u}": p for u, p in PASSWORDS.items()}
    funcs = {"pgcluster.config": config,
             "pillar.get": lambda key, default=None, unmask=False: pillar.get(key, default)}
    return {etcd_cluster: {"__salt__": funcs, "__utils__": salt_utils(),
                           "__grains__": {"id": "e1"}}}


@pytest.fixture
def etcd(tmp_path):
    """One etcd member on loopback in plain text, as a cluster deployed without TLS runs."""
    process, client, peer = start_etcd(tmp_path / "data")
    url = f"http://127.0.0.1:{client}"
    CONFIG.clear()
    CONFIG.update({"name": "test", "member_names": ["e1"],
                   "members": {"e1": {"address": "127.0.0.1"}},
                   "tls": {"ca_file": str(tmp_path / "no-ca.crt")},
                   # The pillar wants no TLS, and this host has no CA: asking on https fails.
                   "etcd": {"tls": False, "auth": False, "client_port": client, "peer_port": peer,
                            "data_dir": str(tmp_path / "var" / "test"), "env_file": str(tmp_path / "env"),
                            "urls": {"e1": url}}})
    yield process
    process.terminate()
    process.wait(timeout=10)


@pytest.mark.parametrize(("env", "running"), [
    ('ETCD_LISTEN_PEER_URLS="http://10.0.0.11:2380"\n', "plain"),
    ('ETCD_LISTEN_PEER_URLS="http://10.0.0.11:2380"\nETCD_PEER_CERT_FILE="/etc/etcd/tls/host.crt"\n',
     "bridge"),
    ('ETCD_LISTEN_PEER_URLS="https://10.0.0.11:2380"\nETCD_PEER_CERT_FILE="/etc/etcd/tls/host.crt"\n',
     "tls"),
])
def test_the_stage_a_member_runs_is_read_from_its_environment_file(tmp_path, env, running):
    CONFIG.clear()
    CONFIG.update({"name": "test", "etcd": {"tls": True, "data_dir": str(tmp_path / "test"),
                                            "env_file": str(tmp_path / "env")}})
    (tmp_path / "env").write_text(env)
    # No data yet: a new member starts as the pillar says, whatever its file holds.
    assert etcd_cluster.tls_stage() == {"running": None, "wanted": "tls", "pending": False}
    (tmp_path / "test" / "member").mkdir(parents=True)
    assert etcd_cluster.tls_stage() == {"running": running, "wanted": "tls",
                                        "pending": running != "tls"}
    CONFIG["etcd"]["tls"] = False
    assert etcd_cluster.tls_stage()["wanted"] == "plain"


def _peer_urls() -> list[str]:
    return etcd_cluster.members()[0]["peer_urls"]


def test_a_members_peer_url_moves_to_the_other_scheme_once(etcd):
    peer = f"127.0.0.1:{CONFIG['etcd']['peer_port']}"
    assert etcd_cluster.peer_scheme_set("http") == {"changed": False, "peer_urls": [f"http://{peer}"]}
    assert etcd_cluster.peer_scheme_set("https") == {"changed": True, "peer_urls": [f"https://{peer}"]}
    assert _peer_urls() == [f"https://{peer}"]
    assert etcd_cluster.peer_scheme_set("https")["changed"] is False
    with pytest.raises(CommandExecutionError, match="must be https or http, not 'tls'"):
        etcd_cluster.peer_scheme_set("tls")


def test_with_authentication_on_the_peer_url_moves_as_root(etcd):
    CONFIG["etcd"].update(auth=True, prefix="/service/test/")
    etcd_cluster.auth_plan(apply=True)
    assert etcd_cluster.auth_enabled()
    assert etcd_cluster.peer_scheme_set("https")["changed"] is True
    assert _peer_urls()[0].startswith("https://")


def test_each_member_shows_the_scheme_it_serves_and_whether_it_is_healthy(etcd):
    client, peer = CONFIG["etcd"]["client_port"], CONFIG["etcd"]["peer_port"]
    report = etcd_cluster.tls_switch_health(timeout=2)
    # One member: no peer to be connected with.
    assert report == {"e1": {"healthy": True, "serves": "http", "peers": 0, "linked": [], "errors": [],
                             "peer_urls": [f"http://127.0.0.1:{peer}"],
                             "client_urls": [f"http://127.0.0.1:{client}"]}}
    etcd.terminate()
    etcd.wait(timeout=10)
    down = etcd_cluster.tls_switch_health(timeout=2)["e1"]
    assert down["healthy"] is False and down["serves"] is None and down["peers"] is None
    assert len(down["errors"]) == 2
    assert f"127.0.0.1:{client}" in down["errors"][0]
