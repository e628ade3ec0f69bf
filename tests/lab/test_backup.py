"""Backups with pgBackRest on the live cluster: WAL archived from the leader, backups taken on
the repository host from a standby, on schedule and on demand from any minion, and a member
rebuilt from the repository rather than from the leader."""

from __future__ import annotations

import json
import re
import time

import pytest

from lab import object_storage
from lab.cluster import SYNCHRONOUS_ROLES, cluster, leader, on_web, roles, salt, spare_replica
from lab.workload import wait_healthy
from tests.conftest import VENV_BIN, run
from tests.lab.conftest import lab_exec

C = cluster()
BACKUP = C.backup
REPO_HOST = BACKUP["host"]
STANZA = BACKUP["stanza"]
REPOSITORIES = list(range(1, len(BACKUP["repositories"]) + 1))
S3_REPOSITORIES = [n for n, r in enumerate(BACKUP["repositories"], 1) if r["type"] == "s3"]


@pytest.fixture
def healthy_cluster(lab):
    return wait_healthy()


def info() -> dict:
    return salt(REPO_HOST, "pgbackrest.info", check=True)[REPO_HOST]


def test_the_deployment_leaves_a_full_backup_and_an_archive_that_moves(healthy_cluster):
    first = info()
    assert first["stanza"] == STANZA and first["status"] == "ok"
    # Each repository (the lab has both kinds) holds a full backup and the archive.
    assert sorted(first["repositories"]) == [str(n) for n in REPOSITORIES]
    for number in REPOSITORIES:
        repo = first["repositories"][str(number)]
        assert repo["status"] == "ok" and repo["cipher"] == "aes-256-cbc", (number, repo)
        fulls = [b for b in first["backups"] if b["type"] == "full" and b["repo"] == number]
        assert fulls and all(b["wal_start"] and b["wal_stop"] for b in fulls), number
    assert first["recoverable_from"] == min(b["stop"] for b in first["backups"])
    # check switches the leader to a new segment and waits for it in every repository.
    assert on_web("pgbackrest.check", check=True) == {"ok": True, "stanza": STANZA}
    after = info()["repositories"]
    for number in REPOSITORIES:
        moved, was = after[str(number)], first["repositories"][str(number)]
        assert moved["wal_newest"] > was["wal_newest"], number
        assert moved["wal_newest_age_seconds"] is not None and moved["wal_newest_age_seconds"] < 30


def _bucket_keys(s3: dict, prefix: str) -> list[str]:
    """The keys under prefix in the lab's object storage, as the store itself lists them."""
    assert s3["address"] == object_storage.LAB.address, "the lab serves this repository"
    return object_storage.list_keys(object_storage.LAB, s3["port"], s3["bucket"], prefix)


@pytest.mark.skipif(not S3_REPOSITORIES, reason="the lab pillar has no object storage repository")
def test_object_storage_holds_the_backups_and_the_archive(healthy_cluster):
    number = S3_REPOSITORIES[0]
    repo = BACKUP["repositories"][number - 1]
    prefix = repo["path"].strip("/")
    backups = f"{prefix}/backup/{STANZA}/"
    assert f"{backups}backup.info" in _bucket_keys(repo["s3"], f"{backups}backup.info")
    archived = _bucket_keys(repo["s3"], f"{prefix}/archive/{STANZA}/")
    assert any(k.endswith(".zst") for k in archived), archived[:20]
    # The files of a full backup are in the store itself, not only in pgBackRest's report.
    labels = [b["label"] for b in info()["backups"] if b["repo"] == number and b["type"] == "full"]
    files = _bucket_keys(repo["s3"], f"{backups}{labels[0]}/pg_data/")
    assert any(k.endswith("/PG_VERSION.zst") for k in files), files[:20]


def test_a_backup_asked_of_a_member_runs_on_the_repository_host_from_a_standby(healthy_cluster):
    asked = leader()
    before = {b["label"] for b in info()["backups"]}
    for number in REPOSITORIES:
        made = salt(asked, "pgbackrest.backup", "type=incr", f"repo={number}", timeout=600,
                    check=True)[asked]
        assert made["host"] == REPO_HOST and made["type"] == "incr" and made["repo"] == number
        assert made["label"] not in before
        assert (number, made["label"]) in {(b["repo"], b["label"]) for b in info()["backups"]}
        # Copied from a standby: pgBackRest waited for a standby to replay to the backup's start.
        log = lab_exec(REPO_HOST, "cat", f"{BACKUP['log_path']}/{STANZA}-backup.log").stdout
        run_log = log[log.rindex("backup command begin"):]
        assert "replay on the standby" in run_log, run_log[-3000:]
        assert f"--repo={number}" in run_log.splitlines()[0]


