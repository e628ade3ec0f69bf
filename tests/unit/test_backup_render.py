"""The backups in the model and what they render (_utils/pgcluster_model.py,
_utils/pgcluster_render.py): pgBackRest's configuration of a member and of the repository
host, Patroni's archiving and replica creation, the restore's bootstrap, and the pillar
mistakes refused naming their key."""

from __future__ import annotations

import re

import pytest

from tests.unit.conftest import CREDENTIALS, build, model, render

S3 = {"endpoint": "storage.yandexcloud.net", "region": "ru-central1", "bucket": "backups",
      "credentials_file": "/srv/secrets/s3.yaml"}
KEYS = {2: {"access_key_id": "YCAJE", "secret_access_key": "YCM-secret"}}


def conf(cfg, host):
    return render.pgbackrest_config(cfg, host, "the-passphrase", KEYS)


def test_the_defaults_fill_in_the_repository_host_and_the_stanza(cfg):
    backup = cfg["pgbackrest"]
    assert backup["host"] == "web" and backup["stanza"] == "pg-cluster-skynet"
    posix, s3 = backup["repositories"]
    assert posix == {"type": "posix", "path": "/var/lib/pgbackrest", "retention_full": 2,
                     "retention_diff": None, "encrypt": True}
    assert s3["retention_full"] == 2 and s3["encrypt"] is True
    assert s3["s3"]["uri_style"] == "host" and s3["s3"]["endpoint"] == "storage.yandexcloud.net"


POSIX_ONLY = {"pgbackrest": {"repositories": [{"type": "posix", "path": "/var/lib/pgbackrest"}]}}


def test_a_member_archives_through_the_repository_host_and_holds_no_passphrase():
    member = conf(build(POSIX_ONLY), "postgres-srv2")
    glob, stanza = member["global"], member["pg-cluster-skynet"]
    assert (glob["repo1-host"], glob["repo1-host-type"], glob["repo1-host-port"]) == ("web", "tls", 8432)
    assert glob["repo1-host-cert-file"] == "/etc/pgbackrest/tls/host.crt"
    # Its TLS server lets in the repository host only.
    assert glob["tls-server-auth"] == ["web=pg-cluster-skynet"]
    assert glob["tls-server-address"] == "10.0.0.12"
    assert glob["archive-async"] == "y"
    assert not any("cipher" in key or key == "repo1-path" for key in glob)
    assert stanza == {"pg1-path": "/var/lib/postgresql/15/main", "pg1-port": 5432,
                      "pg1-socket-path": "/var/run/postgresql"}


def test_the_repository_host_backs_up_from_a_standby_of_any_member(cfg):
    host = conf(cfg, "web")
    glob, stanza = host["global"], host["pg-cluster-skynet"]
    assert glob["backup-standby"] == "y"
    assert glob["tls-server-auth"] == [f"postgres-srv{i}=pg-cluster-skynet" for i in (1, 2, 3)]
    assert (glob["repo1-path"], glob["repo1-retention-full"]) == ("/var/lib/pgbackrest", 2)
    assert (glob["repo1-cipher-type"], glob["repo1-cipher-pass"]) == ("aes-256-cbc", "the-passphrase")
    assert [stanza[f"pg{i}-host"] for i in (1, 2, 3)] == ["postgres-srv1", "postgres-srv2",
                                                          "postgres-srv3"]
    assert all(stanza[f"pg{i}-host-type"] == "tls" for i in (1, 2, 3))


def test_object_storage_is_written_by_the_members_and_the_repository_host_alike():
    cfg = build({"pgbackrest": {"repositories": [
        {"type": "posix", "path": "/var/lib/pgbackrest"},
        {"type": "s3", "path": "/pg", "retention_full": 4, "s3": {**S3, "ca_file": "/srv/ca.crt",
                                                                    "address": "10.0.0.1"}}]}})
    for host in ("postgres-srv1", "web"):
        glob = conf(cfg, host)["global"]
        assert glob["repo2-type"] == "s3" and glob["repo2-path"] == "/pg"
        assert (glob["repo2-s3-endpoint"], glob["repo2-s3-bucket"], glob["repo2-s3-region"]) == \
            ("storage.yandexcloud.net", "backups", "ru-central1")
        assert (glob["repo2-s3-key"], glob["repo2-s3-key-secret"]) == ("YCAJE", "YCM-secret")
        assert glob["repo2-s3-uri-style"] == "host" and glob["repo2-storage-port"] == 443
        assert glob["repo2-storage-ca-file"] == "/etc/pgbackrest/tls/repo2-storage-ca.crt"
        assert glob["repo2-cipher-pass"] == "the-passphrase"
        assert glob["repo2-retention-full"] == 4


