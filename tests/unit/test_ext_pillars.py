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
        "pgcluster:\n  web:\n    front: {address: 192.168.7.10}\n"
        "    front2: {address: 192.168.7.20}\n")
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
    assert sorted(member) == ["app", "etcd_patroni", "etcd_reader", "etcd_root",
                              "pgbackrest_cipher", "pgbouncer_admin", "pgbouncer_stats",
                              "replication", "restapi", "rewind", "superuser", "webapp_csrf"]
    assert all(len(value) >= 32 for value in member.values())
    # A web host reads Patroni's keys in etcd (etcd_cluster.patroni_keys), never writes them.
    web_share = {"app": member["app"], "restapi": member["restapi"],
                 "webapp_csrf": member["webapp_csrf"], "etcd_reader": member["etcd_reader"]}
    # The first web host is the backup repository host: it encrypts the backups.
    assert credentials(salt_dir, "front") == {**web_share,
                                              "pgbackrest_cipher": member["pgbackrest_cipher"]}
    assert credentials(salt_dir, "front2") == web_share
    assert credentials(salt_dir, "monitoring") is None
    # Made once, then the same on every render and for every member.
    assert credentials(salt_dir, "db1") == member


def test_the_store_is_private_and_outside_the_pillar(salt_dir):
    credentials(salt_dir, "db1")
    store = salt_dir / "secret" / "creds.yaml"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert sorted(yaml.safe_load(store.read_text())) == [
        "app", "etcd_patroni", "etcd_reader", "etcd_root", "pgbackrest_cipher", "pgbouncer_admin",
        "pgbouncer_stats", "replication", "restapi", "rewind", "superuser", "webapp_csrf"]


def test_every_components_defaults_come_with_the_pillar(salt_dir):
    defaults = pillar_of(salt_dir, "db1")["pgcluster_defaults"]
    on_disk = {path.parent.name: yaml.safe_load(path.read_text())
               for path in (REPO / "salt").glob("*/defaults.yaml")}
    assert defaults == on_disk
    assert {"common", "etcd", "patroni", "haproxy"} <= set(defaults)


def _with_s3(salt_dir, keys_file, ca_file=None):
    s3 = {"endpoint": "storage.yandexcloud.net", "region": "ru-central1", "bucket": "backups",
          "credentials_file": str(keys_file), **({"ca_file": str(ca_file)} if ca_file else {})}
    (salt_dir / "pillar" / "backup.sls").write_text(yaml.safe_dump({"pgcluster": {"pgbackrest": {
        "repositories": [{"type": "posix", "path": "/var/lib/pgbackrest"},
                         {"type": "s3", "path": "/pg", "s3": s3}]}}}))
    top = salt_dir / "pillar" / "top.sls"
    top.write_text(top.read_text() + "    - backup\n")


def test_object_storage_keys_come_from_the_file_the_pillar_names(salt_dir):
    keys = salt_dir / "s3-keys.yaml"
    keys.write_text("access_key_id: YCAJE\nsecret_access_key: YCM-secret\n")
    # A relative path is read from the pillar's directory (not the current one).
    (salt_dir / "pillar" / "s3").mkdir()
    (salt_dir / "pillar" / "s3" / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    _with_s3(salt_dir, keys, "s3/ca.crt")
    expected = {"2": {"access_key_id": "YCAJE", "secret_access_key": "YCM-secret",
                      "ca": "-----BEGIN CERTIFICATE-----\n"}}
    assert credentials(salt_dir, "db1")["s3"] == expected
    assert credentials(salt_dir, "front")["s3"] == expected
    assert "s3" not in credentials(salt_dir, "front2")


def test_a_missing_keys_file_is_an_error_naming_the_key(salt_dir):
    _with_s3(salt_dir, salt_dir / "nowhere.yaml")
    errors = pillar_of(salt_dir, "db1").get("_errors")
    assert errors and any(
        "pgcluster:pgbackrest:repositories:1:s3:credentials_file: cannot read "
        f"{salt_dir / 'nowhere.yaml'} on the salt-master" in e for e in errors), errors


def _with_email(salt_dir, password_file, host=None):
    email = {"to": "dba@example.net", "from": "pg@example.net", "smarthost": "smtp.example.net:587",
             "auth_username": "pg", "auth_password_file": str(password_file)}
    (salt_dir / "pillar" / "monitoring.sls").write_text(yaml.safe_dump({"pgcluster": {
        "monitoring": {"receivers": {"email": email}, **({"host": host} if host else {})}}}))
    top = salt_dir / "pillar" / "top.sls"
    top.write_text(top.read_text() + "    - monitoring\n")


def test_the_smtp_password_goes_to_the_prometheus_host_only(salt_dir):
    # Relative to the pillar's directory, first line only.
    (salt_dir / "pillar" / "smtp-password").write_text("s3cret\n")
    _with_email(salt_dir, "smtp-password")
    assert credentials(salt_dir, "front")["smtp_password"] == "s3cret"  # the first web host
    for other in ("front2", "db1"):
        assert "smtp_password" not in credentials(salt_dir, other), other


def test_the_smtp_password_follows_the_prometheus_host(salt_dir):
    (salt_dir / "pillar" / "smtp-password").write_text("s3cret\n")
    _with_email(salt_dir, "smtp-password", host="db3")
    assert credentials(salt_dir, "db3")["smtp_password"] == "s3cret"
    assert "smtp_password" not in credentials(salt_dir, "front")


def test_a_missing_smtp_password_file_is_an_error_naming_the_key(salt_dir):
    _with_email(salt_dir, salt_dir / "nowhere")
    errors = pillar_of(salt_dir, "front").get("_errors")
    assert errors and any(
        "pgcluster:monitoring:receivers:email:auth_password_file: cannot read "
        f"{salt_dir / 'nowhere'} on the salt-master" in e for e in errors), errors