def test_the_schedule_has_a_timer_for_each_kind_of_backup(healthy_cluster):
    timers = lab_exec(REPO_HOST, "systemctl", "list-timers", "--all", "--output=json",
                      "pgbackrest-backup-*").stdout
    units = {t["unit"]: t for t in json.loads(timers)}
    kinds = [k for k, calendar in BACKUP["schedule"].items() if calendar]
    assert sorted(units) == sorted(f"pgbackrest-backup-repo{n}-{k}.timer"
                                   for n in REPOSITORIES for k in kinds)
    for unit, timer in units.items():
        # A timer whose backup runs right now has its next run computed once it ends.
        if not timer["next"]:
            running = lab_exec(REPO_HOST, "systemctl", "is-active", timer["activates"],
                               check=False).stdout.strip()
            assert running == "activating", (unit, timer, running)
    # What a timer starts takes a backup, into its repository.
    last = REPOSITORIES[-1]
    before = len([b for b in info()["backups"] if b["repo"] == last])
    lab_exec(REPO_HOST, "systemctl", "start", f"pgbackrest-backup-repo{last}-incr.service",
             timeout=600)
    # At least one: the schedule's own run may fall due meanwhile (the lab's clock is real).
    assert len([b for b in info()["backups"] if b["repo"] == last]) >= before + 1


def test_no_secret_of_the_backups_is_shown_or_readable_by_others(healthy_cluster):
    shown = run(VENV_BIN / "salt", REPO_HOST, "pgcluster.pgbackrest_config").stdout
    assert "repo1-cipher-pass=**********" in shown
    for number in S3_REPOSITORIES:
        assert f"repo{number}-s3-key-secret=**********" in shown
        assert f"repo{number}-s3-key=**********" in shown
    for host in (REPO_HOST, C.model["bootstrap_member"]):
        modes = lab_exec(host, "stat", "-c", "%n %a %U", BACKUP["config_file"],
                         f"{BACKUP['tls_dir']}/host.key").stdout.split("\n")
        assert modes[0].split()[1:] == ["640", BACKUP["user"]]
        assert modes[1].split()[1:] == ["600", BACKUP["user"]]


def _patroni_log_since(member: str, since: str) -> str:
    return lab_exec(member, "journalctl", "-u", C.model["patroni"]["service"], "--since", since,
                    "--no-pager", "-o", "cat").stdout


def test_a_rebuilt_member_is_restored_from_the_repository_not_the_leader(healthy_cluster):
    replica = spare_replica()
    since = lab_exec(replica, "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    lab_exec(replica, "systemctl", "stop", C.model["patroni"]["service"])
    lab_exec(replica, "sh", "-c", f"rm -rf {C.model['postgresql']['data_dir']}")
    lab_exec(replica, "systemctl", "start", C.model["patroni"]["service"])
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        state = roles()
        if state.get(replica) in ("Replica", *SYNCHRONOUS_ROLES):
            health = on_web("patroni.health")
            if health and health.get("healthy"):
                break
        time.sleep(2)
    else:
        pytest.fail(f"{replica} did not come back streaming within 300 s")
    log = _patroni_log_since(replica, since)
    assert re.search(r"replica has been created using pgbackrest", log), log[-3000:]
    assert "basebackup" not in log.lower(), log[-3000:]


def _switch_wal_with_writes(member: str, times: int) -> None:
    for _ in range(times):
        lab_exec(member, "runuser", "-u", "postgres", "--", "psql", "-X", "-At", "-c",
                 "CREATE TABLE IF NOT EXISTS archive_probe (at timestamptz); "
                 "INSERT INTO archive_probe VALUES (now()); SELECT pg_switch_wal()")


def test_health_reports_an_archive_that_stops_and_its_recovery(healthy_cluster):
    assert on_web("patroni.health")["archive"]["ok"] is True
    host, service = REPO_HOST, BACKUP["service"]
    lab_exec(host, "systemctl", "stop", service)
    try:
        _switch_wal_with_writes(leader(), 3)
        report = on_web("patroni.health")
        assert report["healthy"] is True  # serving is not affected
        assert report["archive"]["ok"] is False, report["archive"]
        assert report["archive"]["repositories"]["1"]["segments_waiting"] >= 2
    finally:
        lab_exec(host, "systemctl", "start", service)
    deadline = time.monotonic() + 120
    while not on_web("patroni.health")["archive"]["ok"]:
        assert time.monotonic() < deadline, "the archive did not catch up within 120 s"
        time.sleep(2)