def test_the_ini_repeats_an_option_given_several_values():
    text = render.ini({"global": {"a": 1, "tls-server-auth": ["x=s", "y=s"]}, "s": {}})
    assert text == "[global]\na=1\ntls-server-auth=x=s\ntls-server-auth=y=s\n\n[s]\n"


def test_patroni_archives_and_clones_from_the_repository(cfg):
    params = render.dcs_config(cfg)["postgresql"]["parameters"]
    assert params["archive_mode"] == "on" and params["archive_timeout"] == 60
    assert params["archive_command"] == "pgbackrest --stanza=pg-cluster-skynet archive-push %p"
    pg = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [])["postgresql"]
    assert pg["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert pg["pgbackrest"]["command"].startswith("pgbackrest --stanza=pg-cluster-skynet --delta")
    assert pg["recovery_conf"]["restore_command"] == \
        'pgbackrest --stanza=pg-cluster-skynet archive-get %f "%p"'
    assert "method" not in render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [])["bootstrap"]


def test_without_backups_nothing_archives():
    cfg = build({"pgbackrest": {"enabled": False}})
    assert "archive_mode" not in render.dcs_config(cfg)["postgresql"]["parameters"]
    pg = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [])["postgresql"]
    assert "create_replica_methods" not in pg and "recovery_conf" not in pg
    assert "pgbackrest" not in {s["name"] for s in render.firewall_rules(cfg, "web", [], [])["services"]}


def test_the_restore_bootstraps_the_cluster_from_the_repository_to_the_target(cfg):
    boot = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [],
                                 {"target": "2026-12-01T21:00:00.25+03:00"})["bootstrap"]
    assert boot["method"] == "pgbackrest_restore"
    method = boot["pgbackrest_restore"]
    assert method["keep_existing_recovery_conf"] is True and method["no_params"] is True
    # pgBackRest picks the backup by the time: UTC, in the form it reads, fractions kept.
    assert "--type=time '--target=2026-12-01 18:00:00.250000+00' --target-action=promote" in \
        method["command"]
    assert "--repo" not in method["command"]
    latest = render.patroni_config(cfg, "postgres-srv1", CREDENTIALS, [],
                                   {"target": "latest", "repo": 2})["bootstrap"]
    # From the repository asked for.
    assert f"pgbackrest --stanza={cfg['pgbackrest']['stanza']} --repo=2 --delta --type=default " \
        "restore" in latest["pgbackrest_restore"]["command"]


@pytest.mark.parametrize(("pillar", "key", "says"), [
    ({"host": "postgres-srv1"}, "pgbackrest:host", "is not a web host"),
    ({"repositories": [{"type": "s3", "path": "/pg"}]}, "pgbackrest:repositories:0:s3",
     "missing"),
    ({"repositories": [{"type": "posix", "path": "/b", "s3": S3}]},
     "pgbackrest:repositories:0:s3", "only for a repository of type s3"),
    ({"repositories": [{"type": "posix", "path": f"/b{i}"} for i in range(5)]},
     "pgbackrest:repositories", "at most 4"),
    ({"repositories": [{"type": "s3", "path": "/pg", "s3": {**S3, "bucket": "my.backups"}}]},
     "pgbackrest:repositories:0:s3:bucket", "no dots"),
    ({"tls_port": 8008}, "pgbackrest:tls_port", "already pgcluster:patroni:restapi_port"),
    ({"schedule": {"full": "Sun 01:00; rm"}}, "pgbackrest:schedule:full", "calendar"),
])
def test_a_backup_mistake_is_refused_naming_its_key(pillar, key, says):
    with pytest.raises(model.PillarError, match=rf"^pillar pgcluster:{re.escape(key)}: .*{says}"):
        build({"pgbackrest": pillar})


def test_an_archive_parameter_set_by_hand_is_refused_while_backups_are_on():
    with pytest.raises(model.PillarError, match=r"^pillar pgcluster:postgresql:parameters:"
                       r"archive_command: is set by the backups"):
        build({"postgresql": {"parameters": {"archive_command": "/bin/true"}}})
    build({"postgresql": {"parameters": {"archive_command": "/bin/true"}},
           "pgbackrest": {"enabled": False}})
