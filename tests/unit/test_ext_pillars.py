"""The master's ext_pillars, through Salt's own pillar compiler (salt-call --local):
pgcluster_credentials gives each minion its share, from wherever the pillar names the members;
pgcluster_defaults brings every component's defaults.yaml."""

from __future__ import annotations

import json
import stat
import subprocess

import pytest
import yaml

from tests.conftest import REPO, VENV_BIN


@pytest.fixture
def salt_dir(tmp_path):
    """A masterless minion whose pillar lists the members in one file and the web host in
    another, and whose pillar top is not the repo's."""
    pillar = tmp_path / "pillar"
    pillar.mkdir()
    (pillar / "top.sls").write_text("base:\n  '*':\n    - name\n    - hosts.members\n    - hosts.web\n")
    (pillar / "name.sls").write_text("pgcluster:\n  name: elsewhere\n")
    (pillar / "hosts").mkdir()
    (pillar / "hosts" / "members.sls").write_text(
        "pgcluster:\n  members:\n" + "".join(
            f"    db{i}: {{address: 192.168.7.{i}}}\n" for i in (1, 2, 3)))
    (pillar / "hosts" / "web.sls").write_text(
        "pgcluster:\n  web:\n    front: {address: 192.168.7.10}\n")
    (tmp_path / "minion").write_text(yaml.safe_dump({
        "file_client": "local", "root_dir": str(tmp_path / "root"),
        "pillar_roots": {"base": [str(pillar)]}, "file_roots": {"base": [str(REPO / "salt")]},
        "pillar_dirs": [str(REPO / "_pillar")],
        "ext_pillar": [{"pgcluster_defaults": {}},
                       {"pgcluster_credentials": {"store": str(tmp_path / "secret" / "creds.yaml")}}],
    }))
    return tmp_path


def pillar_of(salt_dir, minion_id):
    out = subprocess.run([VENV_BIN / "salt-call", "--local", "-c", salt_dir, "--id", minion_id,
                          "--out=json", "pillar.items", "unmask=True"], capture_output=True,
                         text=True, check=True, cwd=salt_dir, timeout=120)
    return json.loads(out.stdout)["local"]


def credentials(salt_dir, minion_id):
    return pillar_of(salt_dir, minion_id).get("pgcluster_credentials")


def test_each_minion_gets_its_share_from_the_compiled_pillar(salt_dir):
    member = credentials(salt_dir, "db2")
    assert sorted(member) == ["app", "pgbouncer_admin", "replication", "restapi", "rewind",
                              "superuser", "webapp_csrf"]
    assert all(len(value) >= 32 for value in member.values())
    assert credentials(salt_dir, "front") == {"app": member["app"], "restapi": member["restapi"],
                                              "webapp_csrf": member["webapp_csrf"]}
    assert credentials(salt_dir, "monitoring") is None
    # Made once, then the same on every render and for every member.
    assert credentials(salt_dir, "db1") == member


def test_the_store_is_private_and_outside_the_pillar(salt_dir):
    credentials(salt_dir, "db1")
    store = salt_dir / "secret" / "creds.yaml"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert sorted(yaml.safe_load(store.read_text())) == [
        "app", "pgbouncer_admin", "replication", "restapi", "rewind", "superuser", "webapp_csrf"]


def test_every_components_defaults_come_with_the_pillar(salt_dir):
    defaults = pillar_of(salt_dir, "db1")["pgcluster_defaults"]
    on_disk = {path.parent.name: yaml.safe_load(path.read_text())
               for path in (REPO / "salt").glob("*/defaults.yaml")}
    assert defaults == on_disk
    assert {"common", "etcd", "patroni", "haproxy"} <= set(defaults)
